"""Runs started on an agent's control session (`transport/linkrun.py`, `agent/commands.py`):
a real `easytask agent` process on a bare listener. A short run is one request and one answer;
a long or loud one goes on in a re-attached session of its own; the output arrives exactly
once and in order either way, and a run key is never started twice."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import cast

import pytest

from easytask.transport import linkrun
from easytask.transport.agentlink import AgentLink
from easytask.transport.executor import ExecResult
from tests.support import Procs
from tests.support.links import linked_agent

pytestmark = pytest.mark.sqlite  # no store: the listener and an agent only


async def _run(
    link: AgentLink, command: str, key: str, **env: str
) -> tuple[ExecResult, list[tuple[str, bytes]], linkrun.LinkExecution]:
    out: list[tuple[str, bytes]] = []
    execution = await linkrun.start(
        link, command, lambda s, d: out.append((s, d)), {"EASYTASK_RUN": key, **env}
    )
    async with asyncio.timeout(60):
        result = await execution.wait()
    return result, out, execution


def _joined(out: list[tuple[str, bytes]], stream: str) -> bytes:
    return b"".join(data for s, data in out if s == stream)


def test_a_short_run_is_answered_with_its_output_and_its_end(tmp_path: Path, procs: Procs) -> None:
    """The agent offers runs on its control session; a command that ends at once comes back in
    the request's answer (no session: no channel), its output exact (bytes that are no UTF-8
    too), stdout and stderr apart, its exit code and its variables its own."""

    async def scenario() -> None:
        async with linked_agent(procs, tmp_path, "short") as (link, _agent):
            assert linkrun.CONTROL_RUN_FEATURE in link.features
            command = (
                'echo "$EASYTASK_RUN_ID $EASYTASK_ATTEMPT"; printf "\\377\\376 \\n" >&2; exit 3'
            )
            result, out, execution = await _run(link, command, "12-3")
            assert (result.exit_code, result.signal, result.lost) == (3, None, False)
            assert _joined(out, "stdout") == b"12 3\n"
            assert _joined(out, "stderr") == b"\xff\xfe \n"
            assert execution.channel is None  # the answer carried it all
            status = await link.request("status", run="12-3")
            assert status["state"] == "finished" and status["exit"]["exit_code"] == 3

            killed, _, _ = await _run(link, "kill -TERM $$", "13-1")
            assert (killed.exit_code, killed.signal) == (None, "TERM")

    asyncio.run(scenario())


def test_a_long_loud_run_goes_on_in_a_session_of_its_own_every_byte_once(
    tmp_path: Path, procs: Procs
) -> None:
    """A run that prints more than an answer carries, and goes on after it, continues on a
    re-attached session from the record after the answer's last: every line once, in order."""

    async def scenario() -> None:
        async with linked_agent(procs, tmp_path, "long") as (link, _agent):
            command = "seq 1 50000; sleep 0.3; echo tail >&2; seq 50001 50010; exit 4"
            result, out, execution = await _run(link, command, "20-1")
            assert result.exit_code == 4 and not result.lost
            assert execution.channel is not None  # re-attached
            expected = "".join(f"{n}\n" for n in range(1, 50011)).encode()
            assert _joined(out, "stdout") == expected
            assert _joined(out, "stderr") == b"tail\n"
            # stderr came between the two runs of numbers, as printed
            streams = [s for s, _ in out]
            first_err = streams.index("stderr")
            assert b"50000\n" in b"".join(d for s, d in out[:first_err] if s == "stdout")

            # 2 MB printed before the agent first looks: the answer still carries only its
            # first part (a control session's line stays small), the rest comes re-attached
            result, out, execution = await _run(link, "seq 1 300000", "22-1")
            assert result.exit_code == 0 and execution.channel is not None
            assert _joined(out, "stdout") == "".join(f"{n}\n" for n in range(1, 300001)).encode()

            # quiet at first, then printing after the answer's wait: the same
            result, out, execution = await _run(
                link, "sleep 0.3; echo one; sleep 0.3; echo two", "21-1"
            )
            assert result.exit_code == 0
            assert _joined(out, "stdout") == b"one\ntwo\n"

    asyncio.run(scenario())


def test_a_run_key_starts_once_and_a_second_request_follows_it(
    tmp_path: Path, procs: Procs
) -> None:
    """The same run asked for twice (a retried dispatch) is started once: the second request
    gets the same output and end from the spool, and the command ran one time."""
    marks = tmp_path / "marks"

    async def scenario() -> None:
        async with linked_agent(procs, tmp_path, "once") as (link, _agent):
            command = f"echo ran >> {marks}; echo hello"
            first, out1, _ = await _run(link, command, "30-1")
            second, out2, _ = await _run(link, command, "30-1")
            assert first.exit_code == second.exit_code == 0
            assert _joined(out1, "stdout") == _joined(out2, "stdout") == b"hello\n"
            assert marks.read_text() == "ran\n"

    asyncio.run(scenario())


def test_refusals_and_bad_requests_end_the_run_with_the_reason(
    tmp_path: Path, procs: Procs
) -> None:
    """A command the agent's allowlist refuses ends refused (the agent's exit record, as on a
    session), its reason on stderr; a request the agent cannot read ends with exit code 255
    and says why; neither starts anything."""

    async def scenario() -> None:
        async with linked_agent(procs, tmp_path, "strict", "--allow", "echo *") as (link, _a):
            result, out, _ = await _run(link, "rm -rf /tmp/nothing-here", "40-1")
            assert result.stats is not None and "allowlist" in result.stats["refused"]
            assert (result.exit_code, result.signal) == (None, None)
            assert b"refused" in _joined(out, "stderr")
            ok, out, _ = await _run(link, "echo allowed", "41-1")
            assert ok.exit_code == 0 and _joined(out, "stdout") == b"allowed\n"

            bad_env = cast(dict[str, str], {"EASYTASK_RUN": "42-1", "X": 1})
            got: list[tuple[str, bytes]] = []
            execution = await linkrun.start(
                link, "echo x", lambda s, d: got.append((s, d)), bad_env
            )
            result = await execution.wait()
            assert result.exit_code == 255 and not result.lost
            assert b"env is an object of strings" in _joined(got, "stderr")
            assert (await link.request("status", run="42-1"))["state"] == "unknown"

    asyncio.run(scenario())


def test_a_lost_link_says_lost(tmp_path: Path, procs: Procs) -> None:
    """The agent stopped while a run waits for its answer: the run is `lost` (the server then
    waits to re-attach and asks the agent for the run's state), never a success."""

    async def scenario() -> None:
        async with linked_agent(procs, tmp_path, "lost") as (link, agent):
            execution = await linkrun.start(
                link, "sleep 30", lambda s, d: None, {"EASYTASK_RUN": "50-1"}
            )
            assert (await link.request("status", run="50-1"))["state"] == "running"
            agent.stop(10)
            async with asyncio.timeout(30):
                result = await execution.wait()
            assert result.lost and result.exit_code is None and result.error

    asyncio.run(scenario())
