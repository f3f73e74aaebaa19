"""A planned playbook job: its tasks and runs, each run's key (the types planning makes, pure code).

`plan_playbook` makes a `PlaybookPlan`; the engine takes it: every `TaskRun` with the runs it
waits for and its batch, the template variables on each host (`PlaybookPlan.context`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NamedTuple

from easytask.errors import SourceLocation
from easytask.plan.become import BecomeRequest, task_request
from easytask.plan.connection import connection_of
from easytask.plan.loops import LoopItem, item_run_name
from easytask.playbook import Action, Loop, Playbook, Task
from easytask.templating import Vars

__all__ = ["PlannedTask", "PlaybookPlan", "RunKey", "TaskRun"]


class RunKey(NamedTuple):
    """A run of a job: a task on a host (host None: a `run_on: any` run, placed when it starts).

    `task` is the run's name: the task's, or for an item of a loop `task (item=label)`."""

    task: str
    host: str | None


@dataclass(frozen=True)
class PlannedTask:
    """A task as it runs in this job: its hosts after --limit, and its settings with the defaults."""

    name: str
    kind: str  # command | shell | script | copy
    action: Action
    hosts: tuple[str, ...]  # where it runs (per host), or the hosts it may run on (once, any)
    needs: tuple[str, ...]
    needs_implied: bool  # the task above, since the task names no `needs`
    when: str | None
    timeout: float | None
    retries: int
    retry_delay: float
    retry_backoff: float
    run_on_any: bool
    run_once: bool
    env: Mapping[str, str]
    cwd: str | None
    location: SourceLocation
    task: Task = field(repr=False)
    loop: Loop | None = None  # one run per item (see LoopItem)

    @property
    def single(self) -> bool:
        """Whether the task runs once in all rather than once per host."""
        return self.run_once or self.run_on_any

    def retry_wait(self, attempt: int) -> float:
        """Seconds to wait before attempt `attempt` (2, 3, ...): retry_delay × retry_backoff^(n-2)."""
        return self.retry_delay * self.retry_backoff ** max(attempt - 2, 0)


@dataclass(frozen=True)
class TaskRun:
    """One run to queue: its task and host, its batch, the runs it waits for, whose results it sees.

    `candidates` are the hosts a `run_on: any` run may go to (the host itself otherwise).
    `results_from` maps each task whose `results.<task>` this run may read to the runs that
    provide them: the run of that task on the same host (every item's, for a loop), or the
    task's single run. `item` is the run's item of its task's loop; `empty_loop`: the loop
    gave no item on this host, so this run stands for the task, skipped. `at_run`: the loop
    uses results, so this run stands for the task until its items are rendered on the host
    (when its needs have ended), and then for its first item (see `run_items`).
    """

    task: str
    host: str | None
    candidates: tuple[str, ...]
    batch: int
    needs: tuple[RunKey, ...]
    results_from: Mapping[str, tuple[RunKey, ...]] = field(default_factory=dict)
    item: LoopItem | None = None
    empty_loop: bool = False
    at_run: bool = False

    @property
    def name(self) -> str:
        """The run's name (its row's `task`): the task's, `task (item=label)` for an item."""
        return self.task if self.item is None else item_run_name(self.task, self.item.shown)

    @property
    def key(self) -> RunKey:
        """(name, host) of this run."""
        return RunKey(self.name, self.host)


@dataclass(frozen=True)
class PlaybookPlan:
    """A planned playbook job: tasks in dependency order and every run, in order."""

    playbook: Playbook
    hosts: tuple[str, ...]  # the play's hosts after --limit
    tasks: tuple[PlannedTask, ...]  # in dependency order (file order among equals)
    runs: tuple[TaskRun, ...]  # in task order, then host order
    batches: tuple[tuple[str, ...], ...]
    host_vars: Mapping[str, Mapping[str, Any]] = field(repr=False)  # inventory + magic vars
    extra_vars: Mapping[str, Any] = field(default_factory=dict)
    limit: str | None = None
    tags: tuple[str, ...] = ()  # --tags: only tasks with one of these (Ansible's rules)
    skip_tags: tuple[str, ...] = ()  # --skip-tags
    credentials: tuple[str, ...] = ()  # secret vars the credential store gave (their names)
    connections: Mapping[str, str] = field(default_factory=dict)  # host -> agent | ssh
    warnings: tuple[str, ...] = ()  # connection variables of its hosts that are not honoured
    become: BecomeRequest = field(default_factory=BecomeRequest)  # `play -b --become-user U`

    @property
    def name(self) -> str:
        """The playbook's name."""
        return self.playbook.name

    @property
    def all_hosts(self) -> tuple[str, ...]:
        """Every host the job may run on: the play's and each task's (run_on any candidates too)."""
        hosts = list(self.hosts)
        for task in self.tasks:
            hosts += task.hosts
        for run in self.runs:
            hosts += run.candidates
        return tuple(dict.fromkeys(hosts))

    @property
    def forks(self) -> int | None:
        """At most this many runs at once (None: no limit of the playbook's own)."""
        return self.playbook.forks

    @property
    def max_fail_percentage(self) -> float | None:
        """See `stop_after_batch`."""
        return self.playbook.max_fail_percentage

    def become_request(self, task: PlannedTask) -> BecomeRequest:
        """Whom a task's runs ask to become: the command line's, the play's, the task's (the
        host's inventory variables go over it, see `resolve_become`)."""
        return task_request(self.playbook, task.task, self.become)

    def task(self, name: str) -> PlannedTask:
        """The planned task of that name (KeyError if none)."""
        for task in self.tasks:
            if task.name == name:
                return task
        raise KeyError(name)

    def run(self, key: RunKey) -> TaskRun:
        """The run with that key (KeyError if none)."""
        return self._run_index[key]

    @cached_property
    def _run_index(self) -> dict[RunKey, TaskRun]:
        return {run.key: run for run in self.runs}

    def connection(self, host: str) -> str:
        """How a host is reached: `agent`, `ssh` or `local` (see `connection_of`), as planned."""
        if host in self.connections:
            return self.connections[host]
        return connection_of(host, dict(self.host_vars.get(host, {})))

    def context(
        self,
        host: str,
        results: Mapping[str, Any] | None = None,
        facts: Mapping[str, Any] | None = None,
        item: Mapping[str, Any] | None = None,
    ) -> Vars:
        """The template variables on a host: facts < inventory and magic vars < play vars <
        extra vars < the loop's item.

        `results` (task name -> `task_result(...)`) is there as-is, never rendered. `facts` are
        an agentless host's fact variables gathered for the job (an agent's are among its
        magic vars already). `item` is a loop item's variable (see `item_vars`), already
        rendered when the job was planned.
        """
        base = {**(facts or {}), **self.host_vars.get(host, {})}
        base.setdefault("inventory_hostname", host)
        base.update(playbook_dir=self.playbook.base_dir, ansible_play_hosts=list(self.hosts))
        literal = {"results": results if results is not None else {}, **(item or {})}
        return Vars(base, self.playbook.vars, self.extra_vars, literal=literal)

    def item_vars(self, run: TaskRun) -> dict[str, Any]:
        """The loop variable of a run of a loop's item (`item`, or the task's `loop_var`)."""
        loop = self.task(run.task).loop
        if run.item is None or loop is None:
            return {}
        return {loop.loop_var: run.item.value}
