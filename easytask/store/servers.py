"""What servers sharing one database record about each other: heartbeats, hand-offs, take-overs.

Each function runs on the store's database thread (`store.call(fn, store, ...)`).  A run's
`server` column says which server executes it; a server hands a run to whichever server holds
the run's agent by setting it to OFFERED, and that server claims it with a row lock
(`FOR UPDATE SKIP LOCKED` on PostgreSQL), so two servers never both take it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, update
from sqlmodel import Session, col, select

from easytask.store.db import Store
from easytask.store.models import (
    OFFERED,
    Agent,
    Job,
    Run,
    RunEvent,
    RunState,
    ServerNode,
    as_utc,
    utcnow,
)
from easytask.store.runs import BECOME

FINAL = list(RunState.FINAL)


def heartbeat(store: Store, node: str, *, first: bool = False, **fields: str) -> bool:
    """Record that a server is alive; False when its row is gone (others took over its work)."""
    with store.session() as s:
        row = s.get(ServerNode, node)
        if row is None:
            if not first:
                return False
            row = ServerNode(id=node)
        if first:
            row.started_at = utcnow()
            for key, value in fields.items():
                setattr(row, key, value)
        row.seen_at = utcnow()
        s.add(row)
        s.commit()
        return True


def leave(store: Store, node: str) -> None:
    """A server stops: its heartbeat is marked old at once, so another takes its work now."""
    with store.session() as s:
        row = s.get(ServerNode, node)
        if row is not None:
            row.seen_at = datetime(1970, 1, 1, tzinfo=row.started_at.tzinfo)
            s.add(row)
            s.commit()


def nodes(store: Store) -> list[ServerNode]:
    """Every server row, by id."""
    with store.session() as s:
        return list(s.exec(select(ServerNode).order_by(col(ServerNode.id))))


def alive(row: ServerNode, dead_after: float) -> bool:
    """The server's heartbeat is recent enough."""
    return utcnow() - as_utc(row.seen_at) <= timedelta(seconds=dead_after)


def holders(store: Store, dead_after: float) -> dict[str, str]:
    """Agent name -> the live server that holds its link now."""
    with store.session() as s:
        found = s.exec(
            select(Agent.name, ServerNode)
            .join(ServerNode, col(Agent.server) == col(ServerNode.id))
            .where(col(Agent.connected))
        )
        return {name: node.id for name, node in found if alive(node, dead_after)}


def states(store: Store, run_ids: Sequence[int]) -> list[tuple[int, str, str]]:
    """(id, state, server) of these runs."""
    out: list[tuple[int, str, str]] = []
    with store.session() as s:
        for start in range(0, len(run_ids), 1000):
            chunk = list(run_ids[start : start + 1000])
            q = select(Run.id, Run.state, Run.server).where(col(Run.id).in_(chunk))
            out += [(int(i or 0), st, srv) for i, st, srv in s.exec(q)]
    return out


def offer(store: Store, run_id: int, node: str) -> bool:
    """Hand a run this server executes to whichever server holds its agent."""
    return _move(store, run_id, (node, ""), OFFERED)


def offer_many(store: Store, run_ids: Sequence[int], node: str) -> set[int]:
    """`offer` for many runs in one statement: the ids of those handed over (a run that
    ended, or that is not this server's, is not)."""
    done: set[int] = set()
    with store.engine.begin() as conn:
        for start in range(0, len(run_ids), 1000):
            chunk = list(run_ids[start : start + 1000])
            found = conn.execute(
                update(Run)
                .where(
                    col(Run.id).in_(chunk),
                    col(Run.server).in_([node, ""]),
                    col(Run.state).not_in(FINAL),
                )
                .values(server=OFFERED)
                .returning(col(Run.id))
            )
            done.update(int(i or 0) for i in found.scalars())
    return done


def runs(store: Store, run_ids: Sequence[int]) -> dict[int, Run]:
    """These runs as stored, by id (one query for a fan-out's worth)."""
    out: dict[int, Run] = {}
    with store.session() as s:
        for start in range(0, len(run_ids), 1000):
            chunk = list(run_ids[start : start + 1000])
            for run in s.exec(select(Run).where(col(Run.id).in_(chunk))):
                out[run.id or 0] = run
    return out


def retract(store: Store, run_id: int, node: str) -> bool:
    """Take back a run nobody claimed; False when a server claimed it meanwhile."""
    return _move(store, run_id, (OFFERED,), node)


def _move(store: Store, run_id: int, from_: Sequence[str], to: str) -> bool:
    with store.engine.begin() as conn:
        done = conn.execute(
            update(Run)
            .where(
                and_(
                    col(Run.id) == run_id,
                    col(Run.server).in_(list(from_)),
                    col(Run.state).not_in(FINAL),
                )
            )
            .values(server=to)
        ).rowcount
    return bool(done)


