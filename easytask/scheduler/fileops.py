"""Files on hosts over SFTP (agent and agentless links alike): copy, script, fetch."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import asyncssh

from easytask.masking import Masker
from easytask.plan.become import resolve_become
from easytask.scheduler.inflight import JobOptions, masks
from easytask.scheduler.output import RunOutput
from easytask.store.db import Store
from easytask.store.models import Run, RunState, utcnow
from easytask.transport import executor

# SFTP transfers: 128 KiB requests, 32 in flight. asyncssh's default follows the far side's limits;
# an agent (asyncssh's SFTP server) allows 4 MiB writes, which put ~150 MiB in the server's memory
# per 200 MiB file. These bound it to a few MiB on every link (OpenSSH allows 255 KiB writes).
SFTP_BLOCK = 128 << 10
SFTP_REQUESTS = 32
SFTP_OPTS: dict[str, Any] = {"block_size": SFTP_BLOCK, "max_requests": SFTP_REQUESTS}


class RunHost(Protocol):
    """What a file operation needs from the engine: a connection to the run's host, its output,
    its state changes recorded, and the command path for the script it uploaded."""

    store: Store

    def track(self, run: Run) -> None:
        """Make the run killable."""

    async def file_connection(
        self, run: Run, hostvars: dict[str, Any], options: JobOptions
    ) -> asyncssh.SSHClientConnection | None:
        """A connection for SFTP to the run's host; None when the run already ended."""

    def output(self, run: Run, masks: tuple[str, ...] = ()) -> RunOutput:
        """Where the run's output goes (secret values masked)."""

    async def update(self, run: Run, state: str, event: str, detail: str, **fields: Any) -> None:
        """Record the run's move to a state that is not final."""

    async def finish(
        self,
        run: Run,
        state: str,
        *,
        reason: str = "",
        exit_code: int | None = None,
        out: RunOutput | None = None,
        duration: float | None = None,
    ) -> None:
        """Record the run's end."""

    async def execute_one(self, run: Run, hostvars: dict[str, Any], options: JobOptions) -> None:
        """Execute the run's command to its end."""


@dataclass(frozen=True)
class FileAction:
    """What to do with files on each host.

    kind `copy`: `src` (a file or a directory, sent recursively) to `dest`, with `mode`, `owner`,
    `backup`; kind `script`: upload `src`, run it with `args` through its #! line or
    `interpreter`; kind `fetch`: bring `dest` (a remote path) back into `store_dir/RUN_ID/`.
    """

    kind: str
    src: str = ""
    dest: str = ""
    mode: str | None = None
    owner: str | None = None
    backup: bool = False
    args: str = ""
    interpreter: str | None = None
    store_dir: str = ""

    def shell_line(self, script_path: str, *, env: bool = True) -> str:
        """The command that runs an uploaded script with its arguments (an ad hoc script has
        no exports: `env` is there to match a playbook's RenderedAction.shell_line)."""
        head = f"{self.interpreter} " if self.interpreter else ""
        return head + shlex.quote(script_path) + (f" {self.args}" if self.args else "")


def checksum_command(path: str, expect: str | None = None) -> str:
    """A shell command that prints the SHA-256 of `path` (or `missing`); with `expect`, it fails
    when the digest differs. `~/` is each host's own home directory."""
    q = shlex.quote(path)
    if path.startswith("~/"):
        q = '"$HOME"/' + shlex.quote(path[2:])
    command = (
        f"if [ -f {q} ]; then sha256sum -- {q} | cut -d' ' -f1; "
        f"elif [ -e {q} ]; then echo 'not a regular file' >&2; exit 2; else echo missing; fi"
    )
    if expect:
        want = shlex.quote(expect.lower())
        command = (
            f'got=$({command}) || exit $?; echo "$got"; '
            f"if [ \"$got\" != {want} ]; then echo 'differs from the expected SHA-256' >&2; "
            "exit 1; fi"
        )
    return command


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a local file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _pairs(src: Path, dest: str) -> list[tuple[Path, str]]:
    if src.is_dir():
        return [
            (p, f"{dest.rstrip('/')}/{p.relative_to(src).as_posix()}")
            for p in sorted(src.rglob("*"))
            if p.is_file()
        ]
    return [(src, dest)]


async def _remote_sums(conn: Any, paths: list[str]) -> dict[str, str]:
    """SHA-256 of remote files that exist (one round trip for all of them)."""
    if not paths:
        return {}
    quoted = " ".join(shlex.quote(p) for p in paths)
    _, stdout, _ = await executor.run_collect(
        conn, f'for f in {quoted}; do [ -f "$f" ] && sha256sum -- "$f"; done; true', timeout=120
    )
    sums = {}
    for line in stdout.decode(errors="replace").splitlines():
        digest, _, name = line.partition("  ")
        if name:
            sums[name] = digest
    return sums


async def _begin(
    engine: RunHost, run: Run, hostvars: dict[str, Any], options: JobOptions, what: str
) -> tuple[asyncssh.SSHClientConnection, RunOutput, float] | None:
    """Connect for SFTP and mark the run started; None when the run already ended (unreachable)."""
    engine.track(run)
    conn = await engine.file_connection(run, hostvars, options)
    if conn is None:
        return None
    assert run.id is not None
    out = engine.output(run, masks(options))
    detail = Masker(masks(options))(what)
    await engine.update(run, RunState.RUNNING, "started", detail, started_at=utcnow())
    return conn, out, time.monotonic()


