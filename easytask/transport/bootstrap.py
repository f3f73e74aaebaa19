"""Installing an agent on an agentless host, over that host's own SSH connection.

The steps `easytask agents bootstrap` takes on one host (easytask/service/bootstrap.py drives
them): probe Python and systemd, install the agent into a venv under a per-host prefix (from the
server's wheel sent over SFTP, or from a package index), write the enrolment token into a
root-only file over SFTP (never in a command line), then start the agent: a systemd unit where
systemd is PID 1 and we are root, else a detached process (`PREFIX/agent.sh`).
"""

from __future__ import annotations

import asyncio
import shlex
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import asyncssh

from easytask.agentfiles import AgentFile, systemd_files

__all__ = ["BootstrapError", "HostPlan", "Probe", "host_files", "install", "probe", "start"]

PYTHON_MIN = (3, 11)


class BootstrapError(Exception):
    """One host's bootstrap failed; the message says why, for the person who runs it."""


@dataclass(frozen=True)
class Probe:
    """What the host has: its python3 (path and version), whether we are root, and systemd."""

    python: str
    version: tuple[int, int]
    root: bool
    systemd: bool

    @property
    def how(self) -> str:
        """How the agent will run there: `systemd` or `detached`."""
        return "systemd" if self.systemd and self.root else "detached"


@dataclass(frozen=True)
class HostPlan:
    """Where and how the agent of one host is installed (all paths on the host)."""

    name: str
    server: str  # the agent port the agent dials, HOST:PORT[,...]
    prefix: PurePosixPath
    groups: tuple[str, ...] = ()
    index_url: str = ""  # install easytask==version from this index, not the sent wheel
    version: str = ""
    wheel_name: str = ""

    @property
    def venv(self) -> PurePosixPath:
        return self.prefix / "venv"

    @property
    def program(self) -> PurePosixPath:
        return self.venv / "bin" / "easytask"

    @property
    def state_dir(self) -> PurePosixPath:
        return self.prefix / "state"

    @property
    def token_file(self) -> PurePosixPath:
        return self.state_dir / "enroll"

    @property
    def script(self) -> PurePosixPath:
        return self.prefix / "agent.sh"

    @property
    def unit(self) -> str:
        return f"easytask-agent-{self.name}"


def _q(value: object) -> str:
    return shlex.quote(str(value))


async def _run(
    conn: asyncssh.SSHClientConnection, command: str, timeout: float = 60
) -> tuple[int, str, str]:
    async with asyncio.timeout(timeout):
        result = await conn.run(command, check=False)
    out, err = result.stdout or "", result.stderr or ""
    return (
        result.exit_status if result.exit_status is not None else 255,
        out if isinstance(out, str) else out.decode(errors="replace"),
        err if isinstance(err, str) else err.decode(errors="replace"),
    )


def _tail(text: str, lines: int = 4) -> str:
    kept = [ln.strip() for ln in text.strip().splitlines() if ln.strip()][-lines:]
    return " | ".join(kept)[-600:] or "(no output)"


PROBE = (
    "p=$(command -v python3 2>/dev/null); "
    'if [ -n "$p" ]; then echo "python=$p $("$p" -c '
    '\'import sys; print("%d.%d" % sys.version_info[:2])\' 2>/dev/null)"; '
    "\"$p\" -c 'import venv, ensurepip' 2>/dev/null && echo venv=yes; fi; "
    'echo "uid=$(id -u)"; '
    'if [ -d /run/systemd/system ] && [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; '
    "then echo systemd=yes; fi"
)


