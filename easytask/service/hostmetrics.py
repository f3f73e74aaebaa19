"""Reading an agent's host samples: one time range as columns, raw where kept, else by minute."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from easytask.errors import APIError
from easytask.hostsample import FIELDS, columns
from easytask.scheduler.hello import stored_facts
from easytask.service.context import Services
from easytask.service.reading import Reader
from easytask.store.models import User

RESOLUTIONS = ("auto", "raw", "minute")
RAW_SPAN = 6 * 3600.0  # `auto` answers raw samples for ranges up to this, minutes beyond
MAX_SPAN = 92 * 86400.0  # the longest range one request may ask for
LATEST_AGE = 300.0  # seconds: an older newest sample is no current gauge


def parse_time(value: str | None, name: str, default: float) -> float:
    """An ISO 8601 time (UTC unless it names its zone) or epoch seconds; 400 naming `name`."""
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(value)
    except ValueError as exc:
        raise APIError(f"{name}: not an ISO 8601 time or epoch seconds: {value!r}") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


async def agent_metrics(
    services: Services,
    user: User,
    name: str,
    since: str | None = None,
    until: str | None = None,
    resolution: str | None = None,
) -> dict[str, Any]:
    """An agent's samples from `since` (default: an hour before `until`) to `until` (default:
    now) as columns: raw samples where they are kept and the range is at most six hours
    (`resolution=auto`), one-minute averages before them and for longer ranges."""
    now = time.time()
    end = parse_time(until, "until", now)
    start = parse_time(since, "since", end - 3600.0)
    resolution = resolution or "auto"
    if resolution not in RESOLUTIONS:
        raise APIError(f"resolution: must be one of {', '.join(RESOLUTIONS)}, got {resolution!r}")
    if start > end:
        raise APIError("since: must not be after until")
    if end - start > MAX_SPAN:
        raise APIError(f"since: at most {int(MAX_SPAN // 86400)} days before until")
    store = services.store
    row = await store.call(store.get_agent, name)
    if row is None or not (await Reader.of(services, user)).sees(name):
        raise APIError(f"no agent {name!r}", status=404)  # outside the scope: not found either
    info = services.registry.agents.get(name)
    facts = info.facts if info is not None and info.facts else stored_facts(row.facts)
    if resolution == "auto":
        resolution = "raw" if end - start <= RAW_SPAN else "minute"
    rows: list[tuple[Any, ...]]
    if resolution == "raw":
        raw = await store.call(store.host_samples, name, start, end)
        cut = raw[0][0] if raw else end
        minutes = await store.call(store.host_minutes, name, start, cut)
        # the minutes wholly in the range before its first raw sample, at their start (count
        # left out): a minute begun before `since` holds samples from before it
        rows = [(m[0], *m[2:]) for m in minutes if m[0] >= start and m[0] + 60 <= cut] + raw
        shown = "raw" if len(rows) == len(raw) else "mixed"
    else:
        minutes = await store.call(store.host_minutes, name, start, end)
        rows = [(m[0], *m[2:]) for m in minutes]
        shown = "minute"
    data = columns(rows)
    return {
        "agent": name,
        "cpus": facts.get("cpus"),
        "since": _iso(start),
        "until": _iso(end),
        "resolution": shown,
        **data,
    }


async def latest_samples(services: Services) -> dict[str, dict[str, Any]]:
    """Each agent's newest sample of the last five minutes, by name: {t, *FIELDS}."""
    store = services.store
    found = await store.call(store.latest_host_samples, time.time() - LATEST_AGE)
    return {name: dict(zip(("t", *FIELDS), row, strict=True)) for name, row in found.items()}


RECENT_MINUTES = (1, 1440)  # the range of `minutes` GET /api/agents/metrics/recent accepts


async def recent_cpu(services: Services, user: User, minutes: str | None) -> dict[str, Any]:
    """Every agent's CPU over the last `minutes` (default 60) for the agents page's sparklines,
    in one answer: a point per minute (its average) then the newest sample. Agents outside the
    user may not read are left out, as they are from the agents list (one `Reader`)."""
    low, high = RECENT_MINUTES
    try:
        span = int(minutes) if minutes not in (None, "") else 60
    except ValueError:
        span = 0
    if not low <= span <= high:
        raise APIError(f"minutes: a whole number from {low} to {high}, got {minutes!r}")
    now = time.time()
    since = now - span * 60.0
    store = services.store
    reader = await Reader.of(services, user)
    names = [view.row.name for view in await reader.agents()]
    by_minute = await store.call(store.recent_host_cpu, since)
    latest = await store.call(store.latest_host_samples, since)
    cpu_at = 1 + FIELDS.index("cpu")
    agents: dict[str, dict[str, list[Any]]] = {}
    for name in names:
        points = [(max(t, since), cpu) for t, cpu in by_minute.get(name, [])]
        newest = latest.get(name)
        if newest is not None and (not points or float(newest[0]) > points[-1][0]):
            points.append((float(newest[0]), newest[cpu_at]))
        agents[name] = {"t": [p[0] for p in points], "cpu": [p[1] for p in points]}
    return {"minutes": span, "since": _iso(since), "until": _iso(now), "agents": agents}
