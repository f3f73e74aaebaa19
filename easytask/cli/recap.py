"""What `easytask play` prints when its job is over: each task's last attempt and a per-host
recap."""

from __future__ import annotations

from typing import Any, TextIO

from easytask.cli.common import escape_controls, print_table
from easytask.durations import format_duration

__all__ = ["final_attempts", "play_ok", "play_recap"]


def final_attempts(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last attempt of each (task, host): earlier failed attempts were retried."""
    last: dict[tuple[str, str], dict[str, Any]] = {}
    for run in sorted(runs, key=lambda r: r["id"]):
        last[(run["task"], run["host"])] = run
    return list(last.values())


def play_ok(runs: list[dict[str, Any]]) -> bool:
    """Whether a playbook job went well: each last attempt succeeded, was skipped, or failed
    with its task's ignore_errors."""
    ok = {"success", "skipped"}
    return all(r["state"] in ok or r.get("ignored") for r in final_attempts(runs))


def play_recap(data: dict[str, Any], elapsed: float, out: TextIO) -> None:
    """The tasks' table and the per-host recap after a playbook job, as ansible-playbook ends."""
    runs = final_attempts(data["runs"])
    out.write("\nTASKS\n")
    rows = [
        (
            r["task"],
            r["host"],
            r["state"] + (" (ignored)" if r.get("ignored") else ""),
            "" if r["exit_code"] is None else r["exit_code"],
            r["attempt"],
            format_duration(r["duration"]) if r["duration"] is not None else "-",
            r["reason"],
        )
        for r in runs
    ]
    print_table(rows, ("TASK", "HOST", "STATUS", "EXIT", "TRY", "DURATION", "REASON"), out)
    out.write("\nRECAP\n")
    columns = ("ok", "changed", "failed", "skipped", "terminated", "unreachable", "ignored")
    per_host: dict[str, dict[str, int]] = {}
    for r in runs:
        counts = per_host.setdefault(r["host"], dict.fromkeys(columns, 0))
        key = "ok" if r["state"] == "success" else r["state"]
        if r.get("ignored"):  # a failure ignore_errors let pass, as Ansible counts it
            key = "ignored"
        if key in counts:
            counts[key] += 1
        if r.get("changed") and r["state"] == "success":
            counts["changed"] += 1
    print_table(
        [(host, *(c[k] for k in columns)) for host, c in per_host.items()],
        ("HOST", *(k.upper() for k in columns)),
        out,
    )
    out.write(
        f"\njob {data['job']['id']} ({escape_controls(data['job']['name'])}): "
        f"{data['job']['state']} in {format_duration(elapsed)}\n"
    )