def _claim(store: Store, s: Session, agents: Sequence[str], node: str, limit: int) -> list[Run]:
    offered = (
        select(Run.id)
        .where(
            col(Run.server) == OFFERED,
            col(Run.agent).in_(list(agents)),
            col(Run.state).not_in(FINAL),
        )
        .order_by(col(Run.id))
        .limit(limit)
    )
    if not store.is_sqlite:
        offered = offered.with_for_update(skip_locked=True)
    taken = s.scalars(
        update(Run)
        .where(col(Run.id).in_(offered.scalar_subquery()), col(Run.server) == OFFERED)
        .values(server=node)
        .returning(Run),
        execution_options={"synchronize_session": False},
    ).all()
    return sorted(taken, key=lambda run: run.id or 0)


@dataclass
class ClaimDetails:
    """What a server needs to execute runs it claimed: their jobs, and whom each run's job's
    server resolved it to become (its BECOME event), by run id."""

    jobs: dict[int, Job]
    become: dict[int, str]


def _details(s: Session, claimed: Sequence[Run]) -> ClaimDetails:
    ids = [run.id for run in claimed if run.id is not None]
    job_ids = sorted({run.job_id for run in claimed})
    become: dict[int, str] = {}
    jobs = {job.id or 0: job for job in s.exec(select(Job).where(col(Job.id).in_(job_ids)))}
    for start in range(0, len(ids), 1000):
        q = (
            select(RunEvent.run_id, RunEvent.detail)
            .where(col(RunEvent.run_id).in_(ids[start : start + 1000]), RunEvent.kind == BECOME)
            .order_by(col(RunEvent.id))
        )
        for run_id, detail in s.exec(q):
            become[run_id] = detail  # the last one asked
    return ClaimDetails(jobs, become)


def claim(
    store: Store, agents: Sequence[str], node: str, limit: int = 500
) -> tuple[list[Run], ClaimDetails]:
    """Offered runs of these agents, now this server's to execute (row locks; no run twice),
    with their jobs and become users: one statement for the claim, two queries for the rest,
    in one transaction (the claim stands only with them read) and one call on the database
    thread (the claimed runs start without waiting in its queue a second time)."""
    if not agents:
        return [], ClaimDetails({}, {})
    with store.session() as s:
        taken = _claim(store, s, agents, node, limit)
        details = _details(s, taken) if taken else ClaimDetails({}, {})
        s.commit()
        return taken, details


@dataclass
class TakeOver:
    """What a server took over from one that stopped."""

    server: str
    jobs: list[int]
    offered: int
    runs: int


def take_over(store: Store, node: str, dead_after: float) -> list[TakeOver]:
    """Take the jobs of every server whose heartbeat stopped, and offer their runs in flight.

    A dead server's unfinished jobs become this server's. Its runs that had not started and
    belong to those jobs are executed here; every other run it executed (started ones, and runs
    it had claimed for other servers' jobs) is offered to whichever server holds the agent,
    which re-attaches to the command the agent kept running.  One server wins each dead one.
    """
    cutoff = utcnow() - timedelta(seconds=dead_after)
    taken: list[TakeOver] = []
    with store.session() as s:
        q = select(ServerNode).where(col(ServerNode.id) != node, col(ServerNode.seen_at) < cutoff)
        if not store.is_sqlite:
            q = q.with_for_update(skip_locked=True)
        for dead in list(s.exec(q)):
            jobs = list(
                s.exec(select(Job.id).where(Job.server == dead.id, col(Job.state).not_in(FINAL)))
            )
            s.exec(update(Job).where(col(Job.id).in_(jobs)).values(server=node))
            runs = list(
                s.exec(select(Run).where(Run.server == dead.id, col(Run.state).not_in(FINAL)))
            )
            offered = 0
            for run in runs:
                mine = run.job_id in jobs and (
                    run.state == RunState.QUEUED or run.connection != "agent"
                )
                run.server = node if mine else OFFERED
                offered += not mine
                s.add(run)
            s.exec(delete(ServerNode).where(col(ServerNode.id) == dead.id))
            taken.append(TakeOver(dead.id, [j for j in jobs if j is not None], offered, len(runs)))
        s.commit()
    return taken


def orphaned_claims(store: Store, node: str) -> int:
    """At start: runs this server had claimed for other servers' jobs go back on offer."""
    with store.engine.begin() as conn:
        mine = select(Job.id).where(Job.server == node)
        return int(
            conn.execute(
                update(Run)
                .where(
                    col(Run.server) == node,
                    col(Run.state).not_in(FINAL),
                    col(Run.job_id).not_in(mine),
                )
                .values(server=OFFERED)
            ).rowcount
        )
