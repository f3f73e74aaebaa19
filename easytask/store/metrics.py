"""Host metrics: agents' samples stored once each, rolled up by the minute, read back by time;
a part of `Store`.

Raw samples (`hostmetric`) are keyed by (agent, time): a sample sent twice (a link dropped
before the agent heard it was stored) is stored once. Samples older than the raw retention are
folded into one row per agent and minute (`hostmetric_rollup`: count, min, average and max of
each field) and deleted; a late sample whose minute was rolled up already is folded into it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import text

from easytask.hostsample import FIELDS
from easytask.store.base import Queries

# One row to store: agent, t, then the values in FIELDS order.
SampleRow = tuple[Any, ...]
KINDS = ("min", "avg", "max")
# PostgreSQL: the advisory lock one fold holds, so servers sharing a database never fold the same
# samples at once (both would count them in their minute)
ROLLUP_LOCK = 0x686D_726F  # "hmro"
_COLUMNS = ", ".join(FIELDS)


@functools.cache
def _insert_sql() -> str:
    names = ("agent", "t", *FIELDS)
    values = ", ".join(f":{n}" for n in names)
    return f"INSERT INTO hostmetric ({', '.join(names)}) VALUES ({values}) ON CONFLICT DO NOTHING"


def _minute(sqlite: bool, column: str = "t") -> str:
    """The start of a time's minute, in SQL (both floor it: times are positive)."""
    if sqlite:
        return f"CAST({column} / 60 AS INTEGER) * 60.0"
    return f"floor({column} / 60) * 60.0"


@functools.cache
def _rollup_sql(sqlite: bool) -> str:
    low, high = ("min", "max") if sqlite else ("least", "greatest")
    target = ", ".join(f"{f}_{k}" for f in FIELDS for k in KINDS)
    aggregates = ", ".join(f"{k}({f})" for f in FIELDS for k in KINDS)
    merged = ["n = hostmetric_rollup.n + excluded.n"]
    for f in FIELDS:
        old, new = f"hostmetric_rollup.{f}", f"excluded.{f}"
        merged.append(
            f"{f}_min = {low}(coalesce({old}_min, {new}_min), coalesce({new}_min, {old}_min))"
        )
        merged.append(
            f"{f}_max = {high}(coalesce({old}_max, {new}_max), coalesce({new}_max, {old}_max))"
        )
        # weighted by the rows' counts (a field a sample lacked counts as it does in avg: not)
        merged.append(
            f"{f}_avg = CASE WHEN {old}_avg IS NULL THEN {new}_avg "
            f"WHEN {new}_avg IS NULL THEN {old}_avg "
            f"ELSE ({old}_avg * hostmetric_rollup.n + {new}_avg * excluded.n) "
            f"/ (hostmetric_rollup.n + excluded.n) END"
        )
    return (
        f"INSERT INTO hostmetric_rollup (agent, t, n, {target}) "
        f"SELECT agent, {_minute(sqlite)} AS minute, count(*), {aggregates} "
        f"FROM hostmetric WHERE t < :before GROUP BY agent, minute "
        f"ON CONFLICT (agent, t) DO UPDATE SET {', '.join(merged)}"
    )


