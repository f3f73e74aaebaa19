"""Grouped output: `run --group` and `groups JOB` fold hosts with the same output and exit code
into one block headed by a compact host list (`web[01:40], db1`), as `dshbak -c` does."""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from typing import Any, TextIO

from easytask.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    api_client,
    escape_controls,
    follow_interruptible,
    print_json,
)
from easytask.config import Settings
from easytask.durations import format_duration
from easytask.errors import UsageError
from easytask.grouping import Group, HostOutput, fold

GROUP_HELP = (
    "wait for the job to end, then print hosts with the same output and exit code as one "
    "block headed by their host list (web[01:40], db1); with --format json, a list of groups"
)
OUTPUT_STREAMS = ("stdout", "stderr")


def add_group_flag(parser: Any) -> None:
    """`--group` on a command that runs a job (`run`)."""
    parser.add_argument("--group", action="store_true", help=GROUP_HELP)


def add_parsers(sub: Any) -> None:
    """Register `groups`."""
    g = sub.add_parser(
        "groups", help="a finished job's output with hosts of the same output folded together"
    )
    g.add_argument("job", type=_job_number, help="the job: N or job:N")
    g.add_argument("--format", choices=("text", "json"), default="text")
    g.add_argument(
        "--raw", action="store_true", help="print the output as it is, control sequences included"
    )
    g.set_defaults(func=cmd_groups)


def _job_number(text: str) -> int:
    number = text.strip().lower().removeprefix("job:")
    if not number.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not JOB or job:N")
    return int(number)


class GroupCollector:
    """Keeps each run's stdout and stderr lines from a job's live events until it ends."""

    def __init__(self) -> None:
        self.lines: dict[tuple[int, str], list[str]] = {}
        self.seen: dict[int, int] = {}

    def line(self, ev: dict[str, Any]) -> None:
        if ev["seq"] <= self.seen.get(ev["run"], 0):
            return
        self.seen[ev["run"]] = ev["seq"]
        if ev["stream"] in OUTPUT_STREAMS:
            self.lines.setdefault((ev["run"], ev["stream"]), []).append(ev["text"])

    def outputs(self, runs: list[dict[str, Any]]) -> list[HostOutput]:
        return [
            HostOutput(
                r["host"],
                r["exit_code"],
                r["state"],
                self.lines.get((r["id"], "stdout"), []),
                self.lines.get((r["id"], "stderr"), []),
                task=r.get("task") or "",
            )
            for r in runs
        ]


def run_grouped(
    args: argparse.Namespace, body: dict[str, Any], settings: Settings, out: TextIO
) -> int:
    """`run --group`: submit, collect every host's output as it arrives, print the groups."""
    if args.one_line:
        raise UsageError("run: --group and -o/--one-line are two ways to print; choose one")
    started = time.monotonic()
    client = api_client(settings)
    job_id = client.post("/api/jobs?runs=0", body)["job"]["id"]
    collector = GroupCollector()
    if follow_interruptible(client, job_id, collector):
        return 130
    data: dict[str, Any] = client.get(f"/api/jobs/{job_id}")
    groups = fold(collector.outputs(data["runs"]))
    return write_groups(groups, data, args.format, out, args.raw, time.monotonic() - started)


def cmd_groups(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    """`groups JOB`: the stored output of a job's runs, folded."""
    client = api_client(settings)
    data: dict[str, Any] = client.get(f"/api/jobs/{args.job}")
    outputs = []
    last: dict[tuple[str, str], dict[str, Any]] = {}
    for run in sorted(data["runs"], key=lambda r: r["id"]):  # a retried run's last attempt
        last[(run.get("task") or "", run["host"])] = run
    for run in last.values():
        lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
        after = 0
        while True:
            page = client.get(f"/api/runs/{run['id']}/log", after=after, limit=100000)["lines"]
            for ln in page:
                if ln["stream"] in lines:
                    lines[ln["stream"]].append(ln["text"])
            if len(page) < 100000:
                break
            after = page[-1]["seq"]
        outputs.append(
            HostOutput(
                run["host"],
                run["exit_code"],
                run["state"],
                lines["stdout"],
                lines["stderr"],
                task=run.get("task") or "",
            )
        )
    return write_groups(fold(outputs), data, args.format, out, args.raw, None)


def write_groups(
    groups: list[Group],
    data: dict[str, Any],
    fmt: str,
    out: TextIO,
    raw: bool,
    elapsed: float | None,
) -> int:
    """Print the groups (JSON: a list of them); exit 0 when every run succeeded."""
    ok = all(g.state in ("success", "skipped") for g in groups)
    if fmt == "json":
        print_json([g.as_dict() for g in groups], out)
        return EXIT_OK if ok else EXIT_FAILED
    color = out.isatty() and not os.environ.get("NO_COLOR")
    bold, red, reset = ("\033[1m", "\033[31m", "\033[0m") if color else ("", "", "")
    task = ""
    for group in groups:
        if group.task != task:
            task = group.task
            out.write(f"{bold}TASK {escape_controls(task)}{reset}\n")
        count = len(group.hosts)
        end = group.state if group.exit_code is None else f"{group.state}, exit {group.exit_code}"
        head = f"{escape_controls(group.hosts_text)} ({count} host{'s' if count != 1 else ''})"
        out.write(f"{bold}== {head}: {end}{reset}\n")
        for text in group.stdout:
            out.write((text if raw else escape_controls(text)) + "\n")
        for text in group.stderr:
            out.write(f"{red}! {text if raw else escape_controls(text)}{reset}\n")
        if not group.stdout and not group.stderr:
            out.write("(no output)\n")
        out.write("\n")
    counts = Counter(r["state"] for r in data["runs"])
    parts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    took = f" in {format_duration(elapsed)}" if elapsed is not None else ""
    out.write(
        f"job {data['job']['id']}: {len(data['runs'])} host(s) in {len(groups)} group(s): "
        f"{parts}{took}\n"
    )
    return EXIT_OK if ok else EXIT_FAILED
