"""Output on PostgreSQL against SQLite, side by side: ingest through the real path, and search of
a long history.

    .venv/bin/python -m bench.pgout [--lines 2000000] [--history 10000000] [--quick] [--write]
        [--json FILE] [--workdir DIR]

- real path, on each backend: one real `easytask agent` runs `seq 1 N`; lines go agent spool ->
  reverse SSH -> server -> log writer -> the database. Timed from `POST /api/jobs` until the
  search API finds the last line (asked the moment the job's final event arrives). CPU seconds
  of the server, the agent and PostgreSQL are read from /proc, per 100,000 lines: they do not
  depend on what else shares the machine, the wall figures do.
- history, on each backend: `Store.write_lines` fills M lines (10 runs) in batches of 20,000,
  then a word and a phrase are searched in one run (`Store.search_lines`, what the run page's
  search asks) and over every run (`Store.find_runs(text=...)`, the runs list's output filter);
  each the median of 3.

PostgreSQL is a throwaway local cluster (`tests/support/pg.py`) with its default durability.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.cluster import Database, postmaster_pid, submit_one, tree_cpu
from bench.common import (
    conditions_lines,
    load_average,
    run,
    start_agent,
    start_server_on,
    wait_job_events,
)
from tests.support import Procs

TARGET_RATE = 150_000  # lines/s through the real path on PostgreSQL
TARGET_SEARCH = 0.300  # seconds for a word or a phrase in the history
FILL_BATCH = 20_000
HISTORY_RUNS = 10
BACKENDS = ("sqlite", "postgresql")


def say(text: str) -> None:
    sys.stderr.write(f"[pgout {time.strftime('%H:%M:%S')}] {text}\n")
    sys.stderr.flush()


def real_path(root: Path, n: int, backend: str, pg: Any) -> dict[str, Any]:
    """One real agent printing `seq 1 N` through a server on the backend, until searchable."""
    procs = Procs()
    db: Database | None = None
    try:
        server, url = start_server_on(root, backend, pg, procs, f"real-{backend}")
        agent = start_agent(server, f"out-{backend}", root / f"agent-{backend}", procs)
        warm = submit_one(server, f"out-{backend}", "true")
        wait_job_events(server.http, warm)

        def cpu() -> tuple[float, float, float]:
            pg_cpu = tree_cpu(postmaster_pid(pg)) if backend == "postgresql" else 0.0
            return tree_cpu(server.proc.pid), tree_cpu(agent.pid), pg_cpu

        cpu0 = cpu()
        t0 = time.perf_counter()
        job_id = submit_one(server, f"out-{backend}", f"seq 1 {n}")
        final = wait_job_events(server.http, job_id)
        t_done = time.perf_counter()
        run_id = server.get(f"/api/jobs/{job_id}")["runs"][0]["id"]
        found = server.get(f"/api/runs/{run_id}/search", q=str(n))
        t_found = time.perf_counter()
        cpu1 = cpu()
        if final != "success":
            raise RuntimeError(f"seq 1 {n} on {backend} ended {final}")
        if n not in [m["seq"] for m in found["matches"]]:
            raise RuntimeError(f"{backend}: the last line ({n}) is not found by search")
        db = Database(url)
        stored = int(
            db.scalar(
                "SELECT count(*) FROM log_line WHERE run_id = :r AND stream = 'stdout'", r=run_id
            )
        )
        if stored != n:
            raise RuntimeError(f"{backend}: {stored} lines stored, expected {n}")
        per = 100_000 / n
        return {
            "lines": n,
            "seconds": t_found - t0,
            "rate": n / (t_found - t0),
            "search_after_end": t_found - t_done,
            "server_cpu_100k": (cpu1[0] - cpu0[0]) * per,
            "agent_cpu_100k": (cpu1[1] - cpu0[1]) * per,
            "pg_cpu_100k": (cpu1[2] - cpu0[2]) * per,
        }
    finally:
        if db is not None:
            db.close()
        procs.stop_all()


def history_line(i: int) -> str:
    return f"{i} worker-{i % 50} processed item {i * 7919 % 10_000_019} ok"


def history(url: str, m: int) -> dict[str, Any]:
    """Fill M lines over 10 runs, then time a word and a phrase, in one run and over all."""
    from easytask.store.db import Store
    from easytask.store.models import Job, Run

    store = Store(url)
    try:
        store.create_schema()
        _, runs = store.create_job(
            Job(command="hist"), [Run(host=f"h{k}", command="hist") for k in range(HISTORY_RUNS)]
        )
        per_run = max(1, m // HISTORY_RUNS)
        t0 = time.perf_counter()
        now = time.time()
        i = 0
        for r in runs:
            assert r.id is not None
            for start in range(1, per_run + 1, FILL_BATCH):
                stop = min(per_run, start + FILL_BATCH - 1)
                store.write_lines(
                    [
                        (r.id, seq, now, "stdout", "INFO", history_line(i + seq))
                        for seq in range(start, stop + 1)
                    ]
                )
            i += per_run
        fill = time.perf_counter() - t0
        # a line in the middle of the 6th run: its item number (a word) and a phrase around it
        target = 5 * per_run + per_run // 2 + 17
        target_run = runs[5].id
        assert target_run is not None
        word = str(target * 7919 % 10_000_019)
        phrase = f"processed item {word} ok"

        def timed(fn: Any) -> tuple[float, Any]:
            times, out = [], None
            for _ in range(3):
                t = time.perf_counter()
                out = fn()
                times.append(time.perf_counter() - t)
            return statistics.median(times), out

        out: dict[str, Any] = {"lines": per_run * HISTORY_RUNS, "fill_seconds": fill}
        for kind, needle in (("word", word), ("phrase", phrase)):
            secs, found = timed(lambda needle=needle: store.search_lines(target_run, needle))
            if (target - 5 * per_run) not in [seq for seq, _ in found]:
                raise RuntimeError(f"the {kind} {needle!r} was not found in its run")
            out[f"run_{kind}"] = secs
            secs, hits = timed(lambda needle=needle: store.find_runs(text=needle, limit=50))
            if target_run not in [r.id for r, _ in hits]:
                raise RuntimeError(f"the {kind} {needle!r} did not list its run")
            out[f"all_{kind}"] = secs
        return out
    finally:
        store.close()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from tests.support import PostgresCluster

    root = Path(tempfile.mkdtemp(prefix="epgo-", dir=args.workdir or "/tmp"))
    load_before = load_average()
    pg = PostgresCluster(durable=True)
    real: dict[str, Any] = {}
    hist: dict[str, Any] = {}
    try:
        pg.start()
        pg.make_template()
        for backend in BACKENDS:
            say(f"real path on {backend}: seq 1 {args.lines}")
            real[backend] = real_path(root, args.lines, backend, pg)
            say(f"real path on {backend}: {real[backend]['rate']:,.0f} lines/s")
        for backend in BACKENDS:
            url = pg.new_database() if backend == "postgresql" else f"sqlite:///{root / 'h.db'}"
            say(f"history on {backend}: {args.history:,} lines")
            hist[backend] = history(url, args.history)
            say(f"history on {backend}: filled in {hist[backend]['fill_seconds']:.0f} s")
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)
    return {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "argv": args.argv,
        "load_before": load_before,
        "load_after": load_average(),
        "real": real,
        "history": hist,
    }


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms"


def rows(rec: dict[str, Any]) -> list[tuple[str, str, str]]:
    sq, pq = rec["real"]["sqlite"], rec["real"]["postgresql"]
    hs, hp = rec["history"]["sqlite"], rec["history"]["postgresql"]
    out = [
        ("agent `seq 1 N` → searchable, lines/s", f"{sq['rate']:,.0f}", f"{pq['rate']:,.0f}"),
        ("  last line searchable after the end", _ms(sq["search_after_end"]), _ms(pq["search_after_end"])),
        ("  server CPU s per 100k lines", f"{sq['server_cpu_100k']:.2f}", f"{pq['server_cpu_100k']:.2f}"),
        ("  agent CPU s per 100k lines", f"{sq['agent_cpu_100k']:.2f}", f"{pq['agent_cpu_100k']:.2f}"),
        ("  PostgreSQL CPU s per 100k lines", "-", f"{pq['pg_cpu_100k']:.2f}"),
        (f"history of {hs['lines']:,} lines: fill, s", f"{hs['fill_seconds']:.0f}", f"{hp['fill_seconds']:.0f}"),
    ]  # fmt: skip
    for key, label in (
        ("run_word", "  a word in one run"),
        ("run_phrase", "  a phrase in one run"),
        ("all_word", "  a word over all runs (runs list)"),
        ("all_phrase", "  a phrase over all runs (runs list)"),
    ):
        out.append((label, _ms(hs[key]), _ms(hp[key])))
    return out


def table(rec: dict[str, Any], markdown: bool) -> str:
    headers = ("figure", "SQLite", "PostgreSQL")
    body = rows(rec)
    if markdown:
        out = ["| " + " | ".join(headers) + " |", "|---|---:|---:|"]
        out += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(out)
    body = [(r[0].replace("`", ""), *r[1:]) for r in body]
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(headers)]
    fmt = [str.ljust, str.rjust, str.rjust]
    lines = ["  ".join(f(h, w) for f, h, w in zip(fmt, headers, widths, strict=True))]
    lines += ["  ".join(f(c, w) for f, c, w in zip(fmt, r, widths, strict=True)) for r in body]
    return "\n".join(lines)


def verdicts(rec: dict[str, Any]) -> list[str]:
    pq, hp = rec["real"]["postgresql"], rec["history"]["postgresql"]
    rate_ok = pq["rate"] >= TARGET_RATE
    worst = max(hp["run_word"], hp["run_phrase"], hp["all_word"], hp["all_phrase"])
    return [
        f"- real path on PostgreSQL >= {TARGET_RATE:,} lines/s: "
        f"{'**met**' if rate_ok else '**missed**'} — {pq['rate']:,.0f} lines/s",
        f"- a word and a phrase in a {hp['lines']:,}-line history on PostgreSQL < "
        f"{TARGET_SEARCH * 1000:.0f} ms: {'**met**' if worst < TARGET_SEARCH else '**missed**'}"
        f" — slowest {_ms(worst)}",
    ]


INTRO = """\
`bench/pgout.py` puts PostgreSQL's output storage (weekly partitions, binary `COPY`, the 64-line
chunk index) next to SQLite's in one run: a real agent's `seq 1 N` until searchable, with the
CPU seconds per 100,000 lines of the server, the agent and PostgreSQL; and a word and a phrase
searched in a history of M lines, in one run and over the runs list. PostgreSQL has its default
durability. Run it with `.venv/bin/python -m bench.pgout --write` (N = 2,000,000, M =
10,000,000; a few minutes); `--quick` uses N = 20,000 and M = 100,000 (the suite runs that)."""


def block(rec: dict[str, Any]) -> str:
    lines = conditions_lines(
        ["-m", "bench.pgout", *rec["argv"]], rec["when"], rec["load_before"], rec["load_after"]
    )
    lines += ["", table(rec, markdown=True), "", "Targets:", "", *verdicts(rec)]
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--lines", type=int, default=2_000_000, help="N (default 2,000,000)")
    p.add_argument("--history", type=int, default=10_000_000, help="M (default 10,000,000)")
    p.add_argument("--quick", action="store_true", help="N = 20,000, M = 100,000 (smoke test)")
    p.add_argument("--write", action="store_true", help="rewrite its section of docs/benchmarks.md")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    p.add_argument("--workdir", help="where the temp dir goes (default /tmp)")
    args = p.parse_args(argv)
    if args.quick:
        args.lines, args.history = 20_000, 100_000
    if args.lines < 1 or args.history < HISTORY_RUNS * 100:
        p.error("--lines must be positive and --history at least 1,000")
    args.argv = list(argv)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    section = ("pgout", "Output on PostgreSQL and SQLite", INTRO)
    return run(argv, parse_args, measure, table, verdicts, block, section, say)


if __name__ == "__main__":
    sys.exit(main())
