"""Starts detached runs under the supervisor, follows their spools, terminates their groups."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pwd
import re
import signal
import sys
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from easytask.agent.policy import Account
from easytask.agent.spool import RecordReader, Spool, spool_keys
from easytask.transport.agentless import env_on_stdin
from easytask.transport.become import sudo_line

log = logging.getLogger("easytask.agent")

CHUNK = 65536
DEFAULT_CAP = 2 << 30  # bytes of output spooled per run before the rest is cut and counted
POLL = 0.05
GATHER = 0.005  # seconds: output printed this soon after a batch waits for the next one
READ = 1 << 20  # bytes of spool read at once
SPOOLS_KEPT = 64  # `Spool` objects a runner keeps for the runs asking again
ACK_INLINE = 8  # spools an acknowledgement deletes on the event loop; more go to a thread

# What a command's environment takes from the agent's (docs/agents.md, "The command's
# environment"): where programs are and how text is shown, nothing the agent was configured with.
PASSED = ("PATH", "LANG", "LANGUAGE", "TZ", "TMPDIR")
PASSED_PREFIX = "LC_"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_pass_env(names: list[str]) -> tuple[str, ...]:
    """The agent's `--pass-env` names, checked (ValueError): never one of EasyTask's own."""
    checked: list[str] = []
    for name in (n.strip() for n in names):
        if not name:
            continue
        if not ENV_NAME_RE.match(name):
            raise ValueError(f"--pass-env {name!r}: not a variable name")
        if name.startswith("EASYTASK_"):
            raise ValueError(f"--pass-env {name}: the agent's own settings never reach commands")
        if name not in checked:
            checked.append(name)
    return tuple(checked)


def command_env(
    run_as: Account | None = None,
    environ: Mapping[str, str] | None = None,
    passed: tuple[str, ...] = (),
) -> dict[str, str]:
    """The environment every command starts from, before its run's own variables.

    Login-like: PATH, the locale and time zone variables of the agent's environment, and HOME,
    USER, LOGNAME and SHELL of the account the command runs as; then the variables the agent was
    told to pass on (`--pass-env`, see check_pass_env).  Nothing else of the agent's environment:
    its `EASYTASK_AGENT_*` settings (the enrolment token among them) and whatever else its
    service manager or container gave it never reach a command.
    """
    environ = os.environ if environ is None else environ
    env = {
        k: v
        for k, v in environ.items()
        if k in PASSED
        or k.startswith(PASSED_PREFIX)
        or (k in passed and not k.startswith("EASYTASK_"))
    }
    env.setdefault("PATH", DEFAULT_PATH)
    if run_as is not None:
        env.update(HOME=run_as.home, USER=run_as.name, LOGNAME=run_as.name, SHELL=run_as.shell)
        return env
    try:  # the agent's own account: as its environment says, else as the password database does
        entry: pwd.struct_passwd | None = pwd.getpwuid(os.geteuid())
    except KeyError:
        entry = None
    user = environ.get("USER") or (entry.pw_name if entry else "")
    own = {
        "HOME": environ.get("HOME") or (entry.pw_dir if entry else "/"),
        "USER": user,
        "LOGNAME": environ.get("LOGNAME") or user,
        "SHELL": environ.get("SHELL") or (entry.pw_shell if entry else "") or "/bin/sh",
    }
    env.update({k: v for k, v in own.items() if v})
    return env


def supervisor_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The supervisor's own environment: the agent's without its EASYTASK_* settings."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if not k.startswith("EASYTASK_")}


@dataclass
class Job:
    """A run whose supervisor this agent process started.

    Its followers wait for a change (`wait`): the supervisor's word that the spool has new
    records (`bump`), or that the command ended or the supervisor went away (`end`).  No task
    of its own: the supervisor's reader wakes the followers directly.
    """

    key: str
    started: float = field(default_factory=time.monotonic)
    version: int = 0
    done: bool = False  # no more word from the supervisor about it (it exited or went away)
    exited: bool = False  # the supervisor wrote the exit record
    on_end: Callable[[Job], None] | None = None  # the runner forgets it
    _waiters: list[asyncio.Future[None]] = field(default_factory=list)

    def bump(self) -> None:
        """Something changed: wake every follower."""
        self.version += 1
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def end(self, exited: bool) -> None:
        """The supervisor said the command ended (`exited`), or went away without saying."""
        self.exited = self.exited or exited
        if not self.done:
            self.done = True
            if self.on_end is not None:
                self.on_end(self)
        self.bump()

    async def wait(self, seen: int, timeout: float) -> None:
        """Until the version is past `seen`, the job is done, or `timeout` seconds passed."""
        if self.version != seen or self.done:
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._waiters.append(fut)
        timer = loop.call_later(timeout, _wake, fut)
        try:
            await fut
        finally:
            timer.cancel()
            # woken by the timer or cancelled, it is still listed (a bump takes the list)
            with contextlib.suppress(ValueError):
                self._waiters.remove(fut)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class SupervisorProcess:
    """The agent process's supervisor (`easytask.agent.supervisor`), started on first use."""

    def __init__(self, log_path: Path, idle_exit: float = 60.0) -> None:
        self.log_path = log_path
        self.idle_exit = idle_exit  # without runs this long, it exits (0: never)
        self._idle: asyncio.TimerHandle | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.pending: deque[asyncio.Future[int]] = deque()
        self.watchers: dict[str, Job] = {}  # spool name -> the run told about its records
        self._reader: asyncio.Task[None] | None = None
        self._starting = asyncio.Lock()

    async def start_run(self, spool: str, spec: dict[str, Any], job: Job) -> int:
        """Have the supervisor start the run of a spool (its name); the command's process group."""
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        proc = await self._ensure()
        assert proc.stdin is not None
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.pending.append(fut)
        self.watchers[spool] = job  # before asking: its first records may come at once
        proc.stdin.write(json.dumps({"spool": spool, "spec": spec}).encode() + b"\n")
        try:
            return await fut
        except BaseException:
            self.forget(spool)
            raise

    def forget(self, spool: str) -> None:
        self.watchers.pop(spool, None)
        if not self.watchers and not self.pending and self.idle_exit > 0 and self._idle is None:
            loop = asyncio.get_running_loop()
            self._idle = loop.call_later(self.idle_exit, self._exit_if_idle)

    def _exit_if_idle(self) -> None:
        """No run for a while: let the supervisor go (an idle agent is one process); the next
        run starts a new one.  Closing its stdin is how it is told: it takes no more runs."""
        self._idle = None
        proc = self.proc
        if self.watchers or self.pending or proc is None or self._starting.locked():
            return
        self.proc = None
        self._reader = None
        if proc.stdin is not None and proc.returncode is None:
            proc.stdin.close()

    async def _ensure(self) -> asyncio.subprocess.Process:
        async with self._starting:
            if self.proc is None or self.proc.returncode is not None or self._reader is None:
                with open(self.log_path, "ab") as errlog:
                    self.proc = await asyncio.create_subprocess_exec(
                        sys.executable,
                        "-m",
                        "easytask.agent.supervisor",
                        stdin=asyncio.subprocess.PIPE,
                        stdout=asyncio.subprocess.PIPE,
                        stderr=errlog,
                        start_new_session=True,  # outlives the agent; no signals meant for it
                        env=supervisor_env(),  # no enrolment token in a long-lived process
                        limit=1 << 20,
                    )
                self._reader = asyncio.create_task(self._read(self.proc), name="supervisor")
            return self.proc

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        try:
            while line := await proc.stdout.readline():
                kind, _, rest = line.decode(errors="surrogateescape").rstrip("\n").partition(" ")
                if kind in ("p", "x"):
                    job = self.watchers.get(rest)
                    if job is None:
                        continue
                    if kind == "p":
                        job.bump()
                    else:
                        self.forget(rest)
                        job.end(exited=True)
                    continue
                fut = self.pending.popleft()
                if fut.done():
                    continue
                if kind == "ok":
                    fut.set_result(int(rest))
                else:
                    fut.set_exception(OSError(rest or "the supervisor refused"))
        finally:
            # (an idle supervisor that was let go leaves nothing waiting for it)
            if self.proc is proc:
                self._gone()

    def _gone(self) -> None:
        self._reader = None
        while self.pending:
            fut = self.pending.popleft()
            if not fut.done():
                fut.set_exception(OSError("the agent's supervisor process exited"))
        jobs = list(self.watchers.values())
        self.watchers.clear()
        for job in jobs:
            job.end(exited=False)  # their followers fall back to reading the spools


