"""What a user may read: jobs, runs, their logs and counts, and agents, limited to the hosts of
their scope.

Every door that reads jobs or runs (console pages, the API, SSE streams, exports, the
dashboard's counts) asks a `Reader` made for its user, so a scope limits what its user sees in
this one place. A job or run outside the scope is "not found" (404), never "forbidden": its id
tells nothing. Admins and users without a scope read everything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from easytask.errors import APIError
from easytask.service.agents import AgentView, list_agents
from easytask.service.context import Services
from easytask.service.scope import scope_hosts
from easytask.store.models import Job, JobApproval, Run, RunState, User


@dataclass(frozen=True)
class Reader:
    """One user's view of the store's jobs and runs."""

    services: Services
    user: User
    hosts: frozenset[str] | None  # the hosts the user may read; None: every host

    @classmethod
    async def of(cls, services: Services, user: User) -> Reader:
        """The view of `user`: the hosts their scope selects now (all for an admin)."""
        hosts = None if user.role == "admin" else await scope_hosts(services, user)
        return cls(services, user, hosts)

    @property
    def scoped(self) -> bool:
        """Whether this view hides some hosts."""
        return self.hosts is not None

    def sees(self, host: str) -> bool:
        """Whether the user may read runs on `host`."""
        return self.hosts is None or host in self.hosts

    async def agents(self) -> list[AgentView]:
        """The agents whose host the user may read, by name, with their live status."""
        return [view for view in await list_agents(self.services) if self.sees(view.row.name)]

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        store = self.services.store
        return await store.call(getattr(store, method), *args, hosts=self.hosts, **kwargs)

    async def run(self, run_id: int) -> Run:
        """One run (404 when there is none, or it is on a host the user may not read)."""
        store = self.services.store
        run = await store.call(store.get_run, run_id)
        if run is None or not self.sees(run.host):
            raise APIError(f"no run {run_id}", status=404)
        return run

    async def job(self, job_id: int) -> tuple[Job, list[Run]]:
        """A job and the runs of it the user may read (404 when there is no such job, or
        none of its runs is on a host the user may read and the user did not submit it: a
        launch awaiting approval has no runs yet, and its requester still sees it)."""
        store = self.services.store
        job = await store.call(store.get_job, job_id)
        runs = await self.job_runs(job_id) if job is not None else []
        return self._found(job_id, job, bool(runs)), runs

    async def job_rows(
        self, job_id: int
    ) -> tuple[Job, list[Any], dict[int, str], dict[int, set[str]]]:
        """`job` with its runs as `Store.job_run_rows` reads them (rows, not model objects),
        whom each ran as and their marks."""
        store = self.services.store
        job = await store.call(store.get_job, job_id)
        rows: list[Any] = []
        ran_as: dict[int, str] = {}
        marks: dict[int, set[str]] = {}
        if job is not None:
            rows, ran_as, marks = await self._call("job_run_rows", job_id)
        return self._found(job_id, job, bool(rows)), rows, ran_as, marks

    def _found(self, job_id: int, job: Job | None, any_runs: bool) -> Job:
        """The job, or a 404 if there is none or the user may read none of its runs and did
        not submit it."""
        own = job is not None and job.submitted_by == self.user.name
        if job is None or (self.scoped and not any_runs and not own):
            raise APIError(f"no job {job_id}", status=404)
        return job

    async def job_runs(self, job_id: int) -> list[Run]:
        """The runs of a job the user may read, in order of submission."""
        rows: list[Run] = await self._call("job_runs", job_id)
        return rows

    async def find_runs(self, **filters: Any) -> list[tuple[Run, str]]:
        """`Store.find_runs` over the runs the user may read."""
        rows: list[tuple[Run, str]] = await self._call("find_runs", **filters)
        return rows

    async def find_jobs(self, **filters: Any) -> list[Job]:
        """`Store.find_jobs` over the jobs with a run the user may read."""
        rows: list[Job] = await self._call("find_jobs", **filters)
        return rows

    async def list_jobs(self, *, states: Sequence[str] | None = None, limit: int = 20) -> list[Job]:
        """The newest jobs with a run the user may read."""
        rows: list[Job] = await self._call("list_jobs", states=states, limit=limit)
        return rows

    async def awaiting_approval(self, limit: int = 20) -> list[Job]:
        """Launches awaiting approval the user may see: all of them, or for a user with a scope
        their own (such a job has no runs to judge its hosts by)."""
        store = self.services.store
        rows: list[Job] = await store.call(
            store.list_jobs, states=[RunState.AWAITING_APPROVAL], limit=limit
        )
        return [j for j in rows if not self.scoped or j.submitted_by == self.user.name]

    def sees_approval(self, approval: JobApproval) -> bool:
        """Whether the user may see an approval request (what it would run, on which hosts):
        every one, or for a user with a scope their own, as `awaiting_approval`."""
        return not self.scoped or approval.requested_by == self.user.name

    async def job_state_counts(self, job_ids: Sequence[int]) -> dict[int, dict[str, int]]:
        """Per job, how many of the runs the user may read are in each state."""
        counts: dict[int, dict[str, int]] = await self._call("job_state_counts", job_ids)
        return counts

    async def run_state_counts(self) -> dict[str, int]:
        """How many of the runs the user may read are in each state."""
        counts: dict[str, int] = await self._call("run_state_counts")
        return counts

    async def job_stream_start(
        self, job_id: int, runs: bool, limit: int
    ) -> tuple[list[Run], dict[int, str], list[Any], Job | None]:
        """`Store.job_stream_start` over the runs the user may read."""
        start: tuple[list[Run], dict[int, str], list[Any], Job | None] = await self._call(
            "job_stream_start", job_id, runs, limit
        )
        return start

    async def job_lines(self, job_id: int, after_id: int, limit: int) -> list[Any]:
        """`Store.read_job_lines` over the runs the user may read."""
        rows: list[Any] = await self._call("read_job_lines", job_id, after_id, limit)
        return rows
