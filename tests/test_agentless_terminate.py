"""Terminating an agentless run: the shell commands the pool sends, run by real shells (the
login shell on the host runs them: bash for many users, dash where /bin/sh is the shell)."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from easytask.transport.agentless import pidfile_for, terminate_command, wrap_command


@pytest.mark.parametrize("shell", ["/bin/bash", "/bin/dash"])
def test_a_terminate_sent_before_the_pid_file_exists_waits_for_it(shell: str) -> None:
    """A kill that arrives between the channel opening and the shell writing its pid file (a busy
    host) still stops the command's whole group, instead of finding nothing to kill."""
    key = f"test-{os.getpid()}-{time.monotonic_ns()}"
    term = subprocess.Popen([shell, "-c", terminate_command(key, 3.0)])
    run: subprocess.Popen[bytes] | None = None
    try:
        time.sleep(0.5)  # the terminate is already waiting when the command starts
        started = time.monotonic()
        run = subprocess.Popen([shell, "-c", wrap_command("sleep 60 & sleep 60", key)])
        assert run.wait(timeout=30) != 0
        assert time.monotonic() - started < 20
        assert term.wait(timeout=30) == 0
    finally:
        for proc in (term, run):
            if proc is not None:
                proc.kill()
                proc.wait()
    assert not os.path.exists(pidfile_for(key))


def test_a_terminate_for_a_run_that_is_gone_returns_after_the_grace_period() -> None:
    """No pid file ever: the terminate gives up after its grace period, with status 0."""
    key = f"gone-{os.getpid()}-{time.monotonic_ns()}"
    started = time.monotonic()
    done = subprocess.run(["/bin/dash", "-c", terminate_command(key, 0.5)], timeout=30)
    assert done.returncode == 0
    assert 0.4 < time.monotonic() - started < 15
