"""Grouped output: 1,000 hosts x 1,000 lines folded by output, as `run --group` and the job page do.

    .venv/bin/python -m bench.grouping [--hosts 1000] [--lines 1000] [--repeat 3] [--quick]
        [--write] [--json FILE] [--workdir DIR]

Two figures, each the median of --repeat rounds:
- CLI: HOSTS hosts' outputs of LINES lines each, held in memory as `run --group` holds them
  after following the job, folded (`easytask.grouping.fold`), then printed as text and as JSON
  (`easytask.cli.grouped.write_groups` into memory). One host in 100 differs in its last line
  and one in 50 fails with a line on stderr, so there are several groups to find.
- console: the same runs and lines in a SQLite store (written with `Store.write_lines`), and the
  job page's grouped view read from it (`easytask.web.grouped.job_groups`: each host's first
  lines read, compared and kept: 100 each for 1,000 hosts).
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import conditions_lines, load_average, run

TARGET_SECONDS = 2.0  # for 1,000 hosts x 1,000 lines, each path
BATCH = 2000


def say(text: str) -> None:
    sys.stderr.write(f"[grouping {time.strftime('%H:%M:%S')}] {text}\n")
    sys.stderr.flush()


def output_of(i: int, lines: int) -> tuple[int, str, list[str], list[str]]:
    """Host i's exit code, state, stdout and stderr."""
    stdout = [
        f"{n:>6} the same line on every host, long enough to be realistic" for n in range(lines)
    ]
    if i % 100 == 0:
        stdout[-1] = "a different last line"
    if i % 50 == 25:
        return 1, "failed", stdout[: lines // 2], ["error: something failed"]
    return 0, "success", stdout, []


def cli_round(hosts: int, lines: int) -> dict[str, Any]:
    from easytask.cli.grouped import write_groups
    from easytask.grouping import HostOutput, fold

    outputs = []
    runs = []
    for i in range(1, hosts + 1):
        code, state, stdout, stderr = output_of(i, lines)
        outputs.append(HostOutput(f"web{i:04d}", code, state, stdout, stderr))
        runs.append({"state": state})
    data = {"job": {"id": 1}, "runs": runs}
    t0 = time.perf_counter()
    groups = fold(outputs)
    t1 = time.perf_counter()
    text = io.StringIO()
    write_groups(groups, data, "text", text, False, None)
    t2 = time.perf_counter()
    as_json = io.StringIO()
    write_groups(groups, data, "json", as_json, False, None)
    t3 = time.perf_counter()
    return {
        "fold": t1 - t0,
        "text": t2 - t1,
        "json": t3 - t2,
        "total": t3 - t0,
        "groups": len(groups),
        "largest": groups[0].hosts_text,
    }


def console_rounds(root: Path, hosts: int, lines: int, repeat: int) -> dict[str, Any]:
    from easytask.store.db import Store
    from easytask.store.models import Job, Run
    from easytask.web.grouped import job_groups

    store = Store(f"sqlite:///{root / 'store.db'}")
    try:
        store.create_schema()
        ends = [output_of(i, lines) for i in range(1, hosts + 1)]
        runs = [
            Run(host=f"web{i:04d}", command="x", state=state, exit_code=code)
            for i, (code, state, _, _) in enumerate(ends, start=1)
        ]
        _, runs = store.create_job(Job(command="x"), runs)
        t0 = time.perf_counter()
        batch: list[tuple[int, int, float, str, str, str]] = []
        now = time.time()
        for run_, (_, _, stdout, stderr) in zip(runs, ends, strict=True):
            assert run_.id is not None
            texts = [("stdout", t) for t in stdout] + [("stderr", t) for t in stderr]
            for seq, (stream, text) in enumerate(texts, start=1):
                batch.append((run_.id, seq, now, stream, "INFO", text))
                if len(batch) >= BATCH:
                    store.write_lines(batch)
                    batch = []
        if batch:
            store.write_lines(batch)
        say(f"stored {hosts * lines:,} lines in {time.perf_counter() - t0:.1f} s")
        seconds = []
        view = None
        for _ in range(repeat):
            t0 = time.perf_counter()
            view = job_groups(store, store.job_runs(runs[0].job_id or 0))
            seconds.append(time.perf_counter() - t0)
        assert view is not None
        return {
            "seconds": seconds,
            "median": statistics.median(seconds),
            "groups": len(view.groups),
            "cut_hosts": view.cut_hosts,
            "lines_compared": view.lines,
        }
    finally:
        store.close()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="egrp-", dir=args.workdir or "/tmp"))
    load_before = load_average()
    try:
        cli = [cli_round(args.hosts, args.lines) for _ in range(args.repeat)]
        say(f"CLI: {statistics.median(r['total'] for r in cli):.2f} s")
        console = console_rounds(root, args.hosts, args.lines, args.repeat)
        say(f"console: {console['median']:.2f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "argv": args.argv,
        "load_before": load_before,
        "load_after": load_average(),
        "hosts": args.hosts,
        "lines": args.lines,
        "cli": {
            key: statistics.median(r[key] for r in cli) for key in ("fold", "text", "json", "total")
        }
        | {"groups": cli[0]["groups"], "largest": cli[0]["largest"]},
        "console": console,
    }


