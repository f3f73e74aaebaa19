"""A playbook job as the job page shows it: tasks x hosts, each cell the run of that task on
that host (its state, attempts and duration), tasks in playbook order with their `needs`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from easytask.store.models import Job, Run
from easytask.web.format import between

PLAYBOOK_KINDS = ("playbook", "schedule")


def job_section(job: Job | None) -> str:
    """The console section a job's pages belong to: Playbooks or Ad hoc."""
    return "playbooks" if job is not None and job.kind in PLAYBOOK_KINDS else "adhoc"


def run_label(run: Run) -> str:
    """The label that tells apart runs of one task on one host (a loop's item); none yet."""
    return ""


@dataclass
class Cell:
    """The runs of one task on one host: one entry per label, each its latest attempt."""

    entries: list[dict[str, Any]] = field(default_factory=list)


def task_order(job: Job, runs: list[Run]) -> list[dict[str, Any]]:
    """The job's tasks in playbook order with their `needs` (as the job was submitted with
    them); tasks only the runs name (a job from before the order was kept) follow in the
    order of their first run."""
    try:
        listed = json.loads(job.vars or "{}").get("tasks") or []
    except (ValueError, AttributeError):
        listed = []
    tasks = [
        {
            "name": str(t.get("name", "")),
            "needs": [str(n) for n in t.get("needs") or []],
            "implied": bool(t.get("implied")),
        }
        for t in listed
        if isinstance(t, dict)
    ]
    known = {t["name"] for t in tasks}
    for run in runs:
        if run.task not in known:
            known.add(run.task)
            tasks.append({"name": run.task, "needs": [], "implied": False})
    return tasks


def matrix(job: Job, runs: list[Run]) -> dict[str, Any]:
    """Tasks (rows) x hosts (columns) of a playbook job; a cell holds, per label, the latest
    attempt of the run of that task on that host, with how many attempts it took."""
    hosts: list[str] = []
    seen: set[str] = set()
    latest: dict[tuple[str, str, str], Run] = {}
    attempts: dict[tuple[str, str, str], int] = {}
    for run in runs:  # in id order: a later attempt comes after the one it retries
        if run.host not in seen:
            seen.add(run.host)
            hosts.append(run.host)
        key = (run.task, run.host, run_label(run))
        latest[key] = run
        attempts[key] = max(attempts.get(key, 0), run.attempt)
    cells: dict[tuple[str, str], Cell] = {}
    for (task, host, label), run in latest.items():
        cells.setdefault((task, host), Cell()).entries.append(
            {
                "id": run.id,
                "label": label,
                "state": run.state,
                "attempts": attempts[(task, host, label)],
                "duration": between(run.started_at, run.finished_at),
                "started_at": run.started_at,
            }
        )
    tasks = task_order(job, runs)
    return {
        "hosts": hosts,
        "rows": [
            {**task, "cells": [cells.get((task["name"], host), Cell()).entries for host in hosts]}
            for task in tasks
        ],
    }
