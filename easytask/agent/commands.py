"""The server's commands on an agent: each run started once, its output and its end sent back.

Two ways in, one run. A command comes on an SSH session of its own (`Commands.exec`: the
command is the session's, its output the session's data, its end the exit status: the way
agentless hosts are reached too, and the way a server re-attaches to a run after a lost link),
or as a `run` request on the link's control session (`Commands.control_run`, offered in the
hello as `CONTROL_RUN_FEATURE`): one message each way for a short command instead of a
channel's open, request, exit status and close. Its reply carries the output so far and, when
the command ended within the wait, its end; else `running` and the last output record sent,
after which the server re-attaches on a session of its own (flow control, live output).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncssh

from easytask.agent.policy import Policy, quoteless
from easytask.agent.runner import CHUNK, Runner
from easytask.agent.spool import RecordReader
from easytask.masking import lift_exports
from easytask.transport.executor import STATS_SIGNAL, split_env_header

log = logging.getLogger("easytask.agent")

REPLY_WAIT = 0.05  # seconds after its first output a `run` request is answered at the latest
REPLY_BYTES = 16384  # output bytes a `run` reply carries at most (the rest: re-attached)


@dataclass
class Ended:
    """A run that ended before it started: what to tell the server, and how it ended."""

    message: str  # for the run's stderr
    exit_code: int | None = None  # a bad request
    refused: str = ""  # the policy's reason (the run's exit record says so)

    def exit_record(self) -> dict[str, Any]:
        if self.refused:
            return {"exit_code": None, "signal": None, "refused": self.refused}
        return {"exit_code": self.exit_code}


def reported_end(info: dict[str, Any]) -> dict[str, Any]:
    """How a run ended, as the server reads it: `stats` (the whole exit record: counts to
    record, or a refusal), a `signal`, or an exit `code` (255 when the record has none)."""
    if info.get("dropped_lines") or info.get("lost") or info.get("refused"):
        return {"stats": info}
    if info.get("signal"):
        return {"signal": str(info["signal"])}
    code = info.get("exit_code")
    return {"code": int(code) if code is not None else 255}


def encode_output(stream: str, data: bytes) -> list[str]:
    """One piece of output in a reply: `o`/`e` with its text when it is UTF-8, else `O`/`E`
    with its bytes in base64 (the server gets the exact bytes either way)."""
    tag = "e" if stream == "stderr" else "o"
    try:
        return [tag, data.decode()]
    except UnicodeDecodeError:
        return [tag.upper(), base64.b64encode(data).decode()]


class Commands:
    """Starts and follows the server's runs (see the module's docstring)."""

    def __init__(self, runner: Runner, policy: Policy, on_start: Callable[[], None]) -> None:
        self.runner = runner
        self.policy = policy
        self.on_start = on_start  # a run started (the host sampler looks closer)

    def take_acks(self, env: dict[str, str]) -> None:
        """Ended runs the server has stored, named by a command's `EASYTASK_ACK`: their spools
        may go."""
        if env.get("EASYTASK_ACK"):
            for done in str(env["EASYTASK_ACK"]).split(","):
                with contextlib.suppress(ValueError):
                    self.runner.ack(done)

    async def begin(self, env: dict[str, str], command: str) -> tuple[str, Ended | None]:
        """Start the run `env` names (once: a run whose spool exists is only followed); its
        key, and why it ended if it did not start."""
        # `EASYTASK_RUN=ID-ATTEMPT` (one SSH request), or the two variables it stands for
        run_id, _, attempt = str(env.get("EASYTASK_RUN", "")).partition("-")
        run_id = run_id or env.get("EASYTASK_RUN_ID", "")
        attempt = attempt or env.get("EASYTASK_ATTEMPT", "1")
        key = f"{run_id}-{attempt}" if run_id else f"adhoc-{time.time_ns()}"
        if not command:
            return key, Ended("easytask agent: no command given\n", exit_code=2)
        try:
            spool = self.runner.spool(key)
        except ValueError:
            return key, Ended(f"easytask agent: bad run id {run_id!r}\n", exit_code=2)
        if spool.exists():  # started before (a retried dispatch): never start it twice
            return key, None
        become = None
        reason = self.policy.refusal(command)
        if reason is None and env.get("EASYTASK_BECOME"):
            become, reason = self.policy.become(str(env["EASYTASK_BECOME"]))
        # runner.start makes the spool before it first awaits: no other start slips in
        # between this count and the run being counted
        if reason is None and self.runner.running >= self.policy.slots:
            reason = f"all {self.policy.slots} slots are in use (--slots)"
        if reason is not None:
            # the server masks the command's secrets in the run's record; this log, which
            # cannot tell them, never quotes the command
            log.warning("refused a run %s: %s", key, quoteless(reason))
            return key, Ended(f"easytask agent: refused: {reason}\n", refused=reason)
        extra = {"EASYTASK_RUN_ID": run_id, "EASYTASK_ATTEMPT": attempt} if run_id else {}
        # the secrets the server exports first go to the command's environment instead,
        # out of the shell's command line (which `ps` shows every user of this host)
        exported, command = lift_exports(command)
        try:
            await self.runner.start(key, command, {**exported, **extra}, become)
        except OSError as exc:
            return key, Ended(f"easytask agent: cannot start: {exc}\n", exit_code=127)
        self.on_start()
        return key, None

    # -- on the control session -------------------------------------------------------------

    async def control_run(self, req: dict[str, Any]) -> dict[str, Any]:
        """A `run` request: start the run, wait for its end (or `REPLY_WAIT` after its first
        output, or `REPLY_BYTES` of it) and answer with its output so far and its end, or with
        `running` and the seq of the last output record the reply carries."""
        env, command = req.get("env") or {}, req.get("command")
        if not isinstance(command, str) or not isinstance(env, dict):
            raise TypeError("a run needs a command (text) and env (an object)")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise TypeError("a run's env is an object of strings")
        self.take_acks(env)
        key, ended = await self.begin(env, command)
        if ended is not None:
            return {"out": [["e", ended.message]], "end": reported_end(ended.exit_record())}
        out: list[list[str]] = []
        size = 0
        reader = RecordReader()
        loop = asyncio.get_running_loop()
        first = 0.0
        follow = self.runner.follow(key, 0, reader, chunk=REPLY_BYTES)  # a batch: <= 16 KiB
        try:
            while size < REPLY_BYTES:
                if not first:
                    batch = await anext(follow)
                    first = loop.time()
                else:
                    async with asyncio.timeout_at(first + REPLY_WAIT):
                        batch = await anext(follow)
                for stream, data in batch:
                    out.append(encode_output(stream, data))
                    size += len(data)
        except StopAsyncIteration:  # the run ended: its exit record was read
            info = self.runner.exits.pop(key, None) or self.runner.spool(key).exit_info() or {}
            return {"out": out, "end": reported_end(info)}
        except TimeoutError:
            pass
        finally:
            await follow.aclose()
        self.runner.exits.pop(key, None)  # read, perhaps, but the re-attach sends it
        return {"out": out, "running": True, "seq": reader.last_seq}

    # -- on a session of its own ------------------------------------------------------------

    async def exec(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        """A command on a session: start it (or re-attach to it) and stream it."""
        env = dict(process.env)
        command = process.command or ""
        if not env:  # the variables may come on the command's first line (no `env` request)
            env, command = split_env_header(command)  # a bad one: ValueError, the session fails
        self.take_acks(env)
        attach = env.get("EASYTASK_ATTACH")
        if attach:
            try:
                after = int(env.get("EASYTASK_FROM_SEQ") or 0)
                known = self.runner.spool(attach).exists()
            except ValueError:
                known = False
            if not known:
                process.stderr.write(f"easytask agent: no run {attach!r} here\n".encode())
                process.exit(255)
                return
            await self.stream(process, attach, after)
            return
        key, ended = await self.begin(env, command)
        if ended is None:
            await self.stream(process, key, 0)
            return
        process.stderr.write(ended.message.encode())
        if ended.refused:
            process.exit_with_signal(STATS_SIGNAL, False, json.dumps(ended.exit_record()))
        else:
            process.exit(ended.exit_code if ended.exit_code is not None else 255)

    async def stream(self, process: asyncssh.SSHServerProcess[bytes], key: str, after: int) -> None:
        """Send a run's records after `after` in order, then its exit status."""
        drain_stdin = asyncio.create_task(_drain(process), name=f"stdin-{key}")
        try:
            async for batch in self.runner.follow(key, after):
                # consecutive records of one stream go out in one write, one drain per batch
                for stream, data in batch:
                    (process.stderr if stream == "stderr" else process.stdout).write(data)
                await process.stdout.drain()
                await process.stderr.drain()
        except (asyncssh.Error, OSError, BrokenPipeError):
            return  # the link went away; the run goes on and is re-attached later
        finally:
            drain_stdin.cancel()
            ended = self.runner.exits.pop(key, None)
        if process.is_closing():
            return
        info = ended or self.runner.spool(key).exit_info() or {}
        end = reported_end(info)
        if "stats" in end:  # counts the server must record: sent with the exit
            process.exit_with_signal(STATS_SIGNAL, False, json.dumps(info))
        elif "signal" in end:
            process.exit_with_signal(end["signal"])
        else:
            process.exit(end["code"])


async def _drain(process: asyncssh.SSHServerProcess[bytes]) -> None:
    """Read stdin so the session notices signals and the client's EOF."""
    try:
        while await process.stdin.read(CHUNK):
            pass
    except (asyncssh.Error, OSError):
        pass
