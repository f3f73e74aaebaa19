"""Servers sharing one PostgreSQL: run throughput on one and two servers, log ingest on both backends.

    .venv/bin/python -m bench.cluster [--runs 10000] [--agents 20] [--slots 16] [--lines 1000000]
        [--command 'echo x'] [--no-sqlite] [--no-real-ingest] [--fast-pg] [--py-spy PATH]
        [--profile-dir DIR] [--profile-seconds 20] [--quick] [--write] [--json FILE] [--workdir DIR]

Throughput: RUNS short runs submitted as RUNS/AGENTS jobs over the API (`POST /api/jobs`, pattern
`cl` = every agent, so one run per agent per job), timed from the first submission until every
job is final in the database; every run must end `success`.  Three set-ups with the same agents
(two bench/agentsim.py processes of AGENTS/2 agents each, SLOTS slots per agent):
- one server on SQLite (reference), both simulators on it;
- one server on PostgreSQL, both simulators on it;
- two servers on the same PostgreSQL database, one simulator on each; submissions alternate
  between the servers, so about half the runs are handed to the server holding their agent.

Ingest: `Store.write_lines` fed the same N rows in the log writer's batches on SQLite (a file in
the temp dir) and PostgreSQL; and the real path, one real `easytask agent` printing `seq 1 N`
through a server on each backend, timed from POST /api/jobs until the job's final event.

PostgreSQL is a throwaway cluster (tests/support/pg.py) with PostgreSQL's own defaults for fsync,
commits and buffers; `--fast-pg` uses the tests' settings instead (fsync and synchronous_commit off).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import (
    CLK_TCK,
    busy_since,
    conditions_lines,
    cpu_counters,
    load_average,
    raise_nofile,
    run,
    start_agent,
    start_agentsim,
    start_server,
    start_server_on,
    wait_job_events,
)
from bench.ingest import BATCH, store_alone
from tests.support import (
    Proc,
    Procs,
    ServerHandle,
    wait_until,
)

GROUP = "cl"  # the simulated agents' label (counted online; labels are not groups)
PATTERN = "all"  # the jobs' hosts: every simulated agent (the inventory is empty)
FINAL = ("success", "failed", "terminated", "unreachable", "skipped")


def say(text: str) -> None:
    sys.stderr.write(f"[cluster {time.strftime('%H:%M:%S')}] {text}\n")
    sys.stderr.flush()


class BenchError(Exception):
    """A measurement that did not complete as it should."""


# -- CPU time of a process and everything under it --------------------------------------------------


def _stat_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds of the process and its reaped children)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        ticks = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        table[int(entry.name)] = (int(fields[1]), ticks / CLK_TCK)
    return table


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its live descendants, with the children they reaped."""
    table = _stat_table()
    children: dict[int, list[int]] = {}
    for child, (parent, _) in table.items():
        children.setdefault(parent, []).append(child)
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        if current in table:
            total += table[current][1]
        todo += children.get(current, [])
    return total


# -- the database, read directly (the servers are not asked) ---------------------------------------


class Database:
    """The shared database, read with its own engine: progress and final states of the runs."""

    def __init__(self, url: str) -> None:
        from easytask.store.db import make_engine

        self.engine = make_engine(url)

    def scalar(self, sql: str, **params: Any) -> Any:
        from sqlalchemy import text

        with self.engine.connect() as conn:
            return conn.execute(text(sql), params).scalar()

    def rows(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        from sqlalchemy import text

        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql), params)]

    def final_jobs(self, lo: int, hi: int) -> int:
        states = ", ".join(f"'{s}'" for s in FINAL)
        return int(
            self.scalar(
                f"SELECT count(*) FROM job WHERE id BETWEEN :lo AND :hi AND state IN ({states})",
                lo=lo,
                hi=hi,
            )
        )

    def close(self) -> None:
        self.engine.dispose()


def postmaster_pid(pg: Any) -> int:
    return int((pg.data / "postmaster.pid").read_text().split()[0])


# -- throughput ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    key: str
    label: str
    backend: str  # sqlite | postgresql
    servers: int


