"""Loops: a task's `loop` items on a host, rendered when the job is planned (pure code).

Each item becomes its own run, named `task (item=label)` (see `item_run_name`), so the item
shows wherever runs show: the CLI, the console and `results.<task>` (see `loop_result`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from easytask.errors import PlaybookError, TemplateError
from easytask.masking import Masker
from easytask.playbook import Task
from easytask.templating import Vars, is_template, render
from easytask.templating import value as template_value
from easytask.vault import vault_values

__all__ = [
    "LABEL_WIDTH",
    "LOOP_SECONDS",
    "MAX_LOOP_ITEMS",
    "LoopItem",
    "host_items",
    "item_run_name",
    "loop_items",
    "run_items",
]

MAX_LOOP_ITEMS = 10_000  # items of one task's loop on one host
LOOP_SECONDS = 30.0  # time to render all the loops and labels of one job
LABEL_WIDTH = 80  # characters of an item's label in its run's name


@dataclass(frozen=True)
class LoopItem:
    """One item of a task's loop on a host: its place, its value and how it is shown.

    `shown` is the label in the run's name, with `#n` after it when another item of the same
    task on the same host has the same label."""

    index: int  # from 0, in the loop's order
    value: Any
    label: str
    shown: str


def item_run_name(task: str, shown: str) -> str:
    """The name of the run of one item of a loop, as Ansible shows an item: `task (item=x)`."""
    return f"{task} (item={shown})"


def host_items(
    task: Task,
    host: str,
    context_of: Callable[[Mapping[str, Any] | None], Vars],
    secrets: Sequence[str] = (),
    deadline: float | None = None,
) -> list[LoopItem]:
    """A task's loop items on a host: the list rendered with `context_of(None)` (the host's
    variables), each item's label with `context_of({loop_var: item})`; `secrets` never show.

    Raises PlaybookError at the task's `loop` (or `loop_control`) when the loop does not give
    a list, or gives more than MAX_LOOP_ITEMS, or a label cannot be rendered, or the labels go
    on past `deadline` (a time.monotonic() value)."""
    loop = task.loop
    assert loop is not None
    key = "with_items" if loop.flatten else "loop"
    what = f"task {task.name!r} on host {host!r}, {key}"
    context = context_of(None)
    try:
        if loop.template is not None:
            got = template_value(loop.template, context, what=what)
        else:
            got = [_rendered(v, context, what) for v in loop.items or ()]
    except TemplateError as exc:
        raise PlaybookError(exc.message, location=task.at(key)) from None
    if isinstance(got, tuple | range):
        got = list(got)
    if not isinstance(got, list):
        raise PlaybookError(
            f"{what} must give a list, got {_what_is(got)}{_list_hint(got)}",
            location=task.at(key),
        )
    if loop.flatten:  # with_items spreads out the lists in the list, one level
        got = [x for v in got for x in (v if isinstance(v, list | tuple) else [v])]
    if len(got) > MAX_LOOP_ITEMS:
        raise PlaybookError(
            f"{what} gives {len(got)} items, more than {MAX_LOOP_ITEMS}",
            location=task.at(key),
        )
    mask = Masker(secrets)
    items: list[LoopItem] = []
    seen: set[str] = set()
    for index, item in enumerate(got):
        if loop.label is not None:
            at = task.at("loop_control")
            scope = context_of({loop.loop_var: item})
            try:
                label = render(loop.label, scope, what=f"{what}, item {index + 1}, label")
            except TemplateError as exc:
                raise PlaybookError(exc.message, location=at) from None
        else:
            label = _item_text(item)
        if deadline is not None and time.monotonic() > deadline:
            raise PlaybookError(
                f"{what}: rendering the job's loops took more than {LOOP_SECONDS:g}s",
                location=task.at(key),
            )
        label = _one_line(mask(label))
        shown = label if label not in seen else f"{label} #{index + 1}"
        seen.add(shown)
        items.append(LoopItem(index, item, label, shown))
    return items


def _rendered(item: Any, context: Vars, what: str) -> Any:
    """A written item with its templates rendered (strings inside lists and mappings too); a
    string that is one `{{ expression }}` gives that expression's value, as in Ansible."""
    if isinstance(item, str):
        return template_value(item, context, what=what) if is_template(item) else item
    if isinstance(item, Mapping):
        return {k: _rendered(v, context, what) for k, v in item.items()}
    if isinstance(item, list | tuple):
        return [_rendered(v, context, what) for v in item]
    return item


