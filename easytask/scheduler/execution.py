"""Executing one run on its host, through its agent or over SSH, and streaming its output."""

from __future__ import annotations

import asyncio
import getpass
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

from asyncssh import SSHClientConnection

from easytask.errors import ConnectError
from easytask.facts import GATHER_COMMAND, parse_gathered
from easytask.masking import env_prefix
from easytask.plan.become import agentless_refusal, resolve_become
from easytask.plan.connection import LOCAL, local_refusal, ssh_options
from easytask.scheduler.agents import AgentRegistry
from easytask.scheduler.cluster import Cluster
from easytask.scheduler.dispatch import OFFER, Dispatcher
from easytask.scheduler.inflight import (
    InFlight,
    JobOptions,
    LiveRun,
    command_env,
    ended_or_stopped,
    masks,
    run_timeout_text,
)
from easytask.scheduler.logwriter import LogWriter
from easytask.scheduler.output import RunOutput
from easytask.scheduler.recording import Outcome, Recorder
from easytask.store.db import Store
from easytask.store.models import OFFERED, Run, RunState, as_utc, utcnow
from easytask.store.runs import BECOME, RAN_AS
from easytask.transport import executor, linkrun
from easytask.transport.agentless import SSHPool, SSHTarget, env_on_stdin, wrap_command
from easytask.transport.agentlink import AgentLink
from easytask.transport.become import SU_TERM_MODES, SuDialog, become_command
from easytask.transport.executor import EXEC_HEADER_FEATURE, ExecResult, env_header
from easytask.transport.linkrun import CONTROL_RUN_FEATURE, LinkExecution
from easytask.transport.local import LocalExecution, LocalHost

log = logging.getLogger("easytask.server")

# a command started: on a session, on an agent's control session, or on this host
Started = executor.Execution | LinkExecution | LocalExecution


