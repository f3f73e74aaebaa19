"""Sustained log ingest on SQLite: a real agent printing N lines, against raw sqlite3 inserts.

    .venv/bin/python -m bench.ingest [--lines 2000000] [--quick] [--write] [--json FILE]

Three figures, all on the same disk (the temp dir):
- real path: one real `easytask agent` runs `seq 1 N`; lines go agent spool -> reverse SSH ->
  server -> log writer -> SQLite (log_line plus the full-text index).  Timed from POST /api/jobs
  until the search API finds the last line; that search is sent the moment the job's final
  event arrives, and its own time is the "searchable after" figure (target: within 1 s);
- the store alone: `Store.write_lines` fed the same N rows in batches of the log writer's size;
- raw sqlite3: `executemany` into a table with the same columns and indexes, in the same WAL
  mode and batches, without and with an FTS5 index like ours, and into a bare table (the limit).
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import (
    conditions_lines,
    load_average,
    proc_cpu_seconds,
    run,
    start_agent,
    start_server,
    wait_job_events,
)
from tests.support import (
    Procs,
)

TARGET_RATE = 100_000  # lines/s through the real path
TARGET_SEARCH = 1.0  # seconds from the command's end until its last line is found
BATCH = 2000  # LogWriter's default batch


def say(text: str) -> None:
    sys.stderr.write(f"[ingest {time.strftime('%H:%M:%S')}] {text}\n")
    sys.stderr.flush()


def rows_for(run_id: int, n: int) -> Iterator[list[tuple[int, int, float, str, str, str]]]:
    """What the server stores for `seq 1 N`, in batches."""
    now = time.time()
    for start in range(1, n + 1, BATCH):
        yield [
            (run_id, i, now, "stdout", "INFO", str(i))
            for i in range(start, min(n, start + BATCH - 1) + 1)
        ]


def real_path(root: Path, n: int) -> dict[str, Any]:
    procs = Procs()
    try:
        inventory = root / "inventory.ini"
        inventory.write_text("")
        server = start_server(root / "server", inventory, procs)
        agent = start_agent(server, "ingest1", root / "agent", procs)
        http = server.http
        warm = http.post("/api/jobs", json={"pattern": "ingest1", "command": "true"}).json()
        wait_job_events(http, warm["job"]["id"])
        cpu0 = proc_cpu_seconds(server.proc.pid), proc_cpu_seconds(agent.pid)
        t0 = time.perf_counter()
        resp = http.post("/api/jobs", json={"pattern": "ingest1", "command": f"seq 1 {n}"})
        resp.raise_for_status()
        sub = resp.json()
        job_id = sub["job"]["id"]
        state = wait_job_events(http, job_id)
        t_done = time.perf_counter()
        run = server.get(f"/api/jobs/{job_id}")["runs"][0]
        found = server.get(f"/api/runs/{run['id']}/search", q=str(n))
        t_found = time.perf_counter()
        cpu1 = proc_cpu_seconds(server.proc.pid), proc_cpu_seconds(agent.pid)
        if state != "success":
            raise RuntimeError(f"seq 1 {n} ended {state}")
        seqs = [m["seq"] for m in found["matches"]]
        if n not in seqs:
            raise RuntimeError(f"the last line ({n}) is not found by search: {found}")
        db = sqlite3.connect(f"file:{root / 'server' / 'easytask.db'}?mode=ro", uri=True)
        try:
            stored = db.execute(
                "SELECT count(*) FROM log_line WHERE run_id = ? AND stream = 'stdout'", (run["id"],)
            ).fetchone()[0]
        finally:
            db.close()
        if stored != n:
            raise RuntimeError(f"{stored} lines stored, expected {n}")
        total = t_found - t0
        return {
            "lines": n,
            "to_final_event": t_done - t0,
            "to_searchable": total,
            "search_after_end": t_found - t_done,
            "command_duration": run.get("duration"),
            "rate": n / total,
            "server_cpu": cpu1[0] - cpu0[0],
            "agent_cpu": cpu1[1] - cpu0[1],
        }
    finally:
        procs.stop_all()


def store_alone(url: str, n: int) -> dict[str, Any]:
    """Store.write_lines fed N rows in the log writer's batches."""
    from easytask.store.db import Store
    from easytask.store.models import Job, Run

    store = Store(url)
    try:
        store.create_schema()
        _, (run,) = store.create_job(Job(command="seq"), [Run(host="h", command="seq")])
        assert run.id is not None
        batches = list(rows_for(run.id, n))
        t0 = time.perf_counter()
        for batch in batches:
            store.write_lines(batch)
        elapsed = time.perf_counter() - t0
    finally:
        store.close()
    return {"lines": n, "seconds": elapsed, "rate": n / elapsed}


