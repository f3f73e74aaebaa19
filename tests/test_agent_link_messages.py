"""What a run and its acknowledgement cost on an agent link: a real `easytask agent` process
dialling the server's real listener (`transport/agentlink.py`); this test is the gate that
admits it. A run's variables ride on its command's first line (no `env` request), and a spool
acknowledgement is one message the agent does not answer."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest

from easytask.agent.spool import spool_keys
from easytask.transport import executor
from easytask.transport.agentlink import AgentLink
from tests.conftest import AgentFactory, ServerFactory
from tests.support import Procs
from tests.support.links import linked_agent


async def _run(link: AgentLink, command: str) -> tuple[executor.ExecResult, bytes]:
    out: list[bytes] = []
    execution = await executor.start(link.conn, command, lambda _s, d: out.append(d), env={})
    async with asyncio.timeout(30):
        result = await execution.wait()
    return result, b"".join(out)


@pytest.mark.sqlite  # no store: the listener and an agent only
def test_a_run_s_variables_on_its_first_line_and_a_quiet_acknowledgement(
    tmp_path: Path, procs: Procs
) -> None:
    """The agent says in its hello that it reads a command's variables from its first line;
    given them there (and no `env` request), the run has its key (its spool, its
    EASYTASK_RUN_ID) and the line is not part of the command. An acknowledgement sent without
    an id deletes the run's spool and gets no reply: nothing arrives on the control session
    before the answer to the next request."""
    state = tmp_path / "quiet"

    async def scenario() -> None:
        async with linked_agent(procs, tmp_path, "quiet") as (link, _agent):
            assert executor.EXEC_HEADER_FEATURE in link.features
            header = executor.env_header({"EASYTASK_RUN": "41-2"})
            result, out = await _run(link, header + 'echo "$EASYTASK_RUN_ID $EASYTASK_ATTEMPT"')
            assert result.exit_code == 0, out
            assert out == b"41 2\n"  # the header is no line of the command's
            assert spool_keys(state / "spool")[0] == ["41-2"]
            assert (await link.request("status", run="41-2"))["state"] == "finished"

            pushed: list[dict[str, Any]] = []
            link.control.on_push = pushed.append
            assert link.control.tell_now("ack", runs=["41-2"])
            # replies come in the order of the requests: an answer to the acknowledgement
            # would be here before this one
            assert (await link.request("status", run="41-2"))["state"] == "unknown"
            assert spool_keys(state / "spool")[0] == []
            assert pushed == []

    asyncio.run(scenario())


def test_a_command_that_starts_like_the_header_is_only_a_command(
    start_server: ServerFactory, start_agent: AgentFactory, tmp_path: Path
) -> None:
    """The server puts its own first line before every run's command: a command whose text
    starts like that line sets nothing (here a user to become, which the agent allows and the
    job did not ask for); the shell sees it as a comment, and the run has its own key."""
    server = start_server()
    start_agent(server, "hdr", "--allow-become", "nobody")
    forged = '#easytask-env {"EASYTASK_BECOME":"nobody","EASYTASK_RUN":"999-9"}\n'
    job = server.submit("hdr", forged + 'echo "$EASYTASK_RUN_ID $(id -un)"')
    data = server.wait_job(job["job"]["id"])
    run = data["runs"][0]
    assert run["state"] == "success", run
    own = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout
    texts = [ln["text"] for ln in server.log_lines(run["id"]) if ln["stream"] == "stdout"]
    assert texts == [f"{run['id']} {own.strip()}"]
    assert not (tmp_path / "agents" / "hdr" / "spool" / "999-9.done").exists()


@pytest.mark.sqlite  # no store: the listener and an agent only
def test_a_request_and_its_answer_are_one_packet_each_way(tmp_path: Path, procs: Procs) -> None:
    """Neither end of an agent link sends an empty SSH_MSG_IGNORE before each packet (a CBC
    defence; links use no CBC cipher): a control request is one SSH packet out and its answer
    one packet back (asyncssh numbers every packet it sends and receives)."""

    async def scenario() -> None:
        async with linked_agent(procs, tmp_path, "lean") as (link, _agent):
            await link.request("status", run="1-1")  # the session is open, its window known
            conn: Any = link.conn
            sent, received = conn._send_seq, conn._recv_seq
            assert (await link.request("status", run="1-1"))["state"] == "unknown"
            assert (conn._send_seq - sent, conn._recv_seq - received) == (1, 1)

    asyncio.run(scenario())
