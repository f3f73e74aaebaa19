"""A command started on an agent's control session, not on an SSH session of its own.

An agent that offers it in its hello (`CONTROL_RUN_FEATURE`) takes a run as one `run` request
on the link's control session (`easytask.agent.commands`): one message each way where a session
costs a channel's open and its confirmation, the `exec` request and its reply, the exit status
and the close (each with the SSH_MSG_IGNORE asyncssh sends before every packet). The reply
carries the output so far and the run's end, for a command that ends soon after it starts;
for one that goes on (or prints much), `running` and the last output record it carried, and
the rest comes as a re-attach on a session of its own, with flow control and live output, as
after a lost link. `LinkExecution` is the same to its caller as `executor.Execution`.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import asyncssh

from easytask.loglines import STDERR, STDOUT
from easytask.transport import executor
from easytask.transport.executor import EXEC_HEADER_FEATURE, DataCallback, ExecResult

if TYPE_CHECKING:
    from easytask.transport.agentlink import AgentLink

CONTROL_RUN_FEATURE = "control-run"
RUN_OP = "run"
ATTACH_COMMAND = "easytask-attach"
_STREAMS = {"o": STDOUT, "e": STDERR, "O": STDOUT, "E": STDERR}


def take_end(result: ExecResult, end: Mapping[str, Any]) -> None:
    """A reply's `end` (see `easytask.agent.commands.reported_end`) into `result`: the exit
    code, the signal, or the agent's exit record (`stats`) with both inside, as the exit
    status of a session (`STATS_SIGNAL`) would say."""
    stats = end.get("stats")
    if isinstance(stats, dict):
        result.exit_code = stats.get("exit_code")
        result.signal = stats.get("signal")
        result.stats = stats
    elif end.get("signal"):
        result.signal = str(end["signal"])
    else:
        result.exit_code = int(end.get("code", 255))


def decode_output(piece: Any) -> tuple[str, bytes]:
    """One piece of a reply's output: (stream, its exact bytes)."""
    tag, text = piece
    data = base64.b64decode(text) if tag in ("O", "E") else str(text).encode()
    return _STREAMS[tag], data


class LinkExecution:
    """A run started with a `run` request; await `wait()` for its result."""

    def __init__(self, link: AgentLink, key: str, on_data: DataCallback) -> None:
        self._link = link
        self._key = key
        self._on_data = on_data
        self.result = ExecResult()
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._attached: executor.Execution | None = None
        self._attaching: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def ended(self) -> asyncio.Future[None]:
        """Done when the command ended or the link was lost (never cancel it)."""
        return self.done

    @property
    def channel(self) -> asyncssh.SSHClientChannel[bytes] | None:
        """The re-attached session's channel (flow control), once there is one."""
        return self._attached.channel if self._attached is not None else None

    async def wait(self) -> ExecResult:
        """Wait until the command ends or the link is lost."""
        if not self.done.done():
            await asyncio.shield(self.done)
        return self.result

    def close(self) -> None:
        """Stop following the run (the command keeps its own fate)."""
        self._closed = True
        if self._attached is not None:
            self._attached.close()
        elif self._attaching is not None:
            self._attaching.cancel()
        self._lost("closed before the agent answered")

    def _lost(self, error: str) -> None:
        if not self.done.done():
            self.result.lost = True
            self.result.error = error
            self.done.set_result(None)

    def replied(self, fut: asyncio.Future[dict[str, Any]]) -> None:
        """The agent's answer to the `run` request (or the control session's end)."""
        if self.done.done():
            return
        if fut.cancelled() or fut.exception() is not None:
            self._lost(str(fut.exception() or "the request was cancelled"))
            return
        reply = fut.result()
        try:
            if "error" in reply:  # a request this agent could not read: nothing ran
                self._on_data(STDERR, f"easytask agent: {reply['error']}\n".encode())
                take_end(self.result, {"code": 255})
                self.done.set_result(None)
                return
            for piece in reply.get("out") or ():
                self._on_data(*decode_output(piece))
            if isinstance(reply.get("end"), dict):
                take_end(self.result, reply["end"])
                self.done.set_result(None)
                return
            seq = int(reply["seq"])
        except Exception as exc:  # a bad answer: the run's state is asked for again
            self._lost(f"the agent's answer could not be taken: {exc}")
            return
        self._attaching = asyncio.create_task(self._attach(seq), name=f"attach-{self._key}")

    async def _attach(self, seq: int) -> None:
        """The rest of a run still going: on a session of its own, after record `seq`."""
        env = {"EASYTASK_ATTACH": self._key, "EASYTASK_FROM_SEQ": str(seq)}
        command = ATTACH_COMMAND
        if EXEC_HEADER_FEATURE in self._link.features:
            command, env = executor.env_header(env) + command, {}
        try:
            attached = await executor.start(self._link.conn, command, self._on_data, env)
        except Exception as exc:  # the link went away: the run is re-attached later
            self._lost(str(exc) or type(exc).__name__)
            return
        self._attached = attached
        if self._closed:
            attached.close()
        attached.ended.add_done_callback(lambda _: self._ended_attached(attached))

    def _ended_attached(self, attached: executor.Execution) -> None:
        if not self.done.done():
            self.result = attached.result
            self.done.set_result(None)


async def start(
    link: AgentLink, command: str, on_data: DataCallback, env: Mapping[str, str]
) -> LinkExecution:
    """Start the run `env` names (`EASYTASK_RUN`) on the agent with a `run` request; returns as
    soon as the request is sent. Output goes to `on_data` in order, as from `executor.start`."""
    execution = LinkExecution(link, str(env.get("EASYTASK_RUN", "")), on_data)
    reply = await link.control.send(RUN_OP, command=command, env=dict(env))
    reply.add_done_callback(execution.replied)
    return execution