async def probe(conn: asyncssh.SSHClientConnection) -> Probe:
    """The host's python3 (3.11 or newer, with venv) and whether systemd runs as PID 1."""
    code, out, err = await _run(conn, PROBE)
    if code != 0:
        raise BootstrapError(f"probing the host failed (exit {code}): {_tail(err or out)}")
    facts = dict(line.partition("=")[::2] for line in out.splitlines() if "=" in line)
    python, _, version = facts.get("python", "").partition(" ")
    if not python:
        raise BootstrapError("no python3 on the host's PATH (the agent needs Python 3.11 or newer)")
    try:
        major, minor = (int(part) for part in version.split("."))
    except ValueError:
        raise BootstrapError(f"{python} did not say its version: {version!r}") from None
    if (major, minor) < PYTHON_MIN:
        raise BootstrapError(
            f"no python3 >= 3.11 on the host: {python} is {major}.{minor} "
            "(install Python 3.11 or newer)"
        )
    if facts.get("venv") != "yes":
        raise BootstrapError(
            f"{python} {major}.{minor} has no venv module (Debian: apt-get install python3-venv)"
        )
    return Probe(python, (major, minor), facts.get("uid") == "0", facts.get("systemd") == "yes")


async def install(
    conn: asyncssh.SSHClientConnection, plan: HostPlan, found: Probe, wheel: Path | None
) -> str:
    """Make the prefix and the venv, send the wheel (unless installing from an index) and
    pip-install the agent alone (no extras); what was installed from."""
    prefix = plan.prefix
    code, out, err = await _run(
        conn,
        f"umask 022 && mkdir -p {_q(prefix / 'wheels')} && mkdir -p -m 0700 {_q(plan.state_dir)}"
        f" && chmod 0700 {_q(plan.state_dir)}",
    )
    if code != 0:
        raise BootstrapError(f"cannot make {prefix}: {_tail(err or out)}")
    if plan.index_url:
        requirement = f"easytask=={plan.version}"
        source = f"easytask {plan.version} from {plan.index_url}"
    else:
        assert wheel is not None
        remote = prefix / "wheels" / wheel.name
        try:
            async with conn.start_sftp_client() as sftp:
                await sftp.put(str(wheel), str(remote))
        except (OSError, asyncssh.Error) as exc:
            raise BootstrapError(f"cannot send the wheel to {remote}: {exc}") from exc
        requirement = str(remote)
        source = f"the server's wheel {wheel.name}"
    if not await _exists(conn, plan.venv / "bin" / "python"):
        code, out, err = await _run(conn, f"{_q(found.python)} -m venv {_q(plan.venv)}", 300)
        if code != 0:
            raise BootstrapError(f"python3 -m venv {plan.venv} failed: {_tail(err or out)}")
    pip = [str(plan.venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    pip += [
        "--disable-pip-version-check",
    ]
    if plan.index_url:
        pip += ["--index-url", plan.index_url]
    code, out, err = await _run(conn, " ".join(_q(w) for w in [*pip, requirement]), 600)
    if code != 0:
        raise BootstrapError(f"pip install failed (exit {code}): {_tail(err or out)}")
    return source


async def _exists(conn: asyncssh.SSHClientConnection, path: PurePosixPath) -> bool:
    code, _, _ = await _run(conn, f"test -e {_q(path)}")
    return code == 0


async def write_token(conn: asyncssh.SSHClientConnection, plan: HostPlan, token: str) -> None:
    """The one-use token into `STATE/enroll`, created 0600 in the 0700 state dir, over SFTP:
    it is never part of a command line on the host."""
    path = str(plan.token_file)
    try:
        async with conn.start_sftp_client() as sftp:
            if await sftp.exists(path):
                await sftp.remove(path)
            attrs = asyncssh.SFTPAttrs(permissions=0o600)
            async with sftp.open(path, "w", attrs) as fh:
                await sftp.chmod(path, 0o600)
                await fh.write(token + "\n")
    except (OSError, asyncssh.Error) as exc:
        raise BootstrapError(f"cannot write the token file {path}: {exc}") from exc


async def remove_token(conn: asyncssh.SSHClientConnection, plan: HostPlan) -> None:
    """The token is spent once the agent is in: its file goes (an enrolled agent needs none)."""
    await _run(conn, f"rm -f {_q(plan.token_file)}")


def start_script(plan: HostPlan) -> str:
    """`PREFIX/agent.sh`: (re)starts the agent detached, where systemd does not run it. The
    token is read from its file (`--enroll-file`) while the file is there, never passed in argv."""
    state = plan.state_dir
    argv = [str(plan.program), "agent", "--server", plan.server, "--name", plan.name]
    argv += ["--state-dir", str(state)]
    for group in plan.groups:
        argv += ["--group", group]
    return "\n".join(
        [
            "#!/bin/sh",
            f"# EasyTask agent {plan.name}, started detached by `easytask agents bootstrap` (no",
            "# systemd as PID 1 here). Run it again to restart the agent. Its log is",
            f"# {state}/agent.log, its pid in {state}/agent.pid. No secret here: the enrolment",
            f"# token is read from {plan.token_file} (0600) while that file is there.",
            f"state={_q(state)}",
            'old=$(cat "$state/agent.pid" 2>/dev/null)',
            'if [ -n "$old" ] && kill "$old" 2>/dev/null; then',
            '    i=0; while kill -0 "$old" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done',
            "fi",
            "set -- " + " ".join(_q(w) for w in argv),
            'if [ -s "$state/enroll" ]; then set -- "$@" --enroll-file "$state/enroll"; fi',
            'cd "$state" || exit 1',
            'setsid nohup "$@" </dev/null >>"$state/agent.log" 2>&1 &',
            'echo $! >"$state/agent.pid"',
            "",
        ]
    )


def host_files(plan: HostPlan, how: str) -> list[AgentFile]:
    """What bootstrap writes besides the venv and the token: the systemd unit and its env
    file (as `easytask agents install --systemd` makes them), or the detached start script."""
    if how == "systemd":
        return systemd_files(
            plan.server,
            plan.name,
            Path(str(plan.program)),
            list(plan.groups),
            Path(str(plan.state_dir)),
            Path(str(plan.token_file)),
        )
    return [AgentFile(Path(str(plan.script)), 0o700, start_script(plan))]


async def start(conn: asyncssh.SSHClientConnection, plan: HostPlan, how: str) -> str:
    """Write the start files and start the agent; how it runs, for the progress line."""
    files = host_files(plan, how)
    try:
        async with conn.start_sftp_client() as sftp:
            for file in files:
                await sftp.makedirs(str(file.path.parent), exist_ok=True)
                async with sftp.open(
                    str(file.path), "w", asyncssh.SFTPAttrs(permissions=file.mode)
                ) as fh:
                    await sftp.chmod(str(file.path), file.mode)
                    await fh.write(file.text)
    except (OSError, asyncssh.Error) as exc:
        raise BootstrapError(f"cannot write {files[0].path}: {exc}") from exc
    if how == "systemd":
        command = (
            f"systemctl daemon-reload && systemctl enable {_q(plan.unit)} && "
            f"systemctl restart {_q(plan.unit)}"
        )
        what = f"systemd unit {plan.unit}"
    else:
        command = f"/bin/sh {_q(plan.script)}"
        what = f"detached process ({plan.script}; log {plan.state_dir}/agent.log)"
    code, out, err = await _run(conn, command, 120)
    if code != 0:
        raise BootstrapError(f"starting the agent failed: {_tail(err or out)}")
    return what


async def agent_log(conn: asyncssh.SSHClientConnection, plan: HostPlan, how: str) -> str:
    """The last lines the agent logged, to say why it did not come online."""
    if how == "systemd":
        command = f"journalctl -u {_q(plan.unit)} -n 5 --no-pager -o cat"
    else:
        command = f"tail -n 5 {_q(plan.state_dir / 'agent.log')}"
    try:
        _, out, err = await _run(conn, command, 20)
    except (TimeoutError, OSError, asyncssh.Error):
        return ""
    return _tail(out or err, 3)
