"""Terminating an agentless run: the shell commands the pool sends, run by real shells (the
login shell on the host runs them: bash for many users, dash where /bin/sh is the shell)."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from easytask.transport.agentless import (
    env_on_stdin,
    pidfile_for,
    terminate_command,
    wrap_command,
)


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


@pytest.mark.parametrize("shell", ["/bin/bash", "/bin/dash"])
def test_environment_values_come_on_stdin_and_the_rest_of_stdin_stays_the_commands(
    shell: str,
) -> None:
    """The exported values are read from stdin (never in the command line), any character and
    any number of lines; what follows them on stdin is the command's, byte for byte."""
    env = {
        "ONE": "plain",
        "EMPTY": "",
        "ODD": "  lead & trail \\ $HOME `x` 'q' \"d\"\r  ",
        "LINES": "first\n\nthird\n",
    }
    text, data = env_on_stdin(env)
    assert all(v not in text for v in env.values() if v)
    key = f"env-{os.getpid()}-{time.monotonic_ns()}"
    command = (
        'for n in ONE EMPTY ODD LINES; do eval "printf \'%s=[%s]\\n\' $n \\"\\$$n\\""; done; '
        "cat; echo; env | grep -c '^_et_' || true"
    )
    done = subprocess.run(
        [shell, "-c", wrap_command(command, key, text)],
        input=data + b"the command's own input",
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    expected = "".join(f"{k}=[{v}]\n" for k, v in env.items())
    assert done.stdout.decode() == expected + "the command's own input\n0\n"
    short = subprocess.run(
        [shell, "-c", wrap_command("echo ran", key, text)], input=b"", capture_output=True
    )
    assert short.returncode == 125 and b"ran" not in short.stdout
    assert b"did not arrive on stdin" in short.stderr
