"""Running an inventory script: no shell, a clean environment, a time limit, errors that say why.

The script gets only these variables, taken from our own environment when set (PATH defaults
to /usr/local/bin:/usr/bin:/bin): PATH, HOME, USER, LOGNAME, LANG, LC_ALL, LC_CTYPE, TZ,
TMPDIR. None of the settings or secrets of the process that runs it reach it. Its standard
input is empty; it runs in the current directory, as Ansible runs it, in its own process group,
which is killed when the time is up.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence

from easytask.errors import InventoryError
from easytask.inventory import ScriptRunner

__all__ = ["KEPT_VARIABLES", "STDERR_SHOWN", "script_environment", "script_runner"]

KEPT_VARIABLES = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
STDERR_SHOWN = 2000  # characters of a failed script's standard error put in the error message


def script_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment an inventory script runs with."""
    env = os.environ if env is None else env
    out = {name: env[name] for name in KEPT_VARIABLES if env.get(name)}
    out.setdefault("PATH", DEFAULT_PATH)
    return out


def _tail(stderr: bytes) -> str:
    text = stderr.decode("utf-8", "replace").strip()
    if len(text) > STDERR_SHOWN:
        text = "..." + text[-STDERR_SHOWN:]
    return text


def run_script(path: str, args: Sequence[str], timeout: float) -> bytes | None:
    """`path ARGS...`'s standard output; None if the system cannot run the file as a program."""
    command = f"{path} {' '.join(args)}"
    try:
        proc = subprocess.Popen(
            [path, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=script_environment(),
            start_new_session=True,
        )
    except OSError as exc:
        if exc.errno == errno.ENOEXEC:
            return None
        raise InventoryError(f"cannot run inventory script {command}: {exc.strerror}") from None
    try:
        out, err = proc.communicate(timeout=timeout if timeout > 0 else None)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
        raise InventoryError(
            f"inventory script {command} did not finish within {timeout:g}s (inventory_timeout)"
        ) from None
    if proc.returncode != 0:
        how = (
            f"was killed by signal {-proc.returncode}"
            if proc.returncode < 0
            else f"exited with code {proc.returncode}"
        )
        stderr = _tail(err)
        detail = (
            f"; its standard error:\n{stderr}" if stderr else " and wrote nothing on standard error"
        )
        raise InventoryError(f"inventory script {command} {how}{detail}")
    return out


def script_runner(timeout: float) -> ScriptRunner:
    """A runner for `load_inventory`: each run of a script may take `timeout` seconds."""

    def run(path: str, args: Sequence[str]) -> bytes | None:
        return run_script(path, args, timeout)

    return run