def table(rec: dict[str, Any], markdown: bool) -> str:
    cli, con = rec["cli"], rec["console"]
    body = [
        ("CLI: fold", f"{cli['fold']:.3f}"),
        ("CLI: print as text", f"{cli['text']:.3f}"),
        ("CLI: print as JSON", f"{cli['json']:.3f}"),
        ("CLI: all three", f"{cli['total']:.3f}"),
        (
            f"console: grouped view from the store (first {con['lines_compared']} lines)",
            f"{con['median']:.3f}",
        ),
    ]
    headers = ("path", "seconds")
    if markdown:
        out = ["| " + " | ".join(headers) + " |", "|---|---:|"]
        out += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(out)
    width = max(len(r[0]) for r in body)
    return "\n".join(
        [f"{'path'.ljust(width)}  seconds"] + [f"{p.ljust(width)}  {s:>7}" for p, s in body]
    )


def details(rec: dict[str, Any]) -> list[str]:
    cli, con = rec["cli"], rec["console"]
    return [
        f"- {rec['hosts']:,} hosts x {rec['lines']:,} lines; medians of "
        f"{len(con['seconds'])} rounds.",
        f"- {cli['groups']} groups; the largest is `{cli['largest'][:60]}`"
        + ("…" if len(cli["largest"]) > 60 else "")
        + f"; the console found {con['groups']} groups, {con['cut_hosts']:,} hosts with more "
        f"output than it compares.",
    ]


def verdicts(rec: dict[str, Any]) -> list[str]:
    out = []
    for name, seconds in (("CLI", rec["cli"]["total"]), ("console", rec["console"]["median"])):
        ok = seconds <= TARGET_SECONDS
        out.append(
            f"- {name} within {TARGET_SECONDS:g} s: {'**met**' if ok else '**missed**'} — "
            f"{seconds:.2f} s"
        )
    return out


INTRO = """\
`bench/grouping.py` times grouped output (`easytask run --group`, the job page's grouped view)
for 1,000 hosts with 1,000 lines each: folding the outputs held in memory and printing them as
text and as JSON, as the CLI does once the job has ended; and the console's grouped view read
from a SQLite store holding the same million lines. The CLI's figure is what `--group` adds
once the job has ended; receiving the lines over the job's event stream, as the hosts print
them, is the same as without `--group` and is not part of it.

Run it with `.venv/bin/python -m bench.grouping --write`; `--quick` uses 50 hosts x 100 lines."""


def block(rec: dict[str, Any]) -> str:
    lines = conditions_lines(
        ["-m", "bench.grouping", *rec["argv"]], rec["when"], rec["load_before"], rec["load_after"]
    )
    lines += [*details(rec), "", table(rec, markdown=True), "", "Targets:", "", *verdicts(rec)]
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--hosts", type=int, default=1000, help="hosts (default 1,000)")
    p.add_argument("--lines", type=int, default=1000, help="lines per host (default 1,000)")
    p.add_argument("--repeat", type=int, default=3, help="rounds (default 3)")
    p.add_argument("--quick", action="store_true", help="50 hosts x 100 lines (smoke test)")
    p.add_argument("--write", action="store_true", help="rewrite its section of docs/benchmarks.md")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    p.add_argument("--workdir", help="where the temp dir goes (default /tmp)")
    args = p.parse_args(argv)
    if args.quick:
        args.hosts, args.lines = 50, 100
    if args.hosts < 1 or args.lines < 2 or args.repeat < 1:
        p.error("--hosts and --repeat must be positive, --lines at least 2")
    args.argv = list(argv)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    section = ("grouping", "Grouped output: 1,000 hosts x 1,000 lines", INTRO)
    return run(
        argv,
        parse_args,
        measure,
        table,
        lambda rec: details(rec) + verdicts(rec),
        block,
        section,
        say,
    )


if __name__ == "__main__":
    sys.exit(main())