SETUPS = [
    Setup("sqlite1", "SQLite, 1 server", "sqlite", 1),
    Setup("pg1", "PostgreSQL, 1 server", "postgresql", 1),
    Setup("pg2", "PostgreSQL, 2 servers", "postgresql", 2),
]


def start_servers(
    root: Path, setup: Setup, pg: Any, procs: Procs
) -> tuple[list[ServerHandle], str]:
    """The set-up's servers (a second one gets the first one's agent key) and the database URL."""
    inventory = root / "inventory.ini"
    inventory.write_text("")
    first_state = root / f"{setup.key}-a"
    if setup.backend == "postgresql":
        url = pg.new_database()
        extra = ["--db", url, "--server-timeout", "15s"]
    else:
        url = f"sqlite:///{first_state / 'easytask.db'}"
        extra = []
    servers = [start_server(first_state, inventory, procs, *extra)]
    if setup.servers == 2:
        second_state = root / f"{setup.key}-b"
        second_state.mkdir(parents=True)
        # servers sharing a database share the key agents pin
        for name in ("client_key", "client_key.pub"):
            shutil.copy(first_state / name, second_state / name)
        servers.append(start_server(second_state, inventory, procs, *extra))
    return servers, url


def start_simulators(
    root: Path, setup: Setup, servers: list[ServerHandle], args: argparse.Namespace, procs: Procs
) -> list[Proc]:
    """Two agentsim processes of AGENTS/2 agents each; simulator i on server i mod servers."""
    half = args.agents // 2
    sims = []
    for i, count in enumerate((half, args.agents - half)):
        server = servers[i % len(servers)]
        token = server.post("/api/agents/tokens", {"uses": count, "ttl": "1h"})["token"]
        sims.append(
            start_agentsim(
                procs,
                server,
                count,
                f"{'ab'[i]}{setup.key}-",
                GROUP,
                token,
                root / f"{setup.key}-sim{i}",
                root / f"{setup.key}-sim{i}.log",
                "--slots",
                str(args.slots),
            )
        )

    def all_online() -> bool:
        for sim in sims:
            if not sim.alive():
                raise BenchError(f"agentsim exited:\n{sim.tail()}")
        return all(s.online(GROUP) >= args.agents for s in servers)

    wait_until(all_online, timeout=120, interval=0.2, what=f"{args.agents} agents online")
    return sims


def submit(server: ServerHandle, command: str, agents: int) -> int:
    resp = server.http.post("/api/jobs", json={"pattern": PATTERN, "command": command})
    resp.raise_for_status()
    body = resp.json()
    if len(body["runs"]) != agents:
        raise BenchError(f"a job got {len(body['runs'])} runs, expected {agents}")
    return int(body["job"]["id"])


