"""The console's audit page with a long audit history, on SQLite and PostgreSQL.

    .venv/bin/python -m bench.auditpage [--events 100000] [--loads 20] [--backend both]

On each backend a real server is started once (for its audit key), stopped, the chain is
extended to N events (hashed with that key, inserted in batches), and the server is started
again on it. Then: the first `GET /audit` (while the server walks the chain in the background),
how long from the start until it has walked the whole chain once, `GET /audit` (median wall ms
and the server's mean CPU ms per load), and
`GET /api/audit/verify` (the whole chain on request). CPU is read from /proc: it does not
depend on what else shares the machine; wall times do.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.cluster import tree_cpu
from bench.common import load_average, start_server, start_server_on, stop_server
from bench.console import signed_in_client
from easytask.statefiles import load_or_create_secret
from easytask.store import statements as sql
from easytask.store.audit import GENESIS, canonical, keyed_hash
from easytask.store.db import make_engine
from tests.support import Procs

BATCH = 5_000


def say(text: str) -> None:
    sys.stderr.write(f"[auditpage {time.strftime('%H:%M:%S')}] {text}\n")
    sys.stderr.flush()


def extend_chain(url: str, key: bytes, events: int) -> None:
    """Append `events` keyed rows after the chain's head, as the server would have written them."""
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            head = conn.execute(sql.AUDIT_HEAD).first()
            last_id, prev = (0, GENESIS) if head is None else (int(head[0]), str(head[1]))
        at = datetime.now(UTC) - timedelta(days=1)
        done = 0
        while done < events:
            rows = []
            for _ in range(min(BATCH, events - done)):
                last_id += 1
                at += timedelta(milliseconds=1)
                detail = json.dumps({"job": last_id, "pattern": "web*", "hosts": ["web1"]})
                text = canonical(last_id, at, "admin", "job.submit", "bench", detail)
                digest = keyed_hash(key, prev, text)
                rows.append(
                    {
                        "id": last_id,
                        "at": at,
                        "actor": "admin",
                        "action": "job.submit",
                        "source": "bench",
                        "detail": detail,
                        "prev_hash": prev,
                        "hash": digest,
                    }
                )
                prev = digest
            with engine.begin() as conn:
                conn.execute(sql.INSERT_AUDIT, rows)
            done += len(rows)
        if engine.dialect.name == "postgresql":
            from sqlalchemy import text as sql_text

            with engine.begin() as conn:
                conn.execute(
                    sql_text("SELECT setval(pg_get_serial_sequence('audit_event', 'id'), :v)"),
                    {"v": last_id},
                )
    finally:
        engine.dispose()


def measure(root: Path, backend: str, pg: Any, events: int, loads: int) -> dict[str, Any]:
    procs = Procs()
    try:
        server, url = start_server_on(root, backend, pg, procs, f"state-{backend}")
        stop_server(server, procs)
        key = load_or_create_secret(server.state_dir / "audit.key")
        started = time.perf_counter()
        extend_chain(url, key, events)
        say(f"{backend}: {events} events written in {time.perf_counter() - started:.1f}s")
        started = time.perf_counter()
        again = ("--db", url) if backend == "postgresql" else ()
        server = start_server(server.state_dir, root / "inventory.ini", procs, *again)
        client = signed_in_client(server)
        t = time.perf_counter()
        first = client.get("/audit")
        first_ms = (time.perf_counter() - t) * 1000
        # the background verification of the whole chain, done once per process
        while 'data-verify="pending"' in client.get("/audit").text:
            if time.perf_counter() - started > 600:
                raise RuntimeError("the audit chain was not verified in 600 s")
            time.sleep(0.05)
        background_s = time.perf_counter() - started
        assert first.status_code == 200, first.text[:300]
        walls = []
        cpu = tree_cpu(server.proc.pid)
        for _ in range(loads):
            t = time.perf_counter()
            page = client.get("/audit")
            walls.append((time.perf_counter() - t) * 1000)
            assert page.status_code == 200 and "intact" in page.text.lower(), page.text[:300]
        # /proc counts CPU in 10 ms ticks: the mean over every load
        page_cpu = (tree_cpu(server.proc.pid) - cpu) * 1000 / loads
        cpu = tree_cpu(server.proc.pid)
        t = time.perf_counter()
        whole = server.get("/api/audit/verify")
        whole_ms = (time.perf_counter() - t) * 1000
        whole_cpu = (tree_cpu(server.proc.pid) - cpu) * 1000
        assert whole["ok"] and whole["rows"] >= events, whole
        client.close()
        return {
            "backend": backend,
            "events": whole["rows"],
            "first_page_ms": round(first_ms),
            "first_page_pending": 'data-verify="pending"' in first.text,
            "whole_chain_verified_after_start_s": round(background_s, 2),
            "page_ms_median": round(statistics.median(walls), 1),
            "page_cpu_ms_mean": round(page_cpu, 1),
            "api_verify_ms": round(whole_ms),
            "api_verify_cpu_ms": round(whole_cpu),
        }
    finally:
        procs.stop_all()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--loads", type=int, default=20)
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    args = parser.parse_args(argv)
    from tests.support import PostgresCluster

    root = Path(tempfile.mkdtemp(prefix="eaud-"))
    load_before = load_average()
    backends = ("sqlite", "postgresql") if args.backend == "both" else (args.backend,)
    pg = PostgresCluster() if "postgresql" in backends else None
    try:
        if pg is not None:
            pg.start()
            pg.make_template()
        results = [measure(root, b, pg, args.events, args.loads) for b in backends]
    finally:
        if pg is not None:
            pg.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({"load": [load_before, load_average()], "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
