"""The job page's tasks x hosts matrix of a playbook job, built from its runs (pure)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from easytask.store.models import Job, Run
from easytask.web.matrix import job_section, matrix

T0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)


def run(id: int, task: str, host: str, state: str = "success", attempt: int = 1) -> Run:
    return Run(
        id=id,
        job_id=1,
        task=task,
        host=host,
        state=state,
        attempt=attempt,
        started_at=T0,
        finished_at=T0 + timedelta(seconds=id),
    )


def cells(built: dict, field: str) -> list[list[object]]:
    """One field of each cell's entries, row by row ('-' for an empty cell)."""
    return [
        [entries[0][field] if entries else "-" for entries in row["cells"]] for row in built["rows"]
    ]


def test_tasks_in_playbook_order_with_needs_hosts_in_order_of_first_run() -> None:
    """Rows follow the order the job was submitted with (not the runs'), each with its needs;
    columns are hosts as their first run came; a host a task does not run on is empty."""
    tasks = [
        {"name": "fetch", "needs": [], "implied": False},
        {"name": "migrate", "needs": ["fetch"], "implied": False},
        {"name": "report", "needs": ["migrate"], "implied": True},
    ]
    job = Job(id=1, kind="playbook", vars=json.dumps({"tasks": tasks}))
    runs = [
        run(1, "fetch", "web1"),
        run(2, "fetch", "db1"),
        run(3, "report", "web1"),
        run(4, "migrate", "db1", "failed"),
    ]
    built = matrix(job, runs)
    assert built["hosts"] == ["web1", "db1"]
    assert [(r["name"], r["needs"], r["implied"]) for r in built["rows"]] == [
        ("fetch", [], False),
        ("migrate", ["fetch"], False),
        ("report", ["migrate"], True),
    ]
    assert cells(built, "state") == [
        ["success", "success"],
        ["-", "failed"],
        ["success", "-"],
    ]
    assert cells(built, "duration") == [[1.0, 2.0], ["-", 4.0], [3.0, "-"]]


def test_a_retried_run_shows_its_last_attempt_and_how_many() -> None:
    """A cell holds the latest attempt of its run (its id and state) and the attempt count."""
    job = Job(id=1, kind="playbook", vars="{}")  # a job from before the order was kept
    runs = [run(1, "a", "h1", "failed"), run(2, "b", "h1"), run(3, "a", "h1", "success", 2)]
    built = matrix(job, runs)
    assert [r["name"] for r in built["rows"]] == ["a", "b"]  # order of their first run
    assert cells(built, "id") == [[3], [2]]
    assert cells(built, "attempts") == [[2], [1]]
    assert cells(built, "label") == [[""], [""]]


@pytest.mark.parametrize(
    ("kind", "section"),
    [("playbook", "playbooks"), ("schedule", "playbooks"), ("adhoc", "adhoc"), (None, "adhoc")],
)
def test_job_section(kind: str | None, section: str) -> None:
    """A playbook's or schedule's job belongs to Playbooks; any other to Ad hoc."""
    assert job_section(Job(kind=kind) if kind else None) == section