_supervisors: dict[asyncio.AbstractEventLoop, SupervisorProcess] = {}


def supervisor_process(log_path: Path, idle_exit: float = 60.0) -> SupervisorProcess:
    """The supervisor of this process (one per event loop, shared by its agents)."""
    loop = asyncio.get_running_loop()
    found = _supervisors.get(loop)
    if found is None:
        found = _supervisors[loop] = SupervisorProcess(log_path, idle_exit)
    return found


class Runner:
    """The agent's runs: each under its own supervisor process, output in a spool."""

    def __init__(
        self,
        state_dir: Path,
        cap: int = DEFAULT_CAP,
        cwd: str | None = None,
        run_as: Account | None = None,
        supervisor_idle: float = 60.0,
        pass_env: tuple[str, ...] = (),
        grace: float = 5.0,
    ) -> None:
        self.supervisor_idle = supervisor_idle
        self.grace = grace  # a command run through sudo is KILLed this long after a TERM
        self.root = state_dir / "spool"
        self.root.mkdir(parents=True, exist_ok=True)
        self.cap = cap
        self.run_as = run_as
        self.cwd = cwd or (run_as.home if run_as else os.path.expanduser("~"))
        self.pass_env = pass_env
        self.env = command_env(run_as, passed=pass_env)  # every command's environment, at first
        self.jobs: dict[str, Job] = {}
        self.exits: dict[str, dict[str, Any]] = {}  # exit records `follow` read, for its caller
        self._tasks: set[asyncio.Task[Any]] = set()
        self._spools: dict[str, Spool] = {}

    def spool(self, key: str) -> Spool:
        """The spool of a run key (raises ValueError for a bad key); a run asks for it several
        times, and a `Spool` is only its paths: the last few are kept."""
        found = self._spools.get(key)
        if found is None:
            found = Spool(self.root, key)
            if len(self._spools) >= SPOOLS_KEPT:
                self._spools.clear()
            self._spools[key] = found
        return found

    @property
    def running(self) -> int:
        """Runs whose command has not ended yet."""
        keys, ended = spool_keys(self.root)
        return len(keys) - len(ended)

    async def start(
        self, key: str, command: str, extra_env: dict[str, str], become: Account | None = None
    ) -> Job:
        """Start a command under the supervisor (its own session, outliving this process).

        Its environment is exactly `command_env` and `extra_env` (the run's id and attempt).
        With `become` (allowed by the policy already), it runs as that user: started as the
        user itself when this agent is root, else through `sudo -n` (see `spec_for`).
        """
        spool = self.spool(key)
        spool.create()
        spec = self.spec_for(command, extra_env, become)
        job = Job(key=key, on_end=self._ended)
        supervisor = supervisor_process(self.root.parent / "supervisor.log", self.supervisor_idle)
        # known before the supervisor is asked: its word that the command ended may come first
        self.jobs[key] = job
        try:
            await supervisor.start_run(spool.name, spec, job)
        except BaseException:
            if self.jobs.get(key) is job:
                del self.jobs[key]
            spool.remove()  # nothing started: no spool to count as running or to keep
            raise
        return job

    def _ended(self, job: Job) -> None:
        if self.jobs.get(job.key) is job:
            del self.jobs[job.key]

    def spec_for(
        self, command: str, extra_env: dict[str, str], become: Account | None = None
    ) -> dict[str, Any]:
        """What the supervisor needs to start a command, and as whom.

        As root, a run that becomes a user starts as that user (uid, gid, its groups as
        initgroups(3) lists them) with its login environment (HOME, USER, LOGNAME, SHELL) in its
        home.  An agent that is not root cannot switch users itself: `sudo -n -H -u USER` does,
        and sudo's own rules (env_reset) make the environment.
        """
        spec: dict[str, Any] = {"cap": self.cap}
        account = self.run_as
        if become is not None and os.geteuid() == 0:
            account = become
            spec.update(
                command=command,
                env={**command_env(become, passed=self.pass_env), **extra_env},
                cwd=become.home,
            )
        elif become is not None:
            # sudo's env_reset drops the environment: the run's variables (its secrets among
            # them) come on the command's stdin instead, read as the user before the command
            env_text, env_bytes = env_on_stdin(extra_env)
            command = sudo_line(become.name, command, grace=self.grace, prelude=env_text)
            spec.update(command=command, env=self.env, cwd="/", stdin=env_bytes.decode())
        else:
            spec.update(command=command, env={**self.env, **extra_env}, cwd=self.cwd)
        if account is not None and account.uid != os.geteuid():
            spec["user"] = account.spec()
        return spec

    async def follow(
        self,
        key: str,
        after_seq: int,
        reader: RecordReader | None = None,
        chunk: int = READ,
    ) -> AsyncGenerator[list[tuple[str, bytes]], None]:
        """Batches of records with seq > after_seq, live until the run ends; a batch is a list of
        (stream, data) runs of consecutive records of one stream, their data joined.

        The first line after a quiet spell goes out at once; while a run keeps printing, what
        it prints within `GATHER` seconds of the last batch goes out as one batch (one SSH
        message and one wake-up of the scheduler per batch, not per line). The spool is a
        local file the supervisor has just written, so it is read directly: a thread hand-off
        per read costs more than the read.
        """
        spool = self.spool(key)
        reader = reader or RecordReader()  # the caller's, to know the last seq it was given
        loop = asyncio.get_running_loop()
        sent = -1e9
        job = self.jobs.get(key)  # a run this process started: its supervisor says what changed
        with spool.open() as fh:
            while True:
                gap = sent + GATHER - loop.time()
                if gap > 0:
                    await asyncio.sleep(gap)
                seen = job.version if job else 0
                data = fh.read(chunk)
                if data:
                    batch = reader.feed_runs(data, after_seq)
                    if batch:
                        yield batch
                        # a full read means a backlog (a replay): no pause until it is sent
                        sent = loop.time() if len(data) < chunk else -1e9
                    continue
                # a run this process started says when it exited: no need to look before
                if job is None or job.done:
                    # the supervisor said it wrote the exit record: it ends the file open here
                    info = spool.exit_info_in(fh) if job and job.exited else spool.exit_info()
                    if info is not None:
                        self.exits[key] = info  # for the caller, who sends the exit status
                        while rest := fh.read(chunk):  # what came before the exit record
                            batch = reader.feed_runs(rest, after_seq)
                            if batch:
                                yield batch
                        return
                    if not spool.supervisor_alive():
                        spool.write_exit(
                            {
                                "exit_code": None,
                                "signal": "KILL",
                                "lost": True,
                                "reason": "supervisor died (host restart?)",
                            }
                        )
                        continue
                    await asyncio.sleep(POLL)
                else:
                    await job.wait(seen, 1.0)
                    # a second without word: look at the spool (a supervisor killed without
                    # its pipe closing, say)
                    if (
                        not job.done
                        and job.version == seen
                        and (spool.exit_info() is not None or not spool.supervisor_alive())
                    ):
                        job.end(exited=False)

    def status(self, key: str) -> dict[str, Any]:
        """unknown | running | finished, with the exit record when finished."""
        spool = self.spool(key)
        if not spool.exists():
            return {"state": "unknown"}
        info = spool.exit_info()
        if info is None:
            if key not in self.jobs and not spool.supervisor_alive():
                return {"state": "running", "orphaned": True}
            return {"state": "running"}
        return {"state": "finished", "exit": info}

    def ack(self, key: str) -> bool:
        """Delete a finished run's spool once the scheduler has stored everything."""
        return self.spool(key).retire()  # only an ended run's spool: a running one stays

    @staticmethod
    def acked_keys(req: dict[str, Any]) -> list[str]:
        """The run keys an acknowledgement names (`runs`, or one `run`; KeyError if neither)."""
        return [str(k) for k in req["runs"]] if "runs" in req else [str(req["run"])]

    async def ack_soon(self, keys: list[str]) -> list[str]:
        """`ack_all`: a few at once, many in a thread (deleting files is slow on some disks)."""
        if len(keys) <= ACK_INLINE:
            return self.ack_all(keys)
        return await asyncio.to_thread(self.ack_all, keys)

    def ack_quietly(self, req: Any) -> None:
        """An acknowledgement that asks no reply: as `ack_soon`, a bad one logged."""
        try:
            keys = self.acked_keys(req)
        except (KeyError, TypeError) as exc:
            log.warning("a bad acknowledgement was ignored: %s", exc)
            return
        if len(keys) <= ACK_INLINE:
            self.ack_all(keys)
            return
        task = asyncio.create_task(asyncio.to_thread(self.ack_all, keys), name="agent-ack")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def ack_all(self, keys: list[str]) -> list[str]:
        """`ack` each run; those whose spool went (a bad key, or a disk that refuses, is
        logged and the others go on)."""
        removed = []
        for key in keys:
            try:
                if self.ack(key):
                    removed.append(key)
            except (ValueError, OSError) as exc:
                log.warning("the spool of run %s could not be deleted: %s", key, exc)
        return removed

    def run_keys(self) -> list[str]:
        """Every run key that has a spool."""
        return spool_keys(self.root)[0]

    async def terminate(self, key: str, grace: float, by: str = "") -> bool:
        """TERM the run's process group, KILL it after `grace` seconds; False if unknown."""
        spool = self.spool(key)
        if not spool.exists():
            return False
        pgid = spool.pgid
        deadline = time.monotonic() + max(grace, 1.0)
        while pgid is None and spool.exit_info() is None and time.monotonic() < deadline:
            # the supervisor is still starting the command: wait for its group id
            await asyncio.sleep(0.05)
            pgid = spool.pgid
        if pgid is None or spool.exit_info() is not None:
            return True
        log.info("terminating run %s (group %d)%s", key, pgid, f" for {by}" if by else "")
        _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _group_alive(pgid):
            await asyncio.sleep(0.05)
        # children may outlive the leader in the group: KILL the group regardless
        _signal_group(pgid, signal.SIGKILL)
        return True

    def collect_garbage(self, max_age: float = 7 * 86400) -> int:
        """Remove finished spools the scheduler never acknowledged, after `max_age` seconds."""
        removed = 0
        now = time.time()
        for key in spool_keys(self.root)[1]:
            spool = self.spool(key)
            try:
                age = now - spool.done_path.stat().st_mtime
            except OSError:
                continue
            if age > max_age:
                spool.remove()
                removed += 1
        return removed


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
