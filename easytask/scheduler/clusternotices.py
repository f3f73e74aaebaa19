"""What the servers on one database tell each other at once, over one `LISTEN/NOTIFY` channel
(mixed into `Cluster`).

Notices are queued and sent in order by one task, packed into as few notifications as fit:
offers, kill requests, run and job state changes for the viewers on the other servers (each
sent after the notice of the lines stored before it), agents whose state changed (read again
together), and the line ranges just stored, which a server whose viewers watch that run reads
from the database and publishes to them. `RunControl` is what the cluster asks of this
server's engine.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from typing import Any, Protocol

from easytask.scheduler import events
from easytask.scheduler.agents import AgentRegistry
from easytask.scheduler.hub import LiveHub
from easytask.scheduler.logwriter import LogWriter
from easytask.store import servers as rows
from easytask.store.db import Store
from easytask.store.lines import LogRow
from easytask.store.models import Run, RunState

log = logging.getLogger("easytask.server")

CHANNEL = "easytask"
MAX_PAYLOAD = 7000  # PostgreSQL's limit is 8000 bytes


class RunControl(Protocol):
    """What the cluster asks of this server's engine: its runs in flight, kills, claimed runs."""

    def live_run(self, run_id: int) -> Run | None:
        """A run in flight on this server."""

    def kill_run(self, run_id: int, by: str, *, local: bool = False) -> bool:
        """Ask a run in flight to terminate."""

    def kill_job(self, job_id: int, by: str, *, local: bool = False) -> int:
        """Terminate every run of a job in flight."""

    def killed_by(self, run_id: int) -> str:
        """Who asked a run in flight here to terminate."""

    def executes_here(self, run: Run, claimed: bool = False) -> bool:
        """This server executes the run itself."""

    def execute_claimed(self, runs: list[Run], details: rows.ClaimDetails) -> None:
        """Execute runs of other servers' jobs, claimed here (their jobs and become users)."""