def raw_sqlite(root: Path, n: int, variant: str) -> dict[str, Any]:
    path = root / f"raw-{variant}.db"
    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(
            "CREATE TABLE log_line (id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL, "
            "seq INTEGER NOT NULL, ts FLOAT NOT NULL, stream VARCHAR NOT NULL, "
            "level VARCHAR NOT NULL, text TEXT NOT NULL)"
        )
        if variant != "bare":
            db.execute("CREATE UNIQUE INDEX uq ON log_line (run_id, seq)")
            db.execute("CREATE INDEX ix ON log_line (run_id, level, seq)")
        if variant == "fts":
            db.execute(
                "CREATE VIRTUAL TABLE log_fts USING fts5(text, content='log_line', "
                "content_rowid='id', columnsize=0)"
            )
        db.commit()
        batches = list(rows_for(1, n))
        t0 = time.perf_counter()
        for batch in batches:
            cur = db.execute("SELECT coalesce(max(id), 0) FROM log_line")
            first = cur.fetchone()[0]
            db.executemany(
                "INSERT INTO log_line (run_id, seq, ts, stream, level, text) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                batch,
            )
            if variant == "fts":
                db.execute(
                    "INSERT INTO log_fts(rowid, text) SELECT id, text FROM log_line WHERE id > ?",
                    (first,),
                )
            db.commit()
        elapsed = time.perf_counter() - t0
    finally:
        db.close()
    return {"lines": n, "seconds": elapsed, "rate": n / elapsed}


RAW = [
    ("fts", "raw sqlite3, same indexes + FTS5 (what the store writes)"),
    ("indexed", "raw sqlite3, same indexes, no FTS5"),
    ("bare", "raw sqlite3, bare table, no index (the limit)"),
]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="eing-", dir=args.workdir or "/tmp"))
    load_before = load_average()
    try:
        say(f"real path: seq 1 {args.lines} on one agent")
        real = real_path(root, args.lines)
        say(f"real path: {real['rate']:,.0f} lines/s")
        alone = store_alone(f"sqlite:///{root / 'store.db'}", args.lines)
        say(f"Store.write_lines alone: {alone['rate']:,.0f} lines/s")
        raw = {}
        for variant, _ in RAW:
            raw[variant] = raw_sqlite(root, args.lines, variant)
            say(f"raw {variant}: {raw[variant]['rate']:,.0f} lines/s")
    finally:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    return {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "argv": args.argv,
        "disk": str(Path(args.workdir or "/tmp")),
        "load_before": load_before,
        "load_after": load_average(),
        "real": real,
        "store": alone,
        "raw": raw,
    }