async def copy(
    engine: RunHost, run: Run, hostvars: dict[str, Any], action: Any, options: JobOptions
) -> None:
    """Send a file or a directory; files whose destination has the same SHA-256 are skipped."""
    begun = await _begin(engine, run, hostvars, options, f"copy to {action.dest}")
    if begun is None:
        return
    conn, out, started = begun
    try:
        pairs = await asyncio.to_thread(_pairs, Path(action.src), action.dest)
        if not pairs:
            raise OSError(f"nothing to copy in {action.src}")
        local = {dest: await asyncio.to_thread(sha256_file, src) for src, dest in pairs}
        remote = await _remote_sums(conn, [dest for _, dest in pairs])
        changed = 0
        async with conn.start_sftp_client() as sftp:
            for src, dest in pairs:
                if remote.get(dest) == local[dest]:
                    out.system(f"unchanged: {dest} (sha256 {local[dest]})")
                    continue
                parent = dest.rsplit("/", 1)[0]
                if parent and parent != dest:
                    await sftp.makedirs(parent, exist_ok=True)
                if getattr(action, "backup", False) and dest in remote:
                    stamp = time.strftime("%Y%m%d%H%M%S")
                    await sftp.posix_rename(dest, f"{dest}.{stamp}~")
                    out.system(f"backup: previous {dest} kept as {dest}.{stamp}~")
                tmp = f"{dest}.easytask-{run.id}"
                await sftp.put(str(src), tmp, **SFTP_OPTS)
                if action.mode:
                    await sftp.chmod(tmp, int(str(action.mode), 8))
                await sftp.posix_rename(tmp, dest)
                changed += 1
                out.system(f"changed: {dest} ({src.stat().st_size} bytes, sha256 {local[dest]})")
        owner = getattr(action, "owner", None)
        if owner and changed:
            targets = " ".join(shlex.quote(dest) for _, dest in pairs)
            result, _, err = await executor.run_collect(
                conn, f"chown {shlex.quote(owner)} -- {targets}"
            )
            if result.exit_code != 0:
                raise OSError(f"chown {owner}: {err.decode(errors='replace').strip()}")
        reason = "changed" if changed else "unchanged"
        if len(pairs) > 1:
            reason += f" ({changed} of {len(pairs)} files)"
        await engine.finish(
            run,
            RunState.SUCCESS,
            reason=reason,
            exit_code=0,
            out=out,
            duration=time.monotonic() - started,
        )
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        await _failed(engine, run, out, started, f"copy failed: {exc}", options)


async def _failed(
    engine: RunHost, run: Run, out: RunOutput, started: float, reason: str, options: JobOptions
) -> None:
    """Record a file operation that failed, with the reason (secrets masked) in its output too."""
    reason = Masker(masks(options))(reason)
    out.system(reason, "ERROR")
    await engine.finish(
        run, RunState.FAILED, reason=reason, out=out, duration=time.monotonic() - started
    )


async def script(
    engine: RunHost, run: Run, hostvars: dict[str, Any], action: Any, options: JobOptions
) -> None:
    """Upload a script to a private temp dir, run it, remove it."""
    engine.track(run)
    conn = await engine.file_connection(run, hostvars, options)
    if conn is None:
        return
    assert run.id is not None
    remote_dir = f"/tmp/.easytask-{run.id}-{secrets.token_hex(4)}"
    remote = f"{remote_dir}/{Path(action.src).name}"
    # a script that runs as another user (become) must be readable by it while it runs
    mode = 0o755 if resolve_become(run.host, hostvars, options.become) else 0o700
    try:
        async with conn.start_sftp_client() as sftp:
            await sftp.mkdir(remote_dir, asyncssh.SFTPAttrs(permissions=mode))
            await sftp.put(action.src, remote, **SFTP_OPTS)
            await sftp.chmod(remote, mode)
    except (OSError, asyncssh.Error) as exc:
        reason = Masker(masks(options))(f"could not upload the script: {exc}")
        await engine.finish(run, RunState.FAILED, reason=reason)
        return

    def wrapped(line: str) -> str:
        return f"( {line}\n); rc=$?; rm -rf {shlex.quote(remote_dir)}; exit $rc"

    # the stored command shows **** where a secret was rendered into it (arguments, env)
    stored = Masker(masks(options))(wrapped(action.shell_line(remote)))
    await engine.store.call(engine.store.update_run, run.id, None, "", command=stored)
    # a task's `env:` goes to the command apart from its line (options.env)
    run.command = wrapped(action.shell_line(remote, env=False))
    if run.connection == "agent":
        run.state = RunState.QUEUED
    await engine.execute_one(run, hostvars, options)


async def fetch(
    engine: RunHost, run: Run, hostvars: dict[str, Any], action: FileAction, options: JobOptions
) -> None:
    """Bring a remote file back into the server's store dir for this run."""
    begun = await _begin(engine, run, hostvars, options, f"fetch {action.dest}")
    if begun is None:
        return
    conn, out, started = begun
    target = Path(action.store_dir) / str(run.id) / (Path(action.dest).name or "file")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        async with conn.start_sftp_client() as sftp:
            await sftp.get(action.dest, str(target), **SFTP_OPTS)
        digest = await asyncio.to_thread(sha256_file, target)
        out.system(f"fetched {action.dest} ({target.stat().st_size} bytes, sha256 {digest})")
        await engine.finish(
            run,
            RunState.SUCCESS,
            reason=f"fetched sha256 {digest}",
            exit_code=0,
            out=out,
            duration=time.monotonic() - started,
        )
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        await _failed(engine, run, out, started, f"fetch failed: {exc}", options)
