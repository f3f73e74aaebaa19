"""Many agents on one server: time to all online, fan-out to all of them, idle CPU and memory.

    .venv/bin/python -m bench.scale [--agents 10000] [--procs 4] [--idle 60] [--quick]
        [--workdir DIR] [--write] [--json FILE]

A real `easytask server` and N simulated agents spread over several processes
(bench/agentsim.py: each agent its own key and its own reverse SSH link, the same `Agent` class
the `easytask agent` command runs), all enrolled with one token. Measured:
- the time from starting the simulators to every agent online (GET /api/agents);
- the real CLI `easytask run all -a true`, start to exit (target: < 10 s at 10,000), its job's
  runs counted in the database (one per agent, none twice) and the server's CPU seconds for it;
- the server's CPU over an idle window with every link up (keepalives, heartbeats; target:
  < 10 % of a core) and its RSS (target: < 1 GiB).
Every figure is also given in CPU seconds, which do not depend on the machine being shared.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import (
    CLK_TCK,
    conditions_lines,
    measured,
    proc_cpu_seconds,
    proc_rss_kib,
    raise_nofile,
    save,
    start_fleet,
    start_server,
)
from tests.support import Procs, children_of, db_execute, easytask_cli, wait_until

CPUS = os.cpu_count() or 1
FANOUT_TARGET = 10.0  # seconds, CLI start to exit, at 10,000 agents
IDLE_TARGET = 10.0  # percent of a core
RSS_TARGET = 1024.0  # MiB


class BenchError(RuntimeError):
    pass


def say(text: str) -> None:
    print(text, flush=True)


def metrics_text(server: Any) -> str:
    resp = server.http.get("/metrics")
    resp.raise_for_status()
    return str(resp.text)


def online_count(server: Any) -> int:
    """Agents online now, from the server's /metrics (counted in its memory): polling the whole
    agent list (GET /api/agents, every agent's record and facts) every few seconds would cost
    the server more than the admissions it measures as the fleet grows."""
    found = re.search(r'^easytask_agents\{state="online"\} (\d+)$', metrics_text(server), re.M)
    return int(found.group(1)) if found else 0


last_cli_cpu = [0.0]  # the last `fan_out`'s CLI CPU seconds


def children_cpu_seconds() -> float:
    """User plus system CPU seconds of this process's children that have ended."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def sims_cpu_seconds(sims: list[Any]) -> tuple[float, float, float]:
    """CPU seconds of the agent simulators so far, of their agents' supervisors (the
    processes that start the agents' commands: one per simulator, not counted in its own), and
    of the commands those supervisors ran and reaped (each `sh -c true`: its own process)."""
    own = supervisors = commands = 0.0
    for sim in sims:
        own += proc_cpu_seconds(sim.pid)
        for child in children_of(sim.pid):
            try:
                fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # gone meanwhile
                continue
            supervisors += (int(fields[11]) + int(fields[12])) / CLK_TCK
            commands += (int(fields[13]) + int(fields[14])) / CLK_TCK
    return own, supervisors, commands


def machine_busy_seconds() -> float:
    """CPU seconds every CPU of the machine spent busy so far (all processes, the kernel's
    own work included: /proc/stat, all but idle and I/O wait)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / CLK_TCK


def fan_out(server: Any, n: int) -> tuple[float, int, str]:
    """`easytask run all -a true` from start to exit: its wall clock, its job and its summary
    (the CLI's own CPU seconds in `last_cli_cpu`)."""
    cli0 = children_cpu_seconds()
    t0 = time.perf_counter()
    done = subprocess.run(
        [*easytask_cli(), "run", "all", "-a", "true"],
        env=server.env(),
        cwd=server.state_dir,
        capture_output=True,
        text=True,
        timeout=900,
    )
    elapsed = time.perf_counter() - t0
    cli_cpu = children_cpu_seconds() - cli0
    summary = re.search(r"job (\d+): (\d+) host\(s\): (.*)", done.stdout)
    if done.returncode != 0 or summary is None or int(summary.group(2)) != n:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        raise BenchError(f"easytask run all exited {done.returncode}:\n{tail}")
    last_cli_cpu[0] = cli_cpu
    return elapsed, int(summary.group(1)), summary.group(3).strip()


def _when(value: Any) -> float:
    """A stored time as seconds since the epoch (SQLite returns text, PostgreSQL datetimes)."""
    at = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


def fan_out_phases(
    url: str, job: int, began: float, ended: float
) -> dict[str, tuple[float, float]]:
    """Where a fan-out's time went: each timeline event of its runs (queued, dispatched,
    started, finished, ...), seconds after the job was created (median, last), the job's end,
    and the CLI's start and exit."""
    created, end = db_execute(
        url, "SELECT created_at, finished_at FROM job WHERE id = :j", {"j": job}
    )[0]
    t0 = _when(created)
    found: dict[str, list[float]] = {}
    for kind, at in db_execute(
        url,
        "SELECT e.kind, e.at FROM runevent e JOIN run r ON r.id = e.run_id WHERE r.job_id = :j",
        {"j": job},
    ):
        found.setdefault(str(kind), []).append(_when(at) - t0)
    # the events' times are when they were stored (a batch at a time); the runs' own times
    # are when each started and ended
    for field in ("started_at", "finished_at"):
        times = [
            _when(at) - t0
            for (at,) in db_execute(url, f"SELECT {field} FROM run WHERE job_id = :j", {"j": job})
        ]
        found[f"run {field.removesuffix('_at')}"] = times
    out = {"CLI start": (began - t0, began - t0)}
    for kind, times in sorted(found.items(), key=lambda kv: statistics.median(kv[1])):
        out[kind] = (statistics.median(times), max(times))
    out["job end"] = (_when(end) - t0, _when(end) - t0)
    out["CLI exit"] = (ended - t0, ended - t0)
    return out


def measure(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    raise_nofile()  # the server is our child: it inherits the limit
    procs = Procs()
    inventory = root / "inventory.ini"
    inventory.write_text("")
    n = args.agents
    rec: dict[str, Any] = {"agents": n, "procs": args.procs}
    try:
        server = start_server(root / "server", inventory, procs)
        pid = server.proc.pid
        t0 = time.perf_counter()
        cpu0 = proc_cpu_seconds(pid)
        sims = start_fleet(
            procs,
            server,
            n,
            args.procs,
            "sc",
            "scale",
            root / "sim",
            root / "agentsim",
            "--metrics-interval",
            "0",
            "--keepalive",
            str(args.keepalive),
            "--backoff-max",
            "30",  # the agents' default: many reconnecting back off as they would
        )
        seen = {"online": 0}

        def all_online() -> bool:
            for sim in sims:
                if not sim.alive():
                    raise BenchError(f"agentsim exited:\n{sim.tail()}")
            seen["online"] = online_count(server)
            return seen["online"] >= n

        wait_until(all_online, timeout=120 + n / 10, interval=3.0, what=f"{n} agents online")
        rec["online_s"] = time.perf_counter() - t0
        rec["online_cpu_s"] = proc_cpu_seconds(pid) - cpu0
        say(f"{n} agents online after {rec['online_s']:.1f} s")
        time.sleep(args.settle)
        # idle: every link up, keepalives and heartbeats only
        cpu0 = proc_cpu_seconds(pid)
        sim0 = sims_cpu_seconds(sims)[0]
        time.sleep(args.idle)
        rec["idle_cpu_s"] = proc_cpu_seconds(pid) - cpu0
        # the simulators' own background (heartbeats, keepalives, the collector's pacing)
        rec["sim_idle_cpu_s"] = sims_cpu_seconds(sims)[0] - sim0
        rec["idle_window_s"] = args.idle
        rec["rss_mib"] = proc_rss_kib(pid) / 1024
        say(
            f"idle: {100 * rec['idle_cpu_s'] / args.idle:.1f} % of a core, "
            f"RSS {rec['rss_mib']:.0f} MiB"
        )
        fanouts = []
        for _ in range(args.repeat):
            cpu0 = proc_cpu_seconds(pid)
            sim0, sup0, cmd0 = sims_cpu_seconds(sims)
            busy0, began = machine_busy_seconds(), time.time()
            elapsed, job, summary = fan_out(server, n)
            busy = machine_busy_seconds() - busy0
            cli_cpu = last_cli_cpu[0]
            cpu = proc_cpu_seconds(pid) - cpu0
            sim1, sup1, cmd1 = sims_cpu_seconds(sims)
            sim_cpu, sup_cpu, cmd_cpu = sim1 - sim0, sup1 - sup0, cmd1 - cmd0
            phases = fan_out_phases(server.db_url, job, began, began + elapsed)
            rows = db_execute(
                server.db_url,
                "SELECT count(*), count(DISTINCT host) FROM run WHERE job_id = :j",
                {"j": job},
            )[0]
            # what the links cost meanwhile anyway (heartbeats, keepalives: the idle rate)
            # is not the fan-out's: what is left is its own, per run
            net = cpu - rec["idle_cpu_s"] / args.idle * elapsed
            sim_net = sim_cpu - rec["sim_idle_cpu_s"] / args.idle * elapsed
            fanouts.append(
                {
                    "seconds": elapsed,
                    "server_cpu_s": cpu,
                    "net_cpu_s": net,
                    "sim_cpu_s": sim_cpu,
                    "sim_net_cpu_s": sim_net,
                    "supervisor_cpu_s": sup_cpu,
                    "commands_cpu_s": cmd_cpu,
                    "machine_busy_s": busy,
                    "cli_cpu_s": cli_cpu,
                    "job": job,
                    "summary": summary,
                    "runs": int(rows[0]),
                    "hosts": int(rows[1]),
                    "phases": phases,
                }
            )
            say(
                f"fan-out to {n}: {elapsed:.2f} s, server CPU {cpu:.2f} s, "
                f"{1000 * net / n:.3f} ms per run net of the idle rate; agents' CPU "
                f"{sim_cpu:.2f} s ({1000 * sim_cpu / n:.3f} ms per run, "
                f"{1000 * sim_net / n:.3f} net of their idle rate), their supervisors' "
                f"{sup_cpu:.2f} s, their commands' {cmd_cpu:.2f} s; CLI CPU {cli_cpu:.2f} s; "
                f"the machine busy {busy:.2f} CPU-s ({100 * busy / (CPUS * elapsed):.0f} % of "
                f"its {CPUS} CPUs) "
                f"({summary}); seconds after the job's creation (median/last): "
                + ", ".join(f"{k} {a:.2f}/{b:.2f}" for k, (a, b) in phases.items())
            )
        rec["fanouts"] = fanouts
        rec["rss_after_mib"] = proc_rss_kib(pid) / 1024
        rec["hwm_mib"] = proc_rss_kib(pid, "VmHWM") / 1024
        rec["sim_cpu_s"] = sum(proc_cpu_seconds(s.pid) for s in sims)
        rec["online_at_end"] = online_count(server)
        server.close()
    finally:
        procs.stop_all()
    return rec


def report(rec: dict[str, Any]) -> str:
    r = rec["result"]
    n = r["agents"]
    best = min(r["fanouts"], key=lambda f: f["seconds"])
    idle_pct = 100 * r["idle_cpu_s"] / r["idle_window_s"]
    lines = [
        *conditions_lines(rec["command"], rec["when"], rec["load_before"], rec["load_after"]),
        "- The server, the agent simulators and the CLI share these 2 CPUs (and other work on"
        " the machine ran at the same time): wall-clock figures are bounded by that sharing; the"
        " CPU seconds are not.",
        "",
        "| figure | value | target |",
        "|---|---:|---|",
        f"| agents (simulator processes) | {n:,} ({r['procs']}) | |",
        f"| time to all online (enrol + connect + hello) | {r['online_s']:.1f} s, server CPU "
        f"{r['online_cpu_s']:.1f} s ({1000 * r['online_cpu_s'] / n:.2f} ms per agent) | |",
        f"| `easytask run all -a true`, CLI start to exit (best of {len(r['fanouts'])}) | "
        f"{best['seconds']:.2f} s | < {FANOUT_TARGET:g} s at 10,000 |",
        f"| fan-out: server CPU | {best['server_cpu_s']:.2f} s "
        f"({1000 * best['server_cpu_s'] / n:.3f} ms per run) | |",
        f"| fan-out: server CPU net of the idle rate | {1000 * best['net_cpu_s'] / n:.3f} ms per "
        "run | |",
        f"| fan-out: agent simulators' CPU / their supervisors' / the CLI's | "
        f"{best.get('sim_cpu_s', 0):.2f} s ({1000 * best.get('sim_cpu_s', 0) / n:.3f} ms per run)"
        f" / {best.get('supervisor_cpu_s', 0):.2f} s / {best.get('cli_cpu_s', 0):.2f} s | |",
        f"| fan-out: the commands' own CPU (each `sh -c true`, reaped by the supervisors) | "
        f"{best.get('commands_cpu_s', 0):.2f} s ({1000 * best.get('commands_cpu_s', 0) / n:.3f} ms"
        " per run) | |",
        f"| fan-out: the machine's busy CPU (every process and the kernel) | "
        f"{best.get('machine_busy_s', 0):.2f} s ({100 * best.get('machine_busy_s', 0) / (CPUS * best['seconds']):.0f}"
        f" % of its {CPUS} CPUs over the fan-out) | |",
        f"| fan-out: runs stored / distinct hosts | {best['runs']:,} / {best['hosts']:,} | "
        f"{n:,} / {n:,} |",
        f"| idle server CPU over {r['idle_window_s']:.0f} s | {r['idle_cpu_s']:.2f} s "
        f"({idle_pct:.1f} % of a core) | < {IDLE_TARGET:g} % |",
        f"| server RSS idle / after the fan-out / peak | {r['rss_mib']:.0f} / "
        f"{r['rss_after_mib']:.0f} / {r['hwm_mib']:.0f} MiB | < {RSS_TARGET:g} MiB |",
        f"| agent simulators: CPU in all | {r['sim_cpu_s']:.1f} s | |",
    ]
    met = (
        best["seconds"] < FANOUT_TARGET
        and idle_pct < IDLE_TARGET
        and r["hwm_mib"] < RSS_TARGET
        and best["runs"] == best["hosts"] == n
    )
    lines += ["", f"Targets at {n:,} agents: **{'met' if met else 'not met'}**."]
    return "\n".join(lines)


INTRO = """\
`bench/scale.py` puts N simulated agents (bench/agentsim.py, several processes, each agent its
own key and reverse SSH link) on one real server and measures the time to all online, the real
`easytask run all -a true` to every one of them (its runs counted in the database), the
server's idle CPU with every link up, and its memory. `make bench-scale` runs it at 10,000."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--procs", type=int, default=4, help="agent simulator processes")
    parser.add_argument("--idle", type=float, default=60.0, help="idle window (s)")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds before the window")
    parser.add_argument("--repeat", type=int, default=2, help="fan-outs")
    parser.add_argument("--keepalive", type=float, default=30.0, help="agents' SSH keepalive (s)")
    parser.add_argument("--quick", action="store_true", help="200 agents in 2 processes, short")
    parser.add_argument("--workdir", help="where the server and agents keep their state (emptied)")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--json", help="save the figures here")
    args = parser.parse_args(argv)
    if args.quick:
        args.agents, args.procs, args.idle, args.settle, args.repeat = 200, 2, 3.0, 1.0, 1
    rec = measured(args, "scale", argv, measure)
    print(report(rec).replace("**", ""))
    save(args, rec, ("scale", "Many agents on one server", INTRO), report(rec), print)
    return 0


if __name__ == "__main__":
    import sys

    from bench.common import exit_on_sigterm

    exit_on_sigterm()
    raise SystemExit(main(sys.argv[1:]))