def rows(rec: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    ref = rec["raw"]["fts"]["rate"]
    real = rec["real"]
    out = [
        (
            "agent `seq 1 N` → searchable (real path)",
            f"{real['to_searchable']:.2f}",
            f"{real['rate']:,.0f}",
            f"{real['rate'] / ref:.2f}",
        ),
        (
            "`Store.write_lines` alone",
            f"{rec['store']['seconds']:.2f}",
            f"{rec['store']['rate']:,.0f}",
            f"{rec['store']['rate'] / ref:.2f}",
        ),
    ]
    for variant, label in RAW:
        r = rec["raw"][variant]
        out.append((label, f"{r['seconds']:.2f}", f"{r['rate']:,.0f}", f"{r['rate'] / ref:.2f}"))
    return out


def table(rec: dict[str, Any], markdown: bool) -> str:
    headers = ("path", "seconds", "lines/s", "/ raw + FTS5")
    body = rows(rec)
    if markdown:
        out = ["| " + " | ".join(headers) + " |", "|---|---:|---:|---:|"]
        out += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(out)
    body = [(r[0].replace("`", ""), *r[1:]) for r in body]
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(headers)]
    fmt = [str.ljust, str.rjust, str.rjust, str.rjust]
    lines = ["  ".join(f(h, w) for f, h, w in zip(fmt, headers, widths, strict=True))]
    lines += ["  ".join(f(c, w) for f, c, w in zip(fmt, r, widths, strict=True)) for r in body]
    return "\n".join(lines)


def details(rec: dict[str, Any]) -> list[str]:
    real = rec["real"]
    dur = real["command_duration"]
    return [
        f"- N = {real['lines']:,} lines; every figure on the same disk ({rec['disk']}).",
        f"- Real path: the job's final event came {real['to_final_event']:.2f} s after the POST; "
        f"the search for the last line then took {real['search_after_end'] * 1000:.0f} ms "
        f"(it flushes the log writer first). The command itself ran "
        + (f"{dur:.2f} s" if isinstance(dur, int | float) else "?")
        + " on the agent (the run's recorded duration).",
        f"- CPU time used meanwhile (less sensitive to other work than the wall clock): server "
        f"{real['server_cpu']:.1f} s, agent process {real['agent_cpu']:.1f} s "
        f"({real['server_cpu'] / real['lines'] * 1e6:.1f} server CPU-seconds per million lines).",
    ]


def verdicts(rec: dict[str, Any]) -> list[str]:
    real = rec["real"]
    rate_ok = real["rate"] >= TARGET_RATE
    search_ok = real["search_after_end"] <= TARGET_SEARCH
    return [
        f"- real path >= {TARGET_RATE:,} lines/s: {'**met**' if rate_ok else '**missed**'} — "
        f"{real['rate']:,.0f} lines/s",
        f"- last line searchable within {TARGET_SEARCH:g} s of the command's end: "
        f"{'**met**' if search_ok else '**missed**'} — {real['search_after_end'] * 1000:.0f} ms",
    ]


INTRO = """\
`bench/ingest.py` measures how fast printed lines become stored and searchable on SQLite, next to
raw `sqlite3` inserts on the same disk:

- **real path**: a real agent runs `seq 1 N`; timed from `POST /api/jobs` until a search finds
  the last line.
- **`Store.write_lines` alone**: the same rows in the log writer's batches of 2,000.
- **raw sqlite3**: `executemany` in the same batches into the same table and indexes, with and
  without the FTS5 index, and into a bare table.

Run it with `.venv/bin/python -m bench.ingest --write`; `--quick` prints 20,000 lines."""


def block(rec: dict[str, Any]) -> str:
    lines = conditions_lines(
        ["-m", "bench.ingest", *rec["argv"]], rec["when"], rec["load_before"], rec["load_after"]
    )
    lines += [*details(rec), "", table(rec, markdown=True), "", "Targets:", "", *verdicts(rec)]
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--lines", type=int, default=2_000_000, help="N (default 2,000,000)")
    p.add_argument("--quick", action="store_true", help="N = 20,000 (smoke test)")
    p.add_argument("--write", action="store_true", help="rewrite its section of docs/benchmarks.md")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    p.add_argument("--workdir", help="where the temp dir goes (default /tmp)")
    args = p.parse_args(argv)
    if args.quick:
        args.lines = 20_000
    if args.lines < 1:
        p.error("--lines must be positive")
    args.argv = list(argv)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    section = ("ingest", "Log ingest on SQLite", INTRO)
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