class MetricQueries(Queries):
    """The Store's queries on host samples (mixed into `Store`; called on the database thread)."""

    is_sqlite: bool

    def write_host_samples(self, rows: Sequence[SampleRow]) -> None:
        """Store samples in one transaction; one already stored (same agent and time) is kept."""
        if not rows:
            return
        names = ("agent", "t", *FIELDS)
        params = [dict(zip(names, row, strict=True)) for row in rows]
        with self.engine.begin() as conn:
            conn.execute(text(_insert_sql()), params)

    def host_samples(self, agent: str, since: float, until: float) -> list[tuple[Any, ...]]:
        """An agent's raw samples from `since` to `until`: rows (t, *FIELDS) by time."""
        sql = (
            f"SELECT t, {_COLUMNS} FROM hostmetric "
            "WHERE agent = :agent AND t >= :since AND t <= :until ORDER BY t"
        )
        with self.engine.connect() as conn:
            found = conn.execute(text(sql), {"agent": agent, "since": since, "until": until})
            return [tuple(row) for row in found]

    def host_minutes(self, agent: str, since: float, until: float) -> list[tuple[Any, ...]]:
        """An agent's samples from `since` to `until` one row per minute: (minute, count,
        *averages), from the rollups and the raw samples not rolled up yet, by time."""
        start = since - since % 60
        averages = ", ".join(f"{f}_avg" for f in FIELDS)
        rolled = (
            f"SELECT t, n, {averages} FROM hostmetric_rollup "
            "WHERE agent = :agent AND t >= :start AND t <= :until"
        )
        minute = _minute(self.is_sqlite)
        raw = (
            f"SELECT {minute} AS minute, count(*), {', '.join(f'avg({f})' for f in FIELDS)} "
            "FROM hostmetric WHERE agent = :agent AND t >= :start AND t <= :until "
            "GROUP BY minute"
        )
        args = {"agent": agent, "start": start, "until": until}
        with self.engine.connect() as conn:
            rows = [tuple(r) for r in conn.execute(text(rolled), args)]
            rows += [tuple(r) for r in conn.execute(text(raw), args)]
        merged: dict[float, list[Any]] = {}
        for row in rows:
            t, n, values = float(row[0]), int(row[1]), list(row[2:])
            have = merged.get(t)
            if have is None:
                merged[t] = [t, n, *values]
                continue
            total = have[1] + n
            for i, value in enumerate(values):
                old = have[2 + i]
                if value is not None:
                    have[2 + i] = value if old is None else (old * have[1] + value * n) / total
            have[1] = total
        return [tuple(merged[t]) for t in sorted(merged)]

    def recent_host_cpu(self, since: float) -> dict[str, list[tuple[float, float | None]]]:
        """Every agent's CPU from `since` on, one point per minute (its average, at the
        minute's start) from the rollups and the raw samples not rolled up yet, by name then
        time; an agent without a sample since then is left out."""
        start = since - since % 60
        minute = _minute(self.is_sqlite)
        rolled = (
            "SELECT agent, t, n, cpu_avg FROM hostmetric_rollup WHERE t >= :start ORDER BY agent, t"
        )
        raw = (
            f"SELECT agent, {minute} AS minute, count(*), avg(cpu) FROM hostmetric "
            "WHERE t >= :start GROUP BY agent, minute"
        )
        merged: dict[str, dict[float, tuple[int, float | None]]] = {}
        with self.engine.connect() as conn:
            rows = [tuple(r) for r in conn.execute(text(rolled), {"start": start})]
            rows += [tuple(r) for r in conn.execute(text(raw), {"start": start})]
        for agent, t, n, cpu in rows:
            minutes = merged.setdefault(str(agent), {})
            t, n = float(t), int(n)
            have = minutes.get(t)
            if have is None or have[1] is None:
                minutes[t] = (n if have is None else have[0] + n, cpu)
            elif cpu is not None:
                total = have[0] + n
                minutes[t] = (total, (have[1] * have[0] + float(cpu) * n) / total)
        return {
            agent: [(t, minutes[t][1]) for t in sorted(minutes)]
            for agent, minutes in sorted(merged.items())
        }

    def latest_host_samples(self, since: float) -> dict[str, tuple[Any, ...]]:
        """Each known agent's newest sample taken from `since` on: name -> (t, *FIELDS)."""
        sql = (
            f"SELECT h.agent, h.t, {', '.join('h.' + f for f in FIELDS)} "
            "FROM agent a JOIN hostmetric h ON h.agent = a.name AND h.t = "
            "(SELECT max(x.t) FROM hostmetric x WHERE x.agent = a.name) "
            "WHERE h.t >= :since ORDER BY h.agent"
        )
        with self.engine.connect() as conn:
            return {row[0]: tuple(row[1:]) for row in conn.execute(text(sql), {"since": since})}

    def rollup_host_samples(self, before: float) -> int:
        """Fold the raw samples taken before `before` into their minutes and delete them, in
        one transaction; the number of samples folded (0 while another server folds)."""
        with self.engine.begin() as conn:
            if not self.is_sqlite:
                lock = text("SELECT pg_try_advisory_xact_lock(:key)")
                if not conn.execute(lock, {"key": ROLLUP_LOCK}).scalar():
                    return 0
            conn.execute(text(_rollup_sql(self.is_sqlite)), {"before": before})
            gone = conn.execute(
                text("DELETE FROM hostmetric WHERE t < :before"), {"before": before}
            )
            return int(gone.rowcount or 0)

    def prune_host_rollups(self, before: float, dry_run: bool = False) -> int:
        """Delete (or with dry_run count) the minutes of host samples before `before`."""
        with self.engine.begin() as conn:
            if dry_run:
                found = conn.execute(
                    text("SELECT count(*) FROM hostmetric_rollup WHERE t < :before"),
                    {"before": before},
                )
                return int(found.scalar() or 0)
            gone = conn.execute(
                text("DELETE FROM hostmetric_rollup WHERE t < :before"), {"before": before}
            )
            return int(gone.rowcount or 0)

    def count_host_samples(self, agent: str | None = None) -> int:
        """How many raw samples are stored (of one agent, or of all)."""
        sql = "SELECT count(*) FROM hostmetric" + (" WHERE agent = :agent" if agent else "")
        with self.engine.connect() as conn:
            return int(conn.execute(text(sql), {"agent": agent}).scalar() or 0)
