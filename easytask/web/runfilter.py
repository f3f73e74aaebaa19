"""The runs list's filters and keyset pages, read the same way by `/api/runs` and the console."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.datastructures import QueryParams

from easytask.durations import parse_duration
from easytask.errors import APIError
from easytask.service.reading import Reader
from easytask.store.models import Job, Run, RunState
from easytask.web.requests import MAX_ID, id_number

# The filters that narrow the list (kept in every page link), in the order forms show them.
FILTERS = ("since", "until", "task", "host", "user", "q")


def parse_time(value: str | None) -> datetime | None:
    """An ISO date/time (UTC unless it says otherwise) or a duration meaning that long ago (`2h`)."""
    value = (value or "").strip()
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise APIError(
                f"not a time or duration: {value!r} (use 2024-05-01T10:00 or 2h)"
            ) from exc
        return datetime.now(UTC) - timedelta(seconds=seconds)
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _opt_int(params: QueryParams, name: str) -> int | None:
    value = (params.get(name) or "").strip()
    if not value:
        return None
    try:
        return id_number(value, name)
    except ValueError as exc:
        raise APIError(
            f"{name} must be a run id (a number from 1 to {MAX_ID}), not {value!r}"
        ) from exc


@dataclass(frozen=True)
class RunQuery:
    """One request for a page of runs: filters as typed, the job, a keyset cursor and a size."""

    filters: dict[str, str] = field(default_factory=dict)
    statuses: list[str] = field(default_factory=list)
    job: int | None = None
    before: int | None = None
    after: int | None = None
    limit: int = 50

    @classmethod
    def from_params(
        cls, params: QueryParams, default_limit: int, max_limit: int, jobs: bool = False
    ) -> RunQuery:
        """Read a query string; `status` may repeat and hold comma lists (with `jobs`, a job's
        own states such as `awaiting approval` too). Bad input: APIError."""
        statuses: list[str] = []
        for value in params.getlist("status"):
            statuses += [s.strip() for s in value.split(",") if s.strip()]
        known = RunState.ALL + RunState.JOB_ONLY if jobs else RunState.ALL
        bad = [s for s in statuses if s not in known]
        if bad:
            raise APIError(f"unknown status {bad[0]!r}; use one of {', '.join(known)}")
        filters = {name: (params.get(name) or "").strip() for name in FILTERS}
        filters["q"] = params.get("q") or ""  # a phrase: inner spacing is kept as typed
        raw_limit = (params.get("limit") or "").strip()
        try:
            limit = int(raw_limit) if raw_limit else default_limit
        except ValueError as exc:
            raise APIError(f"limit must be a number, not {raw_limit!r}") from exc
        if limit < 1:
            raise APIError(f"limit must be at least 1, not {limit}")
        query = cls(
            filters=filters,
            statuses=statuses,
            job=_opt_int(params, "job"),
            before=_opt_int(params, "before"),
            after=_opt_int(params, "after"),
            limit=min(limit, max_limit),
        )
        if query.before is not None and query.after is not None:
            raise APIError("give before or after, not both")
        return query

    def store_args(self) -> dict[str, Any]:
        """Keyword arguments of `Store.find_runs` (one row more than a page, to see if more exist)."""
        f = self.filters
        return {
            "since": parse_time(f.get("since")),
            "until": parse_time(f.get("until")),
            "status": self.statuses or None,
            "host": f.get("host") or None,
            "task": f.get("task") or None,
            "user": f.get("user") or None,
            "text": (f.get("q") or "").strip() or None,
            "job_id": self.job,
            "before_id": self.before,
            "after_id": self.after,
            "limit": self.limit + 1,
        }

    def link_params(self, explicit_limit: bool = True) -> list[tuple[str, str]]:
        """The filters as query parameters (no cursor), for links to other pages."""
        out = [(k, v) for k, v in self.filters.items() if v]
        out += [("status", s) for s in self.statuses]
        if self.job is not None:
            out.append(("job", str(self.job)))
        if explicit_limit:
            out.append(("limit", str(self.limit)))
        return out


@dataclass
class RunPage:
    """A page of runs (newest first) with who submitted each, and the cursors next to it."""

    rows: list[tuple[Run, str]]
    newer_after: int | None  # pass as `after` for the page of newer runs; None: this is the newest
    older_before: int | None  # pass as `before` for the page of older runs; None: nothing older


async def find_runs(reader: Reader, query: RunQuery) -> RunPage:
    """The page of runs a query asks for, of those the reader may see (output searched after
    pending lines are stored)."""
    args = query.store_args()
    if args["text"]:
        await reader.services.writer.flush()
    rows = await reader.find_runs(**args)
    more = len(rows) > query.limit
    if more:
        rows = rows[1:] if query.after is not None else rows[: query.limit]
    if not rows:
        return RunPage(rows, None, None)
    has_newer = more if query.after is not None else query.before is not None
    has_older = more if query.after is None else True
    return RunPage(
        rows,
        newer_after=rows[0][0].id if has_newer else None,
        older_before=rows[-1][0].id if has_older else None,
    )


JOB_KINDS = ("adhoc", "playbook", "schedule")


@dataclass
class JobPage:
    """A page of jobs (newest first) and the cursors next to it, as `RunPage`."""

    rows: list[Job]
    newer_after: int | None
    older_before: int | None


def job_kind(params: QueryParams) -> str | None:
    """The `kind` filter of the jobs list (adhoc, playbook or schedule), checked."""
    kind = (params.get("kind") or "").strip()
    if kind and kind not in JOB_KINDS:
        raise APIError(f"unknown kind {kind!r}; use one of {', '.join(JOB_KINDS)}")
    return kind or None


async def find_jobs(reader: Reader, query: RunQuery, kind: str | None = None) -> JobPage:
    """The page of jobs a query asks for, of those with a run the reader may see: the runs
    list's filters (`status` is the job's state; `task` its name, command or playbook, or a
    task of it; `host` and `q` a run of it), newest first, keyset pages by id."""
    args = query.store_args()
    del args["job_id"]
    if args["text"]:
        await reader.services.writer.flush()
    rows = await reader.find_jobs(**args, kind=kind)
    more = len(rows) > query.limit
    if more:
        rows = rows[1:] if query.after is not None else rows[: query.limit]
    if not rows:
        return JobPage(rows, None, None)
    has_newer = more if query.after is not None else query.before is not None
    has_older = more if query.after is None else True
    return JobPage(
        rows,
        newer_after=rows[0].id if has_newer else None,
        older_before=rows[-1].id if has_older else None,
    )