def profile_servers(
    args: argparse.Namespace, setup: Setup, servers: list[ServerHandle], procs: Procs
) -> list[Proc]:
    """py-spy on every server from the first submission on, in collapsed-stack files."""
    if not args.py_spy:
        return []
    out_dir = Path(args.profile_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spies = []
    for i, server in enumerate(servers):
        name = f"{setup.key}-{'ab'[i]}"
        spies.append(
            procs.start(
                [
                    "nice",
                    "-n",
                    "10",
                    args.py_spy,
                    "record",
                    "--pid",
                    str(server.proc.pid),
                    "--duration",
                    str(args.profile_seconds),
                    "--rate",
                    "50",
                    "--format",
                    "raw",
                    "--nonblocking",
                    "--output",
                    str(out_dir / f"{name}.txt"),
                ],
                out_dir / f"{name}.log",
            )
        )
    return spies


def _frame(raw: str) -> str:
    """`send (asyncssh/connection.py:123)` -> `send (asyncssh/connection.py)`."""
    name, _, where = raw.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3", "/easytask/"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    return f"{name} ({where})" if where else name


def summarize_profile(path: Path, top: int = 8) -> dict[str, Any]:
    """Where a py-spy collapsed-stack file spent its samples: top self and top inclusive frames."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame(f) for f in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames[1:]):  # the thread's own frame is every sample
            inclusive[frame] = inclusive.get(frame, 0) + n

    def ranked(counts: dict[str, int]) -> list[tuple[str, float]]:
        best = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
        return [(k, 100.0 * v / total) for k, v in best]

    return {"samples": total, "self": ranked(own), "inclusive": ranked(inclusive)}


def throughput(root: Path, setup: Setup, args: argparse.Namespace, pg: Any) -> dict[str, Any]:
    procs = Procs()
    db: Database | None = None
    try:
        servers, url = start_servers(root, setup, pg, procs)
        sims = start_simulators(root, setup, servers, args, procs)
        say(f"{setup.label}: {args.agents} agents online")
        for server in servers:  # warm-up: one job through each server
            state = wait_job_events(server.http, submit(server, args.command, args.agents))
            if state != "success":
                raise BenchError(f"the warm-up job ended {state}")
        db = Database(url)
        jobs = args.runs // args.agents
        pg_pid = postmaster_pid(pg) if setup.backend == "postgresql" else None

        def cpu() -> dict[str, Any]:
            return {
                "servers": [tree_cpu(s.proc.pid) for s in servers],
                "agents": sum(tree_cpu(s.pid) for s in sims),
                "postgres": tree_cpu(pg_pid) if pg_pid else 0.0,
            }

        cpu0, busy0 = cpu(), cpu_counters()
        spies = profile_servers(args, setup, servers, procs)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.submitters) as pool:
            ids = list(
                pool.map(
                    lambda i: submit(servers[i % len(servers)], args.command, args.agents),
                    range(jobs),
                )
            )
        t_submitted = time.perf_counter()
        lo, hi = min(ids), max(ids)

        def all_final() -> bool:
            for proc in [*(s.proc for s in servers), *sims]:
                if not proc.alive():
                    raise BenchError(f"{proc.args[:4]} exited:\n{proc.tail()}")
            return db.final_jobs(lo, hi) >= jobs

        wait_until(all_final, timeout=120 + args.runs, interval=0.1, what=f"{jobs} jobs final")
        elapsed = time.perf_counter() - t0
        busy = busy_since(busy0)
        cpu1 = cpu()
        profiles = {}
        for spy in spies:  # each stops after --profile-seconds and writes its file then
            wait_until(
                lambda s=spy: not s.alive(), timeout=args.profile_seconds + 60, what="py-spy"
            )
            out = Path(spy.args[spy.args.index("--output") + 1])
            if out.exists():
                profiles[out.stem] = summarize_profile(out)
        states = dict(
            db.rows(
                "SELECT state, count(*) FROM run WHERE job_id BETWEEN :lo AND :hi GROUP BY state",
                lo=lo,
                hi=hi,
            )
        )
        if states != {"success": args.runs}:
            reasons = db.rows(
                "SELECT state, reason FROM run WHERE job_id BETWEEN :lo AND :hi "
                "AND state <> 'success' LIMIT 5",
                lo=lo,
                hi=hi,
            )
            raise BenchError(f"{setup.label}: runs ended {states}, e.g. {reasons}")
        by_server = sorted(
            n
            for (n,) in db.rows(
                "SELECT count(*) FROM run WHERE job_id BETWEEN :lo AND :hi GROUP BY server",
                lo=lo,
                hi=hi,
            )
        )
        result = {
            "label": setup.label,
            "servers": setup.servers,
            "backend": setup.backend,
            "runs": args.runs,
            "jobs": jobs,
            "seconds": elapsed,
            "submit_seconds": t_submitted - t0,
            "rate": args.runs / elapsed,
            "server_cpu": [b - a for a, b in zip(cpu0["servers"], cpu1["servers"], strict=True)],
            "agents_cpu": cpu1["agents"] - cpu0["agents"],
            "postgres_cpu": cpu1["postgres"] - cpu0["postgres"],
            "cpu_busy": busy,
            "runs_by_server": by_server,
            "profiles": profiles,
        }
        say(
            f"{setup.label}: {args.runs} runs in {elapsed:.1f} s = {result['rate']:.0f} runs/s "
            f"(submitted in {result['submit_seconds']:.1f} s)"
        )
        return result
    finally:
        if db is not None:
            db.close()
        procs.stop_all()


# -- log ingest -----------------------------------------------------------------------------------------


def real_ingest(root: Path, n: int, backend: str, pg: Any) -> dict[str, Any]:
    """One real agent printing `seq 1 N` through a server on the backend."""
    procs = Procs()
    db: Database | None = None
    try:
        server, url = start_server_on(root, backend, pg, procs, f"ingest-{backend}")
        start_agent(server, f"ing-{backend}", root / f"ingest-agent-{backend}", procs)
        warm = submit_one(server, f"ing-{backend}", "true")
        wait_job_events(server.http, warm)
        t0 = time.perf_counter()
        job_id = submit_one(server, f"ing-{backend}", f"seq 1 {n}")
        final = wait_job_events(server.http, job_id)
        elapsed = time.perf_counter() - t0
        if final != "success":
            raise BenchError(f"seq 1 {n} on {backend} ended {final}")
        run_id = server.get(f"/api/jobs/{job_id}")["runs"][0]["id"]
        db = Database(url)
        stored = int(
            db.scalar(
                "SELECT count(*) FROM log_line WHERE run_id = :r AND stream = 'stdout'", r=run_id
            )
        )
        if stored != n:
            raise BenchError(f"{backend}: {stored} lines stored, expected {n}")
        return {"lines": n, "seconds": elapsed, "rate": n / elapsed}
    finally:
        if db is not None:
            db.close()
        procs.stop_all()


def submit_one(server: ServerHandle, pattern: str, command: str) -> int:
    return int(server.post("/api/jobs", {"pattern": pattern, "command": command})["job"]["id"])


# -- one run of everything ----------------------------------------------------------------------------


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from tests.support import PostgresCluster

    raise_nofile()
    root = Path(tempfile.mkdtemp(prefix="eclu-", dir=args.workdir or "/tmp"))
    load_before = load_average()
    pg = PostgresCluster(durable=not args.fast_pg)
    try:
        pg.start()
        pg.make_template()
        say(f"PostgreSQL on 127.0.0.1:{pg.port} ({'fast' if args.fast_pg else 'durable'})")
        runs = {}
        for setup in SETUPS:
            if setup.backend == "sqlite" and not args.sqlite:
                continue
            runs[setup.key] = throughput(root, setup, args, pg)
        ingest: dict[str, Any] = {"store": {}, "real": {}}
        for backend in ("sqlite", "postgresql"):
            url = f"sqlite:///{root / 'store.db'}" if backend == "sqlite" else pg.new_database()
            ingest["store"][backend] = store_alone(url, args.lines)
            say(f"Store.write_lines on {backend}: {ingest['store'][backend]['rate']:,.0f} lines/s")
            if args.real_ingest:
                ingest["real"][backend] = real_ingest(root, args.lines, backend, pg)
                say(f"real path on {backend}: {ingest['real'][backend]['rate']:,.0f} lines/s")
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)
    return {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "argv": args.argv,
        "load_before": load_before,
        "load_after": load_average(),
        "agents": args.agents,
        "slots": args.slots,
        "submitters": args.submitters,
        "command": args.command,
        "lines": args.lines,
        "batch": BATCH,
        "postgres": "fast" if args.fast_pg else "durable",
        "postgres_root": str(pg.root),  # removed by now, with every process of it
        "throughput": runs,
        "ingest": ingest,
    }


# -- the report ------------------------------------------------------------------------------------


def ratio(rec: dict[str, Any]) -> float | None:
    t = rec["throughput"]
    return t["pg2"]["rate"] / t["pg1"]["rate"] if "pg1" in t and "pg2" in t else None


def throughput_rows(rec: dict[str, Any]) -> list[tuple[str, ...]]:
    out = []
    for key in ("sqlite1", "pg1", "pg2"):
        r = rec["throughput"].get(key)
        if r is None:
            continue
        out.append(
            (
                r["label"],
                f"{r['seconds']:.1f}",
                f"{r['rate']:,.0f}",
                f"{r['submit_seconds']:.1f}",
                " + ".join(f"{c:.1f}" for c in r["server_cpu"]),
                f"{r['agents_cpu']:.1f}",
                f"{r['postgres_cpu']:.1f}" if r["backend"] == "postgresql" else "-",
                f"{r['cpu_busy']:.0f}%",
            )
        )
    return out


def ingest_rows(rec: dict[str, Any]) -> list[tuple[str, ...]]:
    out = []
    labels = {
        "store": "`Store.write_lines` alone",
        "real": "agent `seq 1 N` → final event (real path)",
    }
    for key in ("store", "real"):
        both = rec["ingest"][key]
        if not both:
            continue
        lite, pg = both["sqlite"]["rate"], both["postgresql"]["rate"]
        out.append((labels[key], f"{lite:,.0f}", f"{pg:,.0f}", f"{pg / lite:.2f}"))
    return out


THROUGHPUT_HEADERS = (
    "set-up",
    "seconds",
    "runs/s",
    "submitting s",
    "server CPU s",
    "agents CPU s",
    "PostgreSQL CPU s",
    "CPUs busy",
)
INGEST_HEADERS = ("path", "SQLite lines/s", "PostgreSQL lines/s", "PostgreSQL / SQLite")


def render(headers: Sequence[str], body: list[tuple[str, ...]], markdown: bool) -> str:
    if markdown:
        out = ["| " + " | ".join(headers) + " |", "|---|" + "---:|" * (len(headers) - 1)]
        out += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(out)
    body = [tuple(c.replace("`", "") for c in r) for r in body]
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(headers)]
    lines = [
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w)
            for i, (h, w) in enumerate(zip(headers, widths, strict=True))
        )
    ]
    lines += [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in body
    ]
    return "\n".join(lines)


def tables(rec: dict[str, Any], markdown: bool) -> str:
    return (
        render(THROUGHPUT_HEADERS, throughput_rows(rec), markdown)
        + "\n\n"
        + render(INGEST_HEADERS, ingest_rows(rec), markdown)
    )


def args_submitters(rec: dict[str, Any]) -> int:
    return int(rec.get("submitters", 4))


def details(rec: dict[str, Any]) -> list[str]:
    t = rec["throughput"]
    any_setup = next(iter(t.values()))
    out = [
        f"- Throughput: {any_setup['runs']:,} runs of `{rec['command']}` as {any_setup['jobs']} "
        f"jobs of {rec['agents']} runs (one per agent), {rec['agents']} agents of "
        f"{rec['slots']} slots (up to {rec['agents'] * rec['slots']} runs at once). Server CPU "
        "is per server; CPUs busy counts every process on the machine.",
    ]
    r = ratio(rec)
    if r is not None:
        split = " and ".join(f"{n:,}" for n in t["pg2"]["runs_by_server"])
        out.append(
            f"- Two servers / one server on PostgreSQL: **{r:.2f}x** "
            f"({t['pg2']['rate']:,.0f} against {t['pg1']['rate']:,.0f} runs/s); the two "
            f"servers executed {split} runs (each its own agents')."
        )
    per_run = "; ".join(
        f"{r['label']}: server {sum(r['server_cpu']) / r['runs'] * 1000:.1f} ms"
        + (
            f", PostgreSQL {r['postgres_cpu'] / r['runs'] * 1000:.1f} ms"
            if r["postgres_cpu"]
            else ""
        )
        + f", agents {r['agents_cpu'] / r['runs'] * 1000:.1f} ms"
        for r in t.values()
    )
    out.append(f"- CPU time per run (all servers together): {per_run}.")
    tail = ", ".join(f"{r['seconds'] - r['submit_seconds']:.1f} s" for r in t.values())
    out.append(
        f"- The last job was final {tail} after the last submission returned "
        f"({args_submitters(rec)} clients submitting at once)."
    )
    for r in t.values():
        for name, prof in r.get("profiles", {}).items():
            own = ", ".join(f"{f} {pct:.0f}%" for f, pct in prof["self"][:5])
            out.append(
                f"- py-spy, server {name} ({prof['samples']} samples), most self time: {own}"
            )
    pg_mode = (
        "its default durability"
        if rec["postgres"] == "durable"
        else "fsync, synchronous_commit and full_page_writes off"
    )
    out.append(
        f"- Ingest: N = {rec['lines']:,} lines in batches of {rec['batch']:,}; SQLite with WAL "
        f"and FTS5, PostgreSQL ({pg_mode}) with COPY and the trigram index. The real path is "
        "timed until the job's final event."
    )
    return out


INTRO = """\
`bench/cluster.py` measures what a second server on the same PostgreSQL database buys, and what
PostgreSQL costs against SQLite for log ingest:

- **throughput**: 10,000 runs of `echo x` as 500 jobs of 20 runs on the same 20 agents, timed
  until every job is final: one server on SQLite, one on PostgreSQL, and two on the same
  PostgreSQL database with submissions alternating. Every run must succeed.
- **ingest**: `Store.write_lines` alone and a real agent's `seq 1 N`, on each backend.

PostgreSQL is a throwaway local cluster (`tests/support/pg.py`) with its default durability. Run
it with `.venv/bin/python -m bench.cluster --write`; `--quick` submits 1,000 runs and ingests
100,000 lines. This machine has 2 CPUs shared by everything: a second server adds work, not CPUs."""


def block(rec: dict[str, Any]) -> str:
    lines = conditions_lines(
        ["-m", "bench.cluster", *rec["argv"]], rec["when"], rec["load_before"], rec["load_after"]
    )
    lines += [*details(rec), "", tables(rec, markdown=True)]
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--runs", type=int, help="runs per set-up (default 10,000; --quick 1,000)")
    p.add_argument("--agents", type=int, default=20, help="agents, one run each per job (20)")
    p.add_argument("--slots", type=int, default=16, help="slots per agent (default 16)")
    p.add_argument("--lines", type=int, help="N for ingest (default 1,000,000; --quick 100,000)")
    p.add_argument("--command", default="echo x", help="each run's command (default `echo x`)")
    p.add_argument("--submitters", type=int, default=4, help="parallel submitting clients (4)")
    p.add_argument("--no-sqlite", dest="sqlite", action="store_false", help="no SQLite row")
    p.add_argument(
        "--no-real-ingest", dest="real_ingest", action="store_false", help="Store alone only"
    )
    p.add_argument("--fast-pg", action="store_true", help="PostgreSQL with fsync etc. off")
    p.add_argument(
        "--py-spy",
        metavar="PATH",
        help="profile every server with this py-spy from the first submission on (nice'd)",
    )
    p.add_argument(
        "--profile-dir", default="bench/results/cluster-profile", help="where py-spy writes"
    )
    p.add_argument("--profile-seconds", type=int, default=20, help="how long py-spy records")
    p.add_argument("--quick", action="store_true", help="1,000 runs, 100,000 lines")
    p.add_argument("--write", action="store_true", help="rewrite its section of docs/benchmarks.md")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    p.add_argument("--workdir", help="where the temp dir goes (default /tmp)")
    args = p.parse_args(argv)
    if args.runs is None:
        args.runs = 1_000 if args.quick else 10_000
    if args.lines is None:
        args.lines = 100_000 if args.quick else 1_000_000
    if args.agents < 2 or args.slots < 1 or args.lines < 1 or args.submitters < 1:
        p.error("--agents must be at least 2; --slots, --lines and --submitters positive")
    if args.runs < args.agents or args.runs % args.agents:
        p.error("--runs must be a multiple of --agents (each job runs once on every agent)")
    args.argv = list(argv)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    section = ("cluster", "Several servers on one PostgreSQL", INTRO)
    return run(argv, parse_args, measure, tables, details, block, section, say)


if __name__ == "__main__":
    sys.exit(main())
