"""A playbook and an inventory -> the runs of a job: hosts, serial batches, dependencies (pure code).

The engine takes the `PlaybookPlan` made here (`plan/playbookplan.py`): every `TaskRun` with the
runs it waits for and its batch, and renders each command when the run starts (`render_action`),
with the results of earlier runs.
`check_playbook` renders everything up front for `easytask play --check`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from easytask.errors import NoHostsMatched, PatternError, UsageError
from easytask.plan.adhoc import HostSource
from easytask.plan.become import BecomeRequest, agentless_refusal, resolve_become, task_request
from easytask.plan.connection import connection_of, connection_warnings
from easytask.plan.loops import LoopItem, loop_items
from easytask.plan.playbookplan import PlannedTask, PlaybookPlan, RunKey, TaskRun
from easytask.playbook import RESERVED_VARS, TAG, Playbook, Task

__all__ = [
    "plan_playbook",
    "plan_runs",
    "serial_batches",
    "stop_after_batch",
    "tag_names",
    "tag_selected",
]


def plan_playbook(
    playbook: Playbook,
    inventory: HostSource,
    *,
    extra_vars: Mapping[str, Any] | None = None,
    limit: str | None = None,
    tags: Sequence[str] = (),
    skip_tags: Sequence[str] = (),
    become: BecomeRequest | None = None,
    runs: bool = True,
) -> PlaybookPlan:
    """Plan a playbook on an inventory; raises NoHostsMatched if the play selects no host.

    `become` is the command line's (`play -b`): the play's and the tasks' keys go over it.
    `runs=False` leaves the runs out (`plan.runs` is empty) for `plan_runs` to add: that renders
    the tasks' loops, which a server does in a thread, off its event loop.

    The inventory's `magic_vars(host)` (inventory_hostname, group_names, groups, ...) are used
    too when it has that method. Planning is deterministic: the same playbook, inventory, extra
    vars, limit and tags give the same plan, so a job can be planned again from what it stored.
    A task that `--tags`/`--skip-tags` leave out has no runs (see `tag_selected`).
    """
    extra = dict(extra_vars or {})
    for name in RESERVED_VARS:
        if name in extra:
            raise UsageError(f"-e {name}=...: the variable name {name!r} is reserved")
    allowed = set(inventory.select(limit)) if limit else None
    try:
        selected = inventory.select(playbook.hosts)
    except PatternError as exc:
        raise type(exc)(exc.message, location=playbook.at("hosts")) from None
    play_hosts = tuple(h for h in selected if allowed is None or h in allowed)
    if not play_hosts:
        raise NoHostsMatched(
            f"no host of the play ({playbook.hosts}) is in --limit {limit}",
            location=playbook.at("hosts"),
        )
    tasks = [
        _planned_task(t, play_hosts, inventory, allowed)
        if tag_selected(t.tags, tags, skip_tags)
        else _planned_task(t, (), inventory, set())
        for t in _dependency_order(playbook)
    ]
    batches = serial_batches(play_hosts, playbook.serial)
    host_vars: dict[str, dict[str, Any]] = {}
    connections: dict[str, str] = {}
    magic = getattr(inventory, "magic_vars", None)
    agents: frozenset[str] = getattr(inventory, "agent_hosts", frozenset())
    allow_local = bool(getattr(inventory, "local_allowed", False))
    for task in tasks:
        for host in task.hosts:
            if host not in host_vars:
                values = dict(magic(host)) if callable(magic) else {}
                values.update(inventory.host_vars(host))
                connections[host] = connection_of(host, values, agents, allow_local)
                host_vars[host] = values
    for task in tasks:
        for host in task.hosts:
            values = host_vars[host]
            request = task_request(playbook, task.task, become)
            as_user = resolve_become(host, values, request)
            refusal = (
                agentless_refusal(host, as_user, connections[host])
                if connections[host] != "agent"
                else None
            )
            if refusal:
                raise UsageError(f"task {task.name!r}: {refusal}", location=task.location)
    plan = PlaybookPlan(
        playbook=playbook,
        hosts=play_hosts,
        tasks=tuple(tasks),
        runs=(),
        batches=batches,
        host_vars=host_vars,
        extra_vars=extra,
        limit=limit,
        tags=tuple(tags),
        skip_tags=tuple(skip_tags),
        connections=connections,
        warnings=tuple(connection_warnings(host_vars, connections)),
        become=become or BecomeRequest(),
    )
    return plan_runs(plan) if runs else plan


def plan_runs(plan: PlaybookPlan) -> PlaybookPlan:
    """The plan with its runs: per task, per host, per item of a loop (rendered here, so a
    PlaybookError for a loop that gives no list, see `loop_items`)."""
    return replace(plan, runs=tuple(_runs(list(plan.tasks), plan.batches, loop_items(plan))))


def tag_names(value: Any, option: str) -> tuple[str, ...]:
    """`--tags a,b` (a text of names separated by commas, or a list) as tag names.

    UsageError naming the option and the bad name for anything else; None and "" give none.
    """
    if value is None or value == "":
        return ()
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise UsageError(f"{option} must be tag names separated by commas, or a list of them")
    names = [i.strip() for i in items]
    for name in names:
        if not TAG.fullmatch(name):
            raise UsageError(f"{option}: bad tag {name!r} (letters, digits and . _ - only)")
    return tuple(dict.fromkeys(names))


def tag_selected(task_tags: Sequence[str], tags: Sequence[str], skip_tags: Sequence[str]) -> bool:
    """Whether a task with these tags runs under `--tags`/`--skip-tags`, by Ansible's rules.

    `--skip-tags` wins. A task tagged `always` runs unless `always` is skipped; one tagged `never`
    runs only when one of its other tags is asked for. `all` (every task but `never` ones),
    `tagged` and `untagged` are the special names of both options.
    """
    mine = set(task_tags)
    skip = set(skip_tags)
    if mine & skip or ("tagged" in skip and mine) or ("untagged" in skip and not mine):
        return False
    if not tags:
        return "never" not in mine
    want = set(tags)
    if "always" in mine:
        return True
    if "never" not in mine and (
        "all" in want or ("tagged" in want and mine) or ("untagged" in want and not mine)
    ):
        return True
    return bool(mine & want)


def _dependency_order(playbook: Playbook) -> list[Task]:
    """Tasks so that each comes after those it needs; otherwise in file order."""
    done: set[str] = set()
    order: list[Task] = []
    waiting = list(playbook.tasks)
    while waiting:
        ready = next(t for t in waiting if all(n in done for n in t.needs))
        waiting.remove(ready)
        done.add(ready.name)
        order.append(ready)
    return order


def _planned_task(
    task: Task, play_hosts: tuple[str, ...], inventory: HostSource, allowed: set[str] | None
) -> PlannedTask:
    if task.hosts is None:
        hosts = play_hosts
    else:
        try:
            selected = inventory.select(task.hosts)
        except NoHostsMatched:
            selected = []
        except PatternError as exc:
            raise PatternError(exc.message, location=task.at("hosts")) from None
        hosts = tuple(h for h in selected if allowed is None or h in allowed)
    return PlannedTask(
        name=task.name,
        kind=task.kind,
        action=task.action,
        hosts=hosts,
        needs=task.needs,
        needs_implied=task.needs_implied,
        when=task.when,
        timeout=task.timeout,
        retries=task.retries,
        retry_delay=task.retry_delay,
        retry_backoff=task.retry_backoff,
        run_on_any=task.run_on_any,
        run_once=task.run_once,
        env=dict(task.env),
        cwd=task.cwd,
        location=task.location,
        task=task,
        loop=task.loop,
    )


def _runs(
    tasks: list[PlannedTask],
    batches: tuple[tuple[str, ...], ...],
    items: Mapping[tuple[str, str | None], list[LoopItem]],
) -> list[TaskRun]:
    """Every run: per task, per host (one for a single task), per item of a loop in order."""
    batch_of = {h: i for i, batch in enumerate(batches) for h in batch}
    by_task: dict[str, list[RunKey]] = {}
    # task -> host (None: a `run_on: any` run) -> its runs, one per item for a loop, in order
    per_host: dict[str, dict[str | None, list[RunKey]]] = {}
    last_batch: dict[str, int] = {}  # the latest batch among a task's runs
    batch_of_run: dict[RunKey, int] = {}
    ancestors: dict[str, list[str]] = {}
    single = {t.name: t.single for t in tasks}
    waits_for: dict[str, list[str]] = {}  # what a task waits for, through tasks without runs
    runs: list[TaskRun] = []
    for task in tasks:
        waits_for[task.name] = list(
            dict.fromkeys(w for n in task.needs for w in ([n] if by_task[n] else waits_for[n]))
        )
        ancestors[task.name] = list(
            dict.fromkeys(a for n in task.needs for a in (*ancestors[n], n))
        )
        units: list[str | None]
        if not task.hosts:
            units = []
        elif task.run_on_any:
            units = [None]
        elif task.run_once:
            units = [task.hosts[0]]
        else:
            units = list(task.hosts)
        mine: dict[str | None, list[RunKey]] = {}
        for host in units:
            needs: list[RunKey] = []
            # A run goes in its host's batch; a single run (once, any) in the first one.
            batch = 0 if task.single else batch_of.get(host or "", 0)
            for need in waits_for[task.name]:
                same = per_host[need].get(host)
                if not task.single and same:
                    needs.extend(same)
                    batch = max(batch, *(batch_of_run[k] for k in same))
                else:  # it runs elsewhere (or once): wait for all its runs
                    needs.extend(by_task[need])
                    batch = max(batch, last_batch[need])
            results_from: dict[str, tuple[RunKey, ...]] = {}
            for earlier in ancestors[task.name]:
                if host is not None and host in per_host[earlier]:
                    results_from[earlier] = tuple(per_host[earlier][host])
                elif single[earlier] and by_task[earlier]:
                    results_from[earlier] = tuple(by_task[earlier])
            at_run = task.loop is not None and task.loop.at_run
            listed = (
                items.get((task.name, host), []) if task.loop is not None and not at_run else None
            )
            keys: list[RunKey] = []
            variants: list[LoopItem | None] = [*listed] if listed else [None]
            for item in variants:
                run = TaskRun(
                    task=task.name,
                    host=host,
                    candidates=task.hosts if host is None else (host,),
                    batch=batch,
                    # an item waits for the item before it on its host, as in Ansible
                    needs=tuple(dict.fromkeys([*needs, *keys[-1:]])),
                    results_from=results_from,
                    item=item,
                    empty_loop=listed == [],
                    at_run=at_run,
                )
                runs.append(run)
                keys.append(run.key)
                batch_of_run[run.key] = batch
            mine[host] = keys
        per_host[task.name] = mine
        by_task[task.name] = [k for keys in mine.values() for k in keys]
        last_batch[task.name] = max((batch_of_run[k] for k in by_task[task.name]), default=0)
    return runs


def serial_batches(
    hosts: Sequence[str], serial: Sequence[int | str]
) -> tuple[tuple[str, ...], ...]:
    """Split hosts into rolling batches as Ansible's `serial` does.

    Each value is a number of hosts or a percentage of all the play's hosts (rounded down, at
    least 1); the last value repeats; 0 or no serial at all means one batch of every host.
    """
    left = list(hosts)
    sizes = list(serial) or [0]
    batches: list[tuple[str, ...]] = []
    index = 0
    while left:
        size = _batch_size(sizes[index], len(hosts))
        if size <= 0:
            batches.append(tuple(left))
            break
        batches.append(tuple(left[:size]))
        left = left[size:]
        index = min(index + 1, len(sizes) - 1)
    return tuple(batches)


def _batch_size(value: int | str, total: int) -> int:
    if isinstance(value, str) and value.endswith("%"):
        return int(int(value[:-1]) / 100.0 * total) or 1
    return int(value)


def stop_after_batch(failed: int, size: int, max_fail_percentage: float | None) -> bool:
    """Whether a play stops after a batch in which `failed` of `size` hosts failed.

    With `max_fail_percentage`, when more than that share failed (so 0 stops at the first
    failure); without it, only when every host of the batch failed (as Ansible does).
    """
    if size <= 0 or failed <= 0:
        return False
    if max_fail_percentage is None:
        return failed >= size
    return failed * 100 > max_fail_percentage * size
