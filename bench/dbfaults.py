"""PostgreSQL down for a minute while 100 agents stream output: what the server does meanwhile.

    .venv/bin/python -m bench.dbfaults [--agents 100] [--pause 60] [--rounds 90] [--per-round 100]
        [--buffer 1M] [--quick] [--json FILE] [--workdir DIR]

One real server on a throwaway PostgreSQL cluster (tests/support/pg.py, PostgreSQL's own
durability defaults), AGENTS simulated agents (bench/agentsim.py: the real agent class, real
commands, each its own key and link). One job on every agent prints ROUNDS x PER_ROUND numbered
lines, a round a second. Once every run has stored lines PostgreSQL is stopped (`pg_ctl stop -m
fast`) for PAUSE seconds and started again.  Measured while it is down, every second: the
server is alive, /readyz (503 and why), an API call's status and latency, the output the server
holds (/readyz `buffer`) and its RSS.  Then: the time until /readyz is ready again and the job
final, and every run checked: `success`, every line stored once, in order.  Exits 1 if a check
fails.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    load_average,
    proc_rss_kib,
    raise_nofile,
    start_agentsim,
    start_server,
)
from tests.support import PostgresCluster, Procs, wait_until

GROUP = "df"
FINAL = ("success", "failed", "terminated", "unreachable", "skipped")


def say(text: str) -> None:
    print(f"[dbfaults] {text}", file=sys.stderr, flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agents", type=int, default=100)
    p.add_argument("--pause", type=float, default=60.0, help="seconds PostgreSQL is down")
    p.add_argument("--rounds", type=int, default=90, help="rounds of output, one a second")
    p.add_argument("--per-round", type=int, default=100, help="lines per round")
    p.add_argument("--buffer", default="1M", help="the server's --log-buffer")
    p.add_argument("--quick", action="store_true", help="5 agents, 5 s down (the smoke test)")
    p.add_argument("--json", help="write the record here")
    p.add_argument("--workdir", help="where the temporary files go (removed afterwards)")
    args = p.parse_args(argv)
    if args.quick:
        args.agents, args.pause, args.rounds, args.per_round = 5, 5.0, 12, 50
    return args


def command(args: argparse.Namespace) -> str:
    return (
        f'for r in $(seq 1 {args.rounds}); do seq -f "line $r.%g" 1 {args.per_round}; sleep 1; done'
    )


def expected(args: argparse.Namespace) -> list[str]:
    return [
        f"line {r}.{n}" for r in range(1, args.rounds + 1) for n in range(1, args.per_round + 1)
    ]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    raise_nofile()
    root = Path(tempfile.mkdtemp(prefix="dbfaults-", dir=args.workdir))
    procs = Procs()
    pg = PostgresCluster(durable=True)
    rec: dict[str, Any] = {"agents": args.agents, "pause_s": args.pause, "load_before": ""}
    try:
        rec["load_before"] = load_average()
        pg.start()
        pg.execute("CREATE DATABASE faults")
        inventory = root / "inventory.ini"
        inventory.write_text("")
        state = root / "server"
        state.mkdir()
        server = start_server(
            state, inventory, procs, "--db", pg.url("faults"), "--log-buffer", args.buffer
        )
        token = server.post("/api/agents/tokens", {"uses": args.agents, "ttl": "1h"})["token"]
        sim = start_agentsim(
            procs, server, args.agents, "df-", GROUP, token, root / "sim", root / "sim.log"
        )
        wait_until(
            lambda: server.online(GROUP) >= args.agents or not sim.alive(),
            timeout=180,
            interval=0.5,
            what=f"{args.agents} agents online",
        )
        if not sim.alive():
            raise RuntimeError(f"agentsim exited:\n{sim.tail()}")
        say(f"{args.agents} agents online")
        job = server.post("/api/jobs", {"pattern": "all", "command": command(args)})
        job_id = job["job"]["id"]
        runs = [r["id"] for r in job["runs"]]
        if len(runs) != args.agents:
            raise RuntimeError(f"the job got {len(runs)} runs, expected {args.agents}")
        wait_until(
            lambda: server.get(f"/api/runs/{runs[-1]}/log", limit=10)["lines"],
            timeout=120,
            what="output stored",
        )
        pg.halt()
        say(f"PostgreSQL stopped for {args.pause:g} s")
        down = time.monotonic()
        statuses: dict[str, int] = {}
        ready_problems: set[str] = set()
        worst_api = 0.0
        most_bytes = most_lines = 0
        most_rss = proc_rss_kib(server.proc.popen.pid)
        limit: dict[str, int] = {}
        alive = True
        while time.monotonic() - down < args.pause:
            started = time.monotonic()
            resp = server.http.get(f"/api/jobs/{job_id}")
            worst_api = max(worst_api, time.monotonic() - started)
            key = f"{resp.status_code}" + (" retry-after" if "retry-after" in resp.headers else "")
            statuses[key] = statuses.get(key, 0) + 1
            ready = httpx.get(server.url + "/readyz", timeout=30)
            body = ready.json()
            ready_problems.update(
                f"{k}: {v.split(' for ')[0]}" for k, v in body.get("problems", {}).items()
            )
            most_bytes = max(most_bytes, body["buffer"]["bytes"])
            most_lines = max(most_lines, body["buffer"]["lines"])
            limit = {k: v for k, v in body["buffer"].items() if k.startswith("limit")}
            most_rss = max(most_rss, proc_rss_kib(server.proc.popen.pid))
            alive = alive and server.proc.alive()
            time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
        pg.resume()
        back = time.monotonic()
        say("PostgreSQL started again")
        wait_until(
            lambda: httpx.get(server.url + "/readyz", timeout=30).status_code == 200,
            timeout=120,
            what="ready again",
        )
        ready_after = time.monotonic() - back
        final = wait_until(
            lambda: (d := server.get(f"/api/jobs/{job_id}"))["job"]["state"] in FINAL and d,
            timeout=args.rounds + 300,
            what="the job to end",
        )
        job_after = time.monotonic() - back
        states: dict[str, int] = {}
        for run in final["runs"]:
            states[run["state"]] = states.get(run["state"], 0) + 1
        want = expected(args)
        complete = 0
        for run_id in runs:
            lines = server.get(f"/api/runs/{run_id}/log", limit=len(want) + 100)["lines"]
            seqs = [ln["seq"] for ln in lines]
            texts = [ln["text"] for ln in lines if ln["stream"] == "stdout"]
            complete += seqs == list(range(1, len(lines) + 1)) and texts == want
        rec.update(
            {
                "server_alive": alive and server.proc.alive(),
                "api_while_down": statuses,
                "api_worst_s": round(worst_api, 3),
                "readyz_while_down": sorted(ready_problems),
                "buffer_most_bytes": most_bytes,
                "buffer_most_lines": most_lines,
                "buffer_limit": limit,
                "server_rss_most_mib": round(most_rss / 1024, 1),
                "ready_after_s": round(ready_after, 1),
                "job_final_after_s": round(job_after, 1),
                "run_states": states,
                "runs_complete": complete,
                "lines_per_run": len(want),
                "load_after": load_average(),
            }
        )
        return rec
    finally:
        procs.stop_all()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


def checks(rec: dict[str, Any]) -> list[str]:
    """What went wrong (empty: every promise held)."""
    wrong = []
    if not rec["server_alive"]:
        wrong.append("the server exited")
    if set(rec["api_while_down"]) - {"503 retry-after"}:
        wrong.append(f"API answers while down: {rec['api_while_down']}")
    if not any("unreachable" in p for p in rec["readyz_while_down"]):
        wrong.append(f"/readyz said {rec['readyz_while_down']}")
    if rec["runs_complete"] != rec["agents"]:
        wrong.append(f"{rec['runs_complete']} of {rec['agents']} runs stored every line once")
    if rec["run_states"] != {"success": rec["agents"]}:
        wrong.append(f"run states {rec['run_states']}")
    if rec["buffer_limit"] and rec["buffer_most_bytes"] > rec["buffer_limit"]["limit_bytes"] * 2:
        wrong.append(f"buffer held {rec['buffer_most_bytes']} bytes")
    return wrong


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    rec = measure(args)
    rec["problems"] = checks(rec)
    print(f"load average before: {rec['load_before']}, after: {rec['load_after']}")
    print(f"agents streaming:              {rec['agents']} ({rec['lines_per_run']} lines each)")
    print(f"PostgreSQL down:               {rec['pause_s']:g} s")
    print(f"server up throughout:          {rec['server_alive']}")
    print(f"API while down:                {rec['api_while_down']}, worst {rec['api_worst_s']} s")
    print(f"/readyz while down:            {', '.join(rec['readyz_while_down'])}")
    print(
        f"server buffer, most held:      {rec['buffer_most_bytes']} bytes, "
        f"{rec['buffer_most_lines']} lines (limit {rec['buffer_limit']})"
    )
    print(f"server RSS, most:              {rec['server_rss_most_mib']} MiB")
    print(f"ready again after:             {rec['ready_after_s']} s")
    print(f"job final after:               {rec['job_final_after_s']} s")
    print(f"runs with every line once:     {rec['runs_complete']} of {rec['agents']}")
    print(f"run states:                    {rec['run_states']}")
    for problem in rec["problems"]:
        print(f"FAILED: {problem}")
    if args.json:
        Path(args.json).write_text(json.dumps(rec, indent=2) + "\n")
    return 1 if rec["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
