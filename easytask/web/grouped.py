"""The job page's grouped view: hosts with the same output and exit code folded together,
bounded so a job of thousands of hosts with long outputs still renders at once."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from easytask.grouping import HostOutput, fold
from easytask.store.db import Store
from easytask.store.models import Run

GROUP_BUDGET = 100_000  # lines read for the whole view: a bigger job compares fewer per host
GROUP_LINES = 1000  # at most this many lines of each host compared and shown
GROUP_MIN_LINES = 20  # and at least this many, however many hosts
GROUP_TEXT = 2000  # characters of one line compared and shown
GROUP_RUNS = 5000  # hosts folded; a bigger job's other runs are left out, and the page says so

_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_VISIBLE = {c: f"\\x{c:02x}" for c in (*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F)}


def shown(text: str) -> str:
    """A line with its control characters written visibly (ESC as \\x1b), cut to GROUP_TEXT."""
    if len(text) > GROUP_TEXT:
        text = text[:GROUP_TEXT] + "…"
    return text.translate(_VISIBLE) if _CONTROLS.search(text) else text


@dataclass
class GroupedView:
    """What the template shows: the groups, and how much was left out to keep it bounded."""

    groups: list[dict[str, Any]] = field(default_factory=list)
    hosts: int = 0
    cut_hosts: int = 0  # hosts with more output than was compared
    left_out: int = 0  # runs past GROUP_RUNS
    lines: int = GROUP_LINES  # lines of each host compared and shown


def job_groups(store: Store, runs: list[Run]) -> GroupedView:
    """Fold a job's runs (each host's last attempt per task) by their first lines: up to
    GROUP_LINES each, fewer for a big job so that about GROUP_BUDGET lines are read in all; call
    on the database thread (`store.call`)."""
    last: dict[tuple[str, str], Run] = {}
    for run in sorted(runs, key=lambda r: r.id or 0):
        last[(run.task, run.host)] = run
    finals = list(last.values())
    kept = finals[:GROUP_RUNS]
    cap = max(GROUP_MIN_LINES, min(GROUP_LINES, GROUP_BUDGET // max(len(kept), 1)))
    view = GroupedView(hosts=len(finals), left_out=len(finals) - len(kept), lines=cap)
    outputs = []
    lines = store.first_lines([r.id or 0 for r in kept], cap + 1, GROUP_TEXT + 1)
    for run in kept:
        rows = lines[run.id or 0]
        cut = len(rows) > cap
        streams: dict[str, list[str]] = {"stdout": [], "stderr": []}
        for _seq, stream, text in rows[:cap]:
            if stream in streams:
                streams[stream].append(shown(text))
        view.cut_hosts += cut
        outputs.append(
            HostOutput(
                run.host,
                run.exit_code,
                run.state,
                streams["stdout"],
                streams["stderr"],
                cut=cut,
                task=run.task,
            )
        )
    for group in fold(outputs):
        view.groups.append({**group.as_dict(), "task": group.task, "cut": group.cut})
    return view