class Execution:
    """Runs one run's command on its host (agent or agentless, one code path) to its end."""

    def __init__(
        self,
        store: Store,
        writer: LogWriter,
        registry: AgentRegistry,
        pool: SSHPool,
        inflight: InFlight,
        recorder: Recorder,
        dispatcher: Dispatcher,
        known_hosts: str | None = None,
        reattach_timeout: float = 3600.0,
    ) -> None:
        self.store = store
        self.writer = writer
        self.registry = registry
        self.pool = pool
        self.inflight = inflight
        self.recorder = recorder
        self.dispatcher = dispatcher
        self.known_hosts = known_hosts
        self.reattach_timeout = reattach_timeout
        self.cluster: Cluster | None = None
        self.background_tasks: set[asyncio.Task[None]] = set()
        self._connect_limit = asyncio.Semaphore(64)
        self.local = LocalHost()  # `ansible_connection: local`: this server's own host
        self.allow_local = False  # ... where the admin allows it

    async def run(self, run: Run, hostvars: dict[str, Any], options: JobOptions) -> None:
        """Execute a run's command on its agent or over SSH, and record how it ended."""
        as_user = resolve_become(run.host, hostvars, options.become)
        if as_user != options.as_user:  # a copy per run only where it differs
            options = replace(options, as_user=as_user)
        if as_user is not None and run.connection == "agent" and run.server != OFFERED:
            # on the timeline before it is dispatched (offered at submit: stored then): a server
            # that claims the run (it holds the agent) reads whom to ask for here
            await self.recorder.event(run, BECOME, as_user.user)
        if run.connection == "agent":
            await self.agent_run(run, options)
        else:
            await self._direct_run(run, hostvars, options)

    async def close(self) -> None:
        """Acknowledgements on their way: a moment to arrive, then they are cancelled."""
        if self.background_tasks:
            _, late = await asyncio.wait(set(self.background_tasks), timeout=2)
            for task in late:
                task.cancel()

    async def _direct_run(self, run: Run, hostvars: dict[str, Any], options: JobOptions) -> None:
        """A run without an agent: over SSH to the host's own sshd, or (`local`, where the admin
        allows it) as a process on this server's host, as the server's user."""
        assert run.id is not None
        live = self.inflight.live[run.id]
        local = run.connection == LOCAL
        # the process group's pid file names this server too: other installations may share a host
        key = f"{self.store.owner or 'et'}-{run.id}-{run.attempt}"
        conn: SSHClientConnection | LocalHost = self.local
        target = None if local else self._ssh_target(run.host, hostvars, options)
        login = getpass.getuser()
        where = (
            f"ssh {target.host}:{target.port}"
            if target
            else f"local: the server's host, as {login}"
        )

        def terminate(grace: float) -> Any:
            if target is None:
                return self.local.terminate(key, grace)
            return self.pool.terminate(target, key, grace)

        # checked again here for a local run: planned by another server, or before a restart
        refusal = (
            local_refusal(run.host)
            if local and not self.allow_local
            else agentless_refusal(
                run.host, options.as_user, run.connection, run.host in options.become_passwords
            )
        )
        if refusal:
            await self.recorder.finish(run, RunState.FAILED, reason=refusal)
            return
        await self.recorder.update(run, RunState.DISPATCHED, "dispatched", where)
        if target is not None:
            try:
                async with self._connect_limit:
                    conn = await self.pool.get(target)
            except ConnectError as exc:
                await self.recorder.finish(run, RunState.UNREACHABLE, reason=str(exc))
                return
            login = target.user or str(conn.get_extra_info("username") or "")
        # the values go on stdin, never in the command line `ps` shows on the host
        env_text, env_bytes = env_on_stdin(command_env(options))
        command, dialog = run.command, None
        if options.as_user is not None:
            # the values are read as the user (sudo's env_reset would drop them); a become
            # password goes first to `sudo -S`, or answers su's prompt (`SuDialog`)
            try:
                command, env_bytes, dialog = become_command(
                    options.as_user.user,
                    options.as_user.method,
                    command,
                    grace=options.grace,
                    prelude=env_text,
                    stdin=env_bytes,
                    password=options.become_passwords.get(run.host),
                )
            except ValueError as exc:
                await self.recorder.finish(run, RunState.FAILED, reason=f"{run.host}: {exc}")
                return
            env_text = ""
        out = self.recorder.output(run, masks=masks(options))
        outcome = await self._stream(
            run,
            live,
            options,
            conn,
            env_text + command if local else wrap_command(command, key, env_text),
            {},
            out,
            terminate=terminate,
            stdin=env_bytes,
            local_key=key,
            dialog=dialog,
        )
        if dialog is not None and not dialog.passed:  # su never started the command: why
            out.system(dialog.said() or "su did not start the command", "ERROR")
        if target is not None and outcome.result is not None and outcome.result.lost:
            self.pool.drop(target)
        self._ran_as(run, outcome, None, options, login)
        await self.recorder.conclude(run, outcome, out)

    async def agent_run(self, run: Run, options: JobOptions, live: LiveRun | None = None) -> None:
        """Execute here, or follow the run while the server holding its agent executes it."""
        assert run.id is not None
        live = live or self.inflight.live[run.id]
        give_back: float | None = time.monotonic() + options.pending_timeout
        while True:
            if (
                self.cluster is not None
                and not self.inflight.executes_here(
                    run, claimed=live is self.inflight.claimed.get(run.id or 0)
                )
                and await self.cluster.follow(run, live.kill, give_back)
            ):
                return
            give_back = await self._agent_run_here(run, options, live, give_back or 0.0)
            if give_back is None:
                return

    async def _agent_run_here(
        self, run: Run, options: JobOptions, live: LiveRun, pending_until: float
    ) -> float | None:
        """Dispatch to the agent; after a lost link wait for it and re-attach, never re-run.
        Returns None when the run ended, or, when it was offered to the server that holds its
        agent, the time after which this server takes it back if nobody claimed it."""
        assert run.id is not None
        key = f"{run.id}-{run.attempt}"
        can_offer = self.cluster is not None and not masks(options)
        started = run.state in (RunState.DISPATCHED, RunState.RUNNING)
        deadline = None
        if options.timeout is not None:
            begun = run.started_at or utcnow()
            deadline = (
                time.monotonic()
                + options.timeout
                - max((utcnow() - as_utc(begun)).total_seconds(), 0)
            )
        out: RunOutput | None = None

        async def store_what_came() -> None:
            # Before another server re-attaches: every line received here is stored, and a
            # later re-attach here continues after what is stored, like one in a new process.
            nonlocal out
            if out is not None:
                out.close()
                out = None
            await self.writer.flush()

        while True:
            wait_for = self.reattach_timeout if started else options.pending_timeout
            if deadline is not None and started:
                wait_for = min(wait_for, max(deadline - time.monotonic(), 0) + options.grace)
            patience = wait_for if started else max(pending_until - time.monotonic(), 0.0)
            # an offer taken back after the pending time is not made again: the run ends here
            offer = store_what_came if can_offer and (started or patience > 0) else None
            info = await self.dispatcher.wait_agent(
                run, live, patience, started, offer=offer, said=wait_for
            )
            if info is OFFER:
                return time.monotonic() + wait_for if started else pending_until
            if info is None:
                if started:
                    reason = (
                        f"agent {run.host} did not come back within {wait_for:g}s; "
                        "the command may still be running there"
                    )
                    if out is not None:
                        out.close()
                    await self.recorder.finish(run, RunState.FAILED, reason=reason, out=out)
                return None
            link = info.link
            assert link is not None
            try:
                attach_from: int | None = None
                if started:
                    status = await link.request("status", run=key)
                    if status.get("state") == "unknown":
                        if run.state == RunState.RUNNING:
                            await self.recorder.finish(
                                run,
                                RunState.FAILED,
                                reason="the agent has no record of this run (state dir lost?)",
                            )
                            return None
                        started = False  # the dispatch never reached the agent: start it now
                    elif out is not None:
                        out.reset_partial()  # same process: continue after the last line received
                        attach_from = out.agent_lines
                    else:
                        # A new server process: continue after what is stored.  The agent numbers
                        # only output lines; our seq also counts system lines.
                        point = await self.recorder.resume_point(run.id)
                        attach_from, next_seq, stored = point[0], point[1] + 1, point[2]
                        out = self.recorder.output(
                            run, first_seq=next_seq, stored=stored, masks=masks(options)
                        )
                dispatch: asyncio.Future[None] | None = None
                if (
                    attach_from is None
                    and options.as_user is not None
                    and ("user" not in info.facts)
                ):
                    # an agent from before become would run the command as its own user
                    version = info.facts.get("version") or "unknown"
                    reason = (
                        f"agent {run.host} (version {version}) cannot become another user; "
                        "upgrade it"
                    )
                    await self.recorder.finish(run, RunState.FAILED, reason=reason)
                    return None
                if attach_from is None:
                    # Stored while the command starts, not before: the agent starts a run key
                    # once, so a server that died in between re-attaches instead of re-running.
                    run.state = RunState.DISPATCHED
                    dispatch = self.recorder.update_soon(
                        run, RunState.DISPATCHED, "dispatched", f"agent {run.host}"
                    )
                    env = {"EASYTASK_RUN": key}  # the command sees EASYTASK_RUN_ID, _ATTEMPT
                    if options.as_user is not None:  # the agent decides whether and how
                        env["EASYTASK_BECOME"] = options.as_user.user
                    out = self.recorder.output(run, masks=masks(options))
                    command = env_prefix(command_env(options)) + run.command
                else:
                    env = {"EASYTASK_ATTACH": key, "EASYTASK_FROM_SEQ": str(attach_from)}
                    command = "easytask-attach"
                    await self.recorder.event(
                        run, "reattached", f"agent {run.host}, from output line {attach_from + 1}"
                    )
                assert out is not None
                started = True
                acks = link.take_acks()
                if acks:  # ended runs whose spools the agent may delete, along for the ride
                    env["EASYTASK_ACK"] = ",".join(acks)
                # a new run as one request on the control session (see transport.linkrun);
                # else a session, its variables on the command's first line where the agent
                # reads them there (no `env` request)
                on_link = attach_from is None and CONTROL_RUN_FEATURE in link.features
                if not on_link and EXEC_HEADER_FEATURE in link.features:
                    command, env = env_header(env) + command, {}
                remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
                outcome = await self._stream(
                    run,
                    live,
                    options
                    if remaining == options.timeout
                    else replace(options, timeout=remaining),
                    link if on_link else link.conn,
                    command,
                    env,
                    out,
                    terminate=_agent_terminator(link, key, live),
                    attach=attach_from is not None,
                    dispatched=dispatch,
                )
            except (ConnectionError, OSError, RuntimeError, TimeoutError) as exc:
                log.warning("run %s: agent %s request failed: %s", run.id, run.host, exc)
                continue
            finally:
                await self.registry.release(run.host)
            if outcome.result is not None and outcome.result.lost and not outcome.reason:
                out.system(f"link to agent {run.host} lost; waiting to re-attach", "WARN")
                await self.recorder.event(run, "agent lost", "waiting to re-attach")
                continue
            stats = outcome.result.stats if outcome.result is not None else None
            facts = info.facts
            own = facts.get("user") or (facts.get("policy") or {}).get("run_as") or ""
            self._ran_as(run, outcome, stats, options, str(own))
            await self.recorder.conclude(run, outcome, out, stats)
            if self.writer.backlog:  # lines still on their way to the database
                self._background(self._acknowledge(run, link, key), f"ack-{key}")
            else:  # every line is stored: no task per run for that
                link.acknowledge(key)
            return None

    def _ran_as(
        self,
        run: Run,
        outcome: Outcome,
        stats: dict[str, Any] | None,
        options: JobOptions,
        default: str,
    ) -> None:
        """The run's timeline says whom its command ran as (not for a run that never started:
        refused by its agent, or not started at all)."""
        if outcome.result is None or (stats and stats.get("refused")):
            return
        as_user = options.as_user
        who = f"{as_user.user} (become, {as_user.method})" if as_user is not None else default
        if run.connection == "agent" and as_user is not None:
            who = f"{as_user.user} (become)"  # the agent's own way: as root, or through sudo
        if who:  # stored before the run's end, asked for next (no wait per run for it)
            self.recorder.note(run, RAN_AS, who)

    async def _acknowledge(self, run: Run, link: AgentLink, key: str) -> None:
        """Let the agent delete the run's spool once every line is stored."""
        try:
            await self.writer.flush()
            link.acknowledge(key)
        except Exception as exc:
            log.info("run %s: could not acknowledge spool on %s: %s", run.id, run.host, exc)

    def _background(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self.background_tasks.add(task)
        task.add_done_callback(self.background_tasks.discard)

    async def gather_facts(
        self, host: str, hostvars: dict[str, Any], options: JobOptions
    ) -> dict[str, Any]:
        """An agentless host's facts, read with one command (`easytask.facts.GATHER_COMMAND`)."""
        # where local is not allowed, `ssh_options` refuses such a host (`local_refusal`)
        if str(hostvars.get("ansible_connection") or "") == LOCAL and self.allow_local:
            return await self.local.gather_facts()
        target = self._ssh_target(host, hostvars, options)
        async with self._connect_limit:
            conn = await self.pool.get(target)
        async with asyncio.timeout(60):
            result = await conn.run(GATHER_COMMAND, check=False)
        if result.exit_status not in (0, None):
            raise RuntimeError(f"exit code {result.exit_status}: {str(result.stderr or '')[:200]}")
        return parse_gathered(str(result.stdout or ""))

    async def ssh_connection(
        self, host: str, hostvars: dict[str, Any], ssh_key: str | None = None
    ) -> SSHClientConnection:
        """A pooled connection to an agentless host, as its runs get one (`ConnectError` if it
        cannot be reached); `ssh_key` is its key from the credential store."""
        options = JobOptions(ssh_keys={host: ssh_key} if ssh_key else {})
        async with self._connect_limit:
            return await self.pool.get(self._ssh_target(host, hostvars, options))

    def _ssh_target(self, host: str, hv: dict[str, Any], options: JobOptions) -> SSHTarget:
        """The host's SSH connection from its variables (`plan.ssh_options`); jump hosts
        (`ProxyJump`) are reached with the host's key and known hosts, each through the last;
        a jump host without `user@` is logged in to as the local user, as OpenSSH does."""
        ssh = ssh_options(host, hv)
        known_hosts = str(hv.get("easytask_known_hosts") or self.known_hosts or "") or None
        base = SSHTarget(ssh.host, ssh.port, ssh.user, ssh.key_file, known_hosts)
        base = replace(base, client_key=options.ssh_keys.get(host))
        jump: SSHTarget | None = None
        for hop in ssh.jumps:
            jump = replace(base, host=hop.host, port=hop.port, user=hop.user, jump=jump)
        return replace(base, jump=jump)

    async def file_connection(
        self, run: Run, hostvars: dict[str, Any], options: JobOptions
    ) -> SSHClientConnection | None:
        """A connection for SFTP to the run's host, or None (the run is then recorded as ended)."""
        assert run.id is not None
        if run.connection == "agent":
            live = self.inflight.live[run.id]
            info = await self.dispatcher.wait_agent(run, live, options.pending_timeout, False)
            if info is None or info is OFFER:  # no offer asked: never handed over
                return None
            await self.registry.release(run.host)
            assert info.link is not None
            return info.link.conn
        if run.connection == LOCAL:
            why = "copy, script and fetch are not available on the server's own host (local)"
            await self.recorder.finish(run, RunState.FAILED, reason=f"host {run.host!r}: {why}")
            return None
        target = self._ssh_target(run.host, hostvars, options)
        await self.recorder.update(
            run, RunState.DISPATCHED, "dispatched", f"ssh {target.host}:{target.port}"
        )
        try:
            return await self.pool.get(target)
        except ConnectError as exc:
            await self.recorder.finish(run, RunState.UNREACHABLE, reason=str(exc))
            return None

    # -- one command, streamed -----------------------------------------------------------------

    async def _stream(
        self,
        run: Run,
        live: LiveRun,
        options: JobOptions,
        conn: SSHClientConnection | LocalHost | AgentLink,
        command: str,
        env: dict[str, str],
        out: RunOutput,
        terminate: Callable[[float], Any],
        attach: bool = False,
        dispatched: asyncio.Future[None] | None = None,
        stdin: bytes = b"",
        local_key: str = "",
        dialog: SuDialog | None = None,
    ) -> Outcome:
        """Run (or re-attach to) one command and stream its output; kill or time it out if asked.
        `dispatched`: the storing of the run's dispatch, awaited before it is marked started.
        On the server's own host (`LocalHost`), `local_key` names the run's process group."""
        assert run.id is not None
        paused = [False]
        execution: Started | None = None

        def on_data(stream: str, data: bytes) -> None:
            if dialog is not None and not (data := dialog.feed(data)):
                return  # su's dialogue, never stored
            out.data(stream, data)
            if (
                not paused[0]
                and execution is not None
                # the writer's buffer is full (a slow or absent database): stop reading this
                # run's channel; SSH flow control holds the rest in the agent's spool
                and self.writer.over()
            ):
                chan = execution.channel
                if chan is not None:
                    paused[0] = True
                    chan.pause_reading()
                    self._background(
                        self._resume_when_drained(execution, paused), f"resume-{run.id}"
                    )

        started = time.monotonic()
        try:
            if isinstance(conn, LocalHost):
                execution = await conn.start(local_key, command, on_data, stdin)
            elif isinstance(conn, AgentLink):  # one request on its control session
                execution = await linkrun.start(conn, command, on_data, env)
            else:
                modes = SU_TERM_MODES if dialog is not None else None
                execution = await executor.start(conn, command, on_data, env, stdin, modes)
                if dialog is not None:
                    dialog.attach(execution.channel)
        except Exception as exc:
            if dispatched is not None:
                await dispatched
            if attach:
                return Outcome(result=ExecResult(lost=True, error=str(exc)))
            return Outcome(state=RunState.FAILED, reason=f"could not start: {exc}")
        # Stored while the command runs, after its dispatch (the run states are stored in the
        # order they are asked for); waited for before the run's end is recorded.
        marked: asyncio.Future[None] | None = None
        if not attach:
            marked = self.recorder.update_soon(
                run, RunState.RUNNING, "started", "", started_at=utcnow()
            )
        elif dispatched is not None:
            await dispatched
        reason = ""
        try:
            if await ended_or_stopped(execution.ended, live.kill, options.timeout):
                result = await execution.wait()
            else:
                if live.kill.is_set():
                    reason = f"killed by {live.killed_by}"
                else:
                    reason = f"timeout after {run_timeout_text(options)}"
                out.system(f"terminating: {reason}", "WARN")
                await self.recorder.event(run, "terminating", reason)
                try:
                    await terminate(options.grace)
                except Exception as exc:
                    out.system(f"terminate failed: {exc}", "ERROR")
                try:
                    async with asyncio.timeout(options.grace + 10):
                        result = await execution.wait()
                except TimeoutError:
                    execution.close()
                    try:
                        async with asyncio.timeout(10):
                            result = await execution.wait()
                    except TimeoutError:  # the far side never closed: stop waiting for it
                        result = ExecResult(lost=True, error="no answer after terminate")
        finally:
            execution.close()
            if marked is not None:
                if dispatched is not None:
                    await dispatched
                await marked
        return Outcome(result=result, reason=reason, duration=time.monotonic() - started)

    async def _resume_when_drained(self, execution: Started, paused: list[bool]) -> None:
        await self.writer.wait_below()
        paused[0] = False
        chan = execution.channel
        if chan is not None:
            chan.resume_reading()


def _agent_terminator(link: AgentLink, key: str, live: LiveRun) -> Callable[[float], Any]:
    """Ask the agent to TERM, then KILL, the run's process group."""

    def terminate(grace: float) -> Any:
        return link.request(
            "cancel", run=key, grace=grace, by=live.killed_by or "timeout", timeout=grace + 15
        )

    return terminate