class Notices:
    """Notices to and from the other servers (mixed into `Cluster`, which starts the tasks)."""

    store: Store
    engine: RunControl
    registry: AgentRegistry
    hub: LiveHub
    node: str
    writer: LogWriter | None
    _outbox: asyncio.Queue[str]
    _offer_queued: bool
    _listening: asyncio.Event
    _deferred: deque[tuple[int, dict[str, Any], list[str]]]
    _stale: set[str]
    _reloader: asyncio.Task[None] | None

    def _claim_all(self) -> None:
        raise NotImplementedError

    def _wake(self, run_id: int) -> None:
        raise NotImplementedError

    def notify(self, kind: str, **data: Any) -> None:
        """Tell the other servers something (sent in order by one task; never blocks)."""
        if kind == "offer":
            if self._offer_queued:
                return  # one notice wakes every claim loop; the runs are found in the database
            self._offer_queued = True
        payload = json.dumps({"k": kind, "s": self.node, **data}, separators=(",", ":"))
        if len(payload.encode()) > MAX_PAYLOAD:
            log.warning("cluster notice %s too large (%d bytes); not sent", kind, len(payload))
            return
        self._outbox.put_nowait(payload)

    def relay(self, event: dict[str, Any], topics: tuple[str, ...]) -> None:
        """Publish a state event to the viewers on the other servers too."""
        if event.get("t") == "run" and event.get("state") in RunState.FINAL:
            self._wake(int(event["run"]))  # a run claimed here, followed here by its job
        if len(event.get("reason") or "") > 1000:
            event = {**event, "reason": event["reason"][:1000] + "…"}
        writer = self.writer
        if writer is not None:
            mark = writer.total_written + writer.backlog
            if self._deferred or mark > writer.total_written:
                # sent after the notice of the lines stored before it (in order): a viewer on
                # another server gets a run's last lines before its end
                self._deferred.append((mark, event, list(topics)))
                return
        self.notify("hub", e=event, t=list(topics))

    def _release(self) -> None:
        """Send the state events whose lines are now stored and announced."""
        stored = self.writer.total_written if self.writer is not None else 0
        while self._deferred and self._deferred[0][0] <= stored:
            _, event, topics = self._deferred.popleft()
            self.notify("hub", e=event, t=topics)

    def lines_written(self, batch: list[LogRow]) -> None:
        """After a batch of lines is stored: tell the others which line ranges they can read."""
        ranges: dict[int, list[Any]] = {}
        for row in batch:
            run_id, seq = row[0], row[1]
            span = ranges.get(run_id)
            if span is None:
                run = self.engine.live_run(run_id)
                if run is None:
                    continue
                ranges[run_id] = [run_id, run.job_id, run.host, seq, seq]
            else:
                span[4] = seq
        chunk: list[list[Any]] = []
        size = 0
        for span in ranges.values():
            chunk.append(span)
            size += len(span[2]) + 40
            if size > MAX_PAYLOAD - 500:
                self.notify("lines", r=chunk)
                chunk, size = [], 0
        if chunk:
            self.notify("lines", r=chunk)
        self._release()

    async def _send(self) -> None:
        import psycopg

        conn: Any = None
        while True:
            # what queued up meanwhile goes in one statement (in order: one transaction)
            notes = [await self._outbox.get()]
            while not self._outbox.empty() and len(notes) < 2000:
                notes.append(self._outbox.get_nowait())
            self._offer_queued = False
            payloads = self._pack(notes)
            while True:
                try:
                    if conn is None or conn.closed:
                        conn = await psycopg.AsyncConnection.connect(
                            self._conninfo(), autocommit=True
                        )
                    # the array in binary: the text form escapes every payload character by
                    # character (a tenth of a server's CPU in a fan-out across servers)
                    await conn.execute(
                        "SELECT pg_notify(%s, p) FROM unnest(%b::text[]) WITH ORDINALITY AS t(p, i)"
                        " ORDER BY i",
                        (CHANNEL, payloads),
                    )
                    break
                except asyncio.CancelledError:
                    if conn is not None:
                        await conn.close()
                    raise
                except Exception as exc:
                    log.warning("cluster notice not sent (%s); retrying", exc)
                    conn = None
                    await asyncio.sleep(1)

    def _pack(self, notes: list[str]) -> list[str]:
        """Notices in as few notifications as fit (in order): a fan-out tells the others of
        thousands of state changes, and each notification costs every server to receive."""
        head = json.dumps({"k": "many", "s": self.node, "m": []}, separators=(",", ":"))[:-2]
        room = MAX_PAYLOAD - len(head.encode()) - 2
        out: list[str] = []
        group: list[str] = []
        size = 0
        for note in notes:
            n = len(note.encode()) + 1
            if group and size + n > room:
                out.append(group[0] if len(group) == 1 else head + ",".join(group) + "]}")
                group, size = [], 0
            group.append(note)
            size += n
        if group:
            out.append(group[0] if len(group) == 1 else head + ",".join(group) + "]}")
        return out

    async def _listen(self) -> None:
        import psycopg

        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._conninfo(), autocommit=True
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self._listening.set()
                    # anything missed while not listening: look for offers now
                    self._claim_all()
                    async for note in conn.notifies():
                        try:
                            await self._received(json.loads(note.payload))
                        except Exception:
                            log.exception("cluster notice not handled: %.200s", note.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cluster listener lost its connection (%s); reconnecting", exc)
                await asyncio.sleep(1)

    def _conninfo(self) -> str:
        url = self.store.engine.url.set(drivername="postgresql")
        return url.render_as_string(hide_password=False)

    async def _received(self, note: dict[str, Any]) -> None:
        if note.get("s") == self.node:
            return
        kind = note.get("k")
        if kind == "many":
            for one in note["m"]:
                await self._received(one)
        elif kind == "offer":
            self._claim_all()
        elif kind == "hub":
            event, topics = note["e"], tuple(note["t"])
            self.hub.publish(event, *topics)
            if event.get("t") == "run" and event.get("state") in RunState.FINAL:
                self._wake(int(event["run"]))
        elif kind == "lines":
            await self._relay_lines(note["r"])
        elif kind == "kill":
            by = str(note.get("by") or "?")
            if note.get("run"):
                self.engine.kill_run(int(note["run"]), by, local=True)
            if note.get("job"):
                self.engine.kill_job(int(note["job"]), by, local=True)
        elif kind == "agent":
            self._stale.add(str(note.get("name")))
            if self._reloader is None or self._reloader.done():
                self._reloader = asyncio.create_task(self._reload_stale(), name="cluster-agents")

    async def _reload_stale(self) -> None:
        """Read again the agents other servers changed, those told meanwhile in the same query
        (a fleet enrolling on the other servers: thousands of notices, one read each before,
        the listener waiting on every one and the fleet's newest agents unknown here for long)."""
        while self._stale:
            await asyncio.sleep(0)  # the rest of this notification's notices first
            names, self._stale = sorted(self._stale), set()
            try:
                found = await self.store.call(self.store.get_agents, names)
            except Exception as exc:
                log.warning(
                    "could not read %d agents changed on other servers: %s", len(names), exc
                )
                self._stale.update(names)
                await asyncio.sleep(2)
                continue
            for name in names:
                self.registry.refresh(name, found.get(name))

    async def _relay_lines(self, spans: list[list[Any]]) -> None:
        for run_id, job_id, host, first, last in spans:
            topics = (f"run:{run_id}", f"job:{job_id}")
            if not self.hub.watched(*topics):
                continue
            lines = await self.store.call(
                self.store.read_lines, run_id, after_seq=first - 1, limit=last - first + 1
            )
            for row in lines:
                event = events.line(run_id, host, row.seq, row.ts, row.stream, row.level, row.text)
                self.hub.publish(event, *topics)
