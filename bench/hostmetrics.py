"""Host samples: what sampling costs an agent, and what ingesting them costs the server.

    .venv/bin/python -m bench.hostmetrics [--agents 1000] [--window 60] [--quick] [--write]
        [--json FILE]

Two figures:
- sampling: `HostSampler.sample()` on this machine's real /proc, many times in a row: CPU
  seconds per sample, and the share of one core at 1 s and 10 s (target: well under 1 %);
  the memory a full queue of unsent samples holds (tracemalloc);
- ingest: a real `easytask server` and N agents in one process (bench/agentsim.py, real reverse
  SSH links, the real `metrics` request, collector, check and batched writer; the readings are
  made up so the senders stay light). The server's CPU seconds are read from /proc over a
  window twice: with the agents sampling nothing (the links' own cost), then with every agent
  sampling each second. The difference, per 1,000 samples stored, is the ingest's cost
  (target: 1,000 agents at 1 s under 10 % of a core).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import (
    conditions_lines,
    load_average,
    proc_cpu_seconds,
    proc_rss_kib,
    raise_nofile,
    save,
    start_agent,
    start_agentsim,
    start_server,
)
from easytask.agent.hostmetrics import SPOOL, HostSampler
from tests.support import Procs, db_execute, wait_until

SAMPLING_TARGET = 1.0  # percent of a core at the active pace (1 s)
INGEST_TARGET = 10.0  # percent of a core for 1,000 agents at 1 s


def measure_sampling(count: int) -> dict[str, Any]:
    """CPU seconds per sample on the real /proc, and the memory of a full queue."""
    with tempfile.TemporaryDirectory() as work:
        sampler = HostSampler(1.0, 1.0, work, spool=count + 1)
        sampler.sample()
        started = time.process_time()
        for _ in range(count):
            sampler.sample()
        per_sample = (time.process_time() - started) / count
        tracemalloc.start()
        full = HostSampler(1.0, 1.0, work, spool=SPOOL)
        for _ in range(SPOOL + 1):
            full.sample()
        held, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return {
        "samples": count,
        "cpu_per_sample_ms": per_sample * 1000,
        "core_pct_at_1s": per_sample * 100,
        "core_pct_at_10s": per_sample * 10,
        "full_queue_kib": held / 1024,
        "queue": SPOOL,
    }


def _stored(server: Any) -> int:
    return int(db_execute(server.db_url, "SELECT count(*) FROM hostmetric")[0][0])


def _window(server: Any, seconds: float, agents: dict[str, Any]) -> tuple[float, int, dict]:
    """The server's CPU seconds and the samples stored over `seconds`; each real agent's CPU
    seconds over it and its RSS at its end."""
    pid = server.proc.pid
    cpu0, n0 = proc_cpu_seconds(pid), _stored(server)
    before = {name: proc_cpu_seconds(p.pid) for name, p in agents.items()}
    time.sleep(seconds)
    cpu, stored = proc_cpu_seconds(pid) - cpu0, _stored(server) - n0
    real = {
        name: {
            "cpu_pct": 100 * (proc_cpu_seconds(p.pid) - before[name]) / seconds,
            "rss_mib": proc_rss_kib(p.pid) / 1024,
        }
        for name, p in agents.items()
    }
    return cpu, stored, real


def measure_ingest(agents: int, window: float, settle: float, root: Path) -> dict[str, Any]:
    """Server CPU over a window with N idle agents, then with N agents sampling every second."""
    raise_nofile()
    procs = Procs()
    inventory = root / "inventory.ini"
    inventory.write_text("")
    try:
        server = start_server(root / "server", inventory, procs)
        token = server.post("/api/agents/tokens", {"uses": agents, "ttl": "1h"})["token"]
        phases: dict[str, dict[str, float]] = {}
        real: dict[str, Any] = {}
        for phase, interval in (("idle links", "0"), ("sampling at 1 s", "1")):
            sim = start_agentsim(
                procs,
                server,
                agents,
                "hm",
                "hm",
                token,
                root / "sim",
                root / f"agentsim-{interval}.log",
                "--metrics-interval",
                interval,
                "--synthetic-samples",
            )

            def online(sim: Any = sim) -> bool:
                if not sim.alive():
                    raise RuntimeError(f"agentsim exited:\n{sim.tail()}")
                return server.online("hm") >= agents

            wait_until(online, timeout=60 + agents / 4, interval=0.5, what="agents online")
            # two real agents on the real /proc beside them, one sampling every second
            pair = {}
            if interval == "1":
                for name, every in (("sampling at 1 s", "1"), ("not sampling", "0")):
                    pair[name] = start_agent(
                        server,
                        f"real{every}",
                        root / f"real{every}",
                        procs,
                        "--metrics-interval",
                        every,
                        "--metrics-active-interval",
                        every,
                    )
            time.sleep(settle)  # connects, enrolments and the first batches settle
            cpu, stored, measured = _window(server, window, pair)
            real = measured or real
            phases[phase] = {"cpu_s": cpu, "stored": stored, "window_s": window}
            for proc in pair.values():
                procs.stop(proc)
            procs.stop(sim)
            wait_until(lambda: server.online("hm") == 0, timeout=60, what="agents gone")
        server.close()
    finally:
        procs.stop_all()
    idle, busy = phases["idle links"], phases["sampling at 1 s"]
    extra = busy["cpu_s"] - idle["cpu_s"]
    per_thousand = extra / (busy["stored"] / 1000) if busy["stored"] else float("nan")
    return {
        "agents": agents,
        "phases": phases,
        "real_agents": real,
        "ingest_cpu_s": extra,
        "ingest_core_pct": 100 * extra / window,
        "total_core_pct": 100 * busy["cpu_s"] / window,
        "samples_per_s": busy["stored"] / window,
        "cpu_s_per_1000_samples": per_thousand,
        # what 1,000 agents at one sample a second cost, from the per-sample figure
        "core_pct_1000_at_1s": per_thousand * 100,
    }


def report(rec: dict[str, Any]) -> str:
    """The figures as markdown."""
    s, g = rec["sampling"], rec["ingest"]
    lines = [
        *conditions_lines(rec["command"], rec["when"], rec["load_before"], rec["load_after"]),
        "",
        "| figure | value | target |",
        "|---|---:|---|",
        f"| agent: CPU per sample (real /proc, {s['samples']} samples) | "
        f"{s['cpu_per_sample_ms']:.3f} ms | |",
        f"| agent: share of a core at 1 s / 10 s | {s['core_pct_at_1s']:.3f} % / "
        f"{s['core_pct_at_10s']:.4f} % | well under {SAMPLING_TARGET:g} % |",
        f"| agent: a full queue ({s['queue']} unsent samples) holds | "
        f"{s['full_queue_kib']:.0f} KiB | |",
    ]
    for phase, p in g["phases"].items():
        lines.append(
            f"| server, {g['agents']} agents, {phase}: CPU over {p['window_s']:.0f} s | "
            f"{p['cpu_s']:.2f} s ({100 * p['cpu_s'] / p['window_s']:.1f} % of a core), "
            f"{p['stored'] / p['window_s']:.0f} samples/s stored | |"
        )
    for name, a in g.get("real_agents", {}).items():
        lines.append(
            f"| one real `easytask agent`, {name}, idle otherwise: CPU, RSS | "
            f"{a['cpu_pct']:.2f} % of a core, {a['rss_mib']:.1f} MiB | |"
        )
    lines += [
        f"| server: ingest CPU per 1,000 samples (the difference) | "
        f"{g['cpu_s_per_1000_samples'] * 1000:.1f} ms | |",
        f"| server: 1,000 agents at 1 s, ingest alone | {g['core_pct_1000_at_1s']:.1f} % of a core | "
        f"under {INGEST_TARGET:g} % |",
    ]
    met = g["core_pct_1000_at_1s"] < INGEST_TARGET and s["core_pct_at_1s"] < SAMPLING_TARGET
    lines += ["", f"Targets: **{'met' if met else 'not met'}**."]
    return "\n".join(lines)


INTRO = """\
`bench/hostmetrics.py` measures what host samples cost: the agent's sampling on this machine's
real /proc, and the server's ingest of N agents sampling every second (bench/agentsim.py: real
links and the real request, collector, check and batched writer; made-up readings), as the
server's CPU over a window with the agents sampling nothing, then sampling each second."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--window", type=float, default=60.0, help="seconds measured per phase")
    parser.add_argument("--settle", type=float, default=15.0, help="seconds before measuring")
    parser.add_argument("--samples", type=int, default=5000, help="samples timed on /proc")
    parser.add_argument("--quick", action="store_true", help="5 agents, 6 s windows")
    parser.add_argument("--workdir", help="where the server and agents keep their state (emptied)")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--json", help="save the figures here")
    args = parser.parse_args(argv)
    if args.quick:
        args.agents, args.window, args.settle, args.samples = 5, 6.0, 6.0, 200
    load_before = load_average()
    sampling = measure_sampling(args.samples)
    print(
        f"sampling: {sampling['cpu_per_sample_ms']:.3f} ms CPU per sample "
        f"({sampling['core_pct_at_1s']:.3f} % of a core at 1 s)"
    )
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    # everything the server and the agents write goes, whatever happens
    with tempfile.TemporaryDirectory(prefix="bench-hostmetrics-", dir=args.workdir) as tmp:
        ingest = measure_ingest(args.agents, args.window, args.settle, Path(tmp))
    rec = {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": ["-m", "bench.hostmetrics", *(argv if argv is not None else [])],
        "load_before": load_before,
        "load_after": load_average(),
        "sampling": sampling,
        "ingest": ingest,
    }
    print(report(rec).replace("**", ""))
    save(args, rec, ("hostmetrics", "Host samples: sampling and ingest", INTRO), report(rec), print)
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