def _item_text(item: Any) -> str:
    """An item as its default label: a string or a number as it is, anything else as JSON."""
    if isinstance(item, str):
        return item
    try:
        return json.dumps(item, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(item)


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= LABEL_WIDTH else flat[: LABEL_WIDTH - 1] + "\u2026"


def _what_is(got: Any) -> str:
    if isinstance(got, str):
        short = got if len(got) <= 60 else got[:57] + "..."
        return f"the text {short!r}" if got.strip() else "an empty text"
    if got is None:
        return "nothing (null)"
    return f"a {type(got).__name__}" if not isinstance(got, Mapping) else "a mapping"


def _list_hint(got: Any) -> str:
    if isinstance(got, Mapping):
        return ' (loop over its pairs with "{{ x.items() | list }}")'
    if isinstance(got, str):
        return ' (write one expression that gives a list, such as "{{ packages }}" or "{{ text.split() }}")'
    return ""


def loop_items(plan: Any) -> dict[tuple[str, str | None], list[LoopItem]]:
    """The items of each looping task of a `PlaybookPlan` on each host it runs on (a
    `run_on: any` task's under host None, rendered with its first candidate's variables).

    Raises PlaybookError at the task's `loop` (or `loop_control`) for a loop that does not
    give a list, or an item's label that cannot be rendered."""
    deadline = time.monotonic() + LOOP_SECONDS
    out: dict[tuple[str, str | None], list[LoopItem]] = {}
    for task in plan.tasks:
        if task.loop is None or not task.hosts or task.loop.at_run:
            continue
        units: list[str | None] = (
            [None] if task.run_on_any else [task.hosts[0]] if task.run_once else list(task.hosts)
        )
        for unit in units:
            host = unit or task.hosts[0]
            items = host_items(
                task.task,
                host,
                partial(plan.context, host, None, None),
                _secret_values(plan, host),
                deadline,
            )
            _check_names(plan, task, items)
            out[(task.name, unit)] = items
    return out


def run_items(
    plan: Any,
    task_name: str,
    host: str,
    results: Mapping[str, Any],
    facts: Mapping[str, Any] | None = None,
) -> list[LoopItem]:
    """The items of a loop that uses `results` (`Loop.at_run`) on a host, rendered when the
    tasks it waits for have ended there: `results` are theirs (task -> `task_result(...)`).

    Raises PlaybookError as `loop_items` does (not a list, too many items, a template or
    label that fails, an item's run named like another task)."""
    task = plan.task(task_name)
    items = host_items(
        task.task,
        host,
        partial(plan.context, host, results, facts),
        _secret_values(plan, host),
        time.monotonic() + LOOP_SECONDS,
    )
    _check_names(plan, task, items)
    return items


def _check_names(plan: Any, task: Any, items: Sequence[LoopItem]) -> None:
    names = {t.name for t in plan.tasks}
    for item in items:
        if item_run_name(task.name, item.shown) in names:
            raise PlaybookError(
                f"task {task.name!r}: the run of item {item.shown!r} would be named "
                f"{item_run_name(task.name, item.shown)!r}, like another task: rename one",
                location=task.location,
            )


def _secret_values(plan: Any, host: str) -> list[str]:
    """Values a label must not show: the playbook's secrets and what came from a vault."""
    context = plan.context(host)
    values = list(vault_values(plan.host_vars.get(host, {}), plan.playbook.vars))
    for name in plan.playbook.secrets:
        if name in context:
            try:
                values.append(render("{{ " + name + " }}", context, what=f"secret {name}"))
            except TemplateError:
                continue
    return [v for v in values if v]
