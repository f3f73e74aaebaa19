"""The agent's supervisor as a process: how it starts commands and what their spools hold."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from easytask.agent.runner import Job, Runner
from easytask.agent.spool import Spool

SIGPIPE_BIT = 1 << 12  # SIGPIPE is signal 13: bit 12 of /proc's SigIgn mask


class Supervisor:
    """`python -m easytask.agent.supervisor` started in `cwd`, asked as the agent asks it."""

    def __init__(self, cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "easytask.agent.supervisor"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=cwd,
            start_new_session=True,
        )

    def run(self, spool: Spool, timeout: float = 30, **spec: Any) -> dict[str, Any]:
        """Start one command on `spool` (created here), wait for its end, its exit record."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        spool.create()
        spec.setdefault("env", {"PATH": "/usr/bin:/bin"})
        request = {"spool": spool.name, "spec": {"cap": 0, **spec}}
        self.proc.stdin.write(json.dumps(request).encode() + b"\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        answered = False
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode().rstrip("\n")
            assert line, "the supervisor closed its output"
            if line.startswith(("ok ", "error ")):
                assert line.startswith("ok "), line
                answered = True
            elif line == f"x {spool.name}":
                assert answered  # the answer comes before the word that the command ended
                info = spool.exit_info()
                assert info is not None
                return info
        raise AssertionError(f"no end of {spool.key} within {timeout} s")

    def close(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        try:
            assert self.proc.wait(timeout=30) == 0
        finally:
            self.proc.stdout.close()


def _lines(spool: Spool) -> list[tuple[str, bytes]]:
    return [(r.stream, r.data) for r in spool.records()]


def test_commands_start_as_subprocess_would_start_them(tmp_path: Path) -> None:
    """Each command runs in its own session, in the directory asked, with the environment
    asked and SIGPIPE at its default (the supervisor itself ignores it); stdin is /dev/null."""
    sup = Supervisor(tmp_path)
    try:
        spool = Spool(tmp_path / "spool", "1-1")
        (tmp_path / "spool").mkdir()
        command = (
            "pwd; echo $ONLY; grep SigIgn /proc/$$/status; "
            "cut -d' ' -f6 /proc/$$/stat; echo $$; cat; echo err >&2"
        )
        info = sup.run(spool, command=command, cwd="/", env={"PATH": "/usr/bin:/bin", "ONLY": "1"})
        assert info["exit_code"] == 0 and info["signal"] is None
        out = [data for stream, data in _lines(spool) if stream == "stdout"]
        assert out[:2] == [b"/\n", b"1\n"]
        ignored = int(out[2].split()[1], 16)
        assert not ignored & SIGPIPE_BIT
        assert out[3] == out[4]  # the shell leads a session of its own
        assert len(out) == 5  # nothing read from stdin
        assert ("stderr", b"err\n") in _lines(spool)
        assert spool.pgid == int(out[4])
    finally:
        sup.close()


def test_relative_spool_names_are_followed_from_the_supervisors_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spool names relative to the supervisor's directory (an agent started with a relative
    --state-dir) work run after run, each command in another directory: the supervisor does
    not stay where it started a command."""
    monkeypatch.chdir(tmp_path)
    sup = Supervisor(tmp_path)
    try:
        Path("spool").mkdir()
        for n, cwd in enumerate(["/", "/tmp", "/"], 1):
            spool = Spool(Path("spool"), f"{n}-1")
            assert sup.run(spool, command="pwd", cwd=cwd)["exit_code"] == 0
            assert _lines(spool) == [("stdout", cwd.encode() + b"\n")]
    finally:
        sup.close()


def test_exit_codes_signals_stdin_and_a_command_that_cannot_start(tmp_path: Path) -> None:
    """The exit record says the command's exit code or its signal exactly; values for its stdin
    reach it; a shell that is not there is exit 127 with the reason as a line."""
    sup = Supervisor(tmp_path)
    root = tmp_path / "spool"
    root.mkdir()
    try:
        assert sup.run(Spool(root, "1-1"), command="exit 3")["exit_code"] == 3
        killed = sup.run(Spool(root, "2-1"), command="kill -TERM $$")
        assert (killed["exit_code"], killed["signal"]) == (None, "TERM")
        fed = Spool(root, "3-1")
        assert sup.run(fed, command="read a; echo got $a", stdin="value\n")["exit_code"] == 0
        assert _lines(fed) == [("stdout", b"got value\n")]
        missing = Spool(root, "4-1")
        info = sup.run(missing, command="true", shell=str(tmp_path / "no-shell"))
        assert info["exit_code"] == 127
        ((stream, text),) = _lines(missing)
        assert stream == "stderr" and b"cannot start command" in text
        # a directory it cannot enter is the home's fallback, `/`
        assert sup.run(Spool(root, "5-1"), command="true", cwd="/nowhere")["exit_code"] == 0
    finally:
        sup.close()


def test_a_follower_ends_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    """A run whose supervisor dies without a word (kill -9) ends for its follower with a lost
    exit record, and the runner forgets it."""

    async def scenario() -> dict[str, Any]:
        runner = Runner(tmp_path / "state", supervisor_idle=0)
        await runner.start("9-1", "echo started; sleep 60", {})
        spool = runner.spool("9-1")
        lines: list[tuple[str, bytes]] = []
        async with asyncio.timeout(30):
            async for batch in runner.follow("9-1", 0):
                lines.extend(batch)
                if lines == [("stdout", b"started\n")]:
                    proc = spool._proc()
                    assert proc is not None
                    os.kill(proc[0], signal.SIGKILL)  # the supervisor, not the command
                    os.killpg(proc[2], signal.SIGKILL)  # (the command would run its minute)
        assert "9-1" not in runner.jobs
        return runner.exits["9-1"]

    info = asyncio.run(scenario())
    assert info["lost"] and info["signal"] == "KILL" and info["exit_code"] is None


def test_a_quiet_run_keeps_no_waiter_per_second(tmp_path: Path) -> None:
    """A follower of a run that prints nothing wakes every second to look at the spool; each
    such wait leaves nothing behind (a run quiet for hours would otherwise hold thousands), and
    the run still ends with its exit status when the supervisor says so."""

    async def waits() -> int:
        job = Job(key="7-1")
        for _ in range(5):
            await job.wait(job.version, 0.01)  # nothing happens: the timer ends each wait
        return len(job._waiters)

    assert asyncio.run(waits()) == 0

    async def quiet_run() -> dict[str, Any]:
        runner = Runner(tmp_path / "state", supervisor_idle=0)
        job = await runner.start("8-1", "sleep 1.5", {})
        async with asyncio.timeout(30):
            async for _ in runner.follow("8-1", 0):
                pass
        assert job.done and job.exited and "8-1" not in runner.jobs
        return runner.exits["8-1"]

    assert asyncio.run(quiet_run())["exit_code"] == 0
