"""Footprint: an idle agent, a server with 1,000 idle agents, and a task printing 1 GB.

    .venv/bin/python -m bench.footprint [--parts agent,fleet,output,install] [--idle 30]
        [--agents 1000]
        [--output-bytes 1073741824] [--quick] [--write] [--json FILE]

- agent: one real `easytask agent` process, idle; resident memory (VmRSS) and CPU used over
  `--idle` seconds (utime + stime from /proc/PID/stat), before any run, again after one run,
  when its supervisor process is up too (counted with it), and once more after the supervisor
  exited (`--supervisor-idle` seconds without runs, the agent's default 60);
- fleet: one real server with `--agents` simulated agents connected (bench/agentsim.py, one
  process, each agent its own reverse SSH link); the server's RSS and CPU over `--idle` seconds of
  idle keepalives;
- output: one task on a real agent prints `--output-bytes` (1 GB) of 1,000-byte lines; the
  server's peak RSS (VmHWM), with the stored output cut at 32 MiB as tests/test_reliability.py does;
- install: the wheel built from the tree, installed into two empty venvs as a user would
  (tests/support/wheel.py): `pip install easytask` (an agent's) and `pip install
  'easytask[server]'`; each venv's site-packages (`du -sk`) and distributions, and the idle RSS
  and CPU of a connected `easytask agent` started from each against one real server.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import (
    DOC,
    conditions_lines,
    exit_on_sigterm,
    load_average,
    proc_cpu_seconds,
    proc_rss_kib,
    raise_nofile,
    software_versions,
    start_agent,
    start_agentsim,
    start_server,
    wait_job_events,
    write_section,
)
from tests.support import (
    Procs,
    children_of,
    cmdline,
    launch_agent,
    wait_until,
)
from tests.support.wheel import build_wheel, install_venv, installed_distributions

PARTS = {
    "agent": "One idle agent",
    "fleet": "A server with 1,000 idle agents",
    "output": "One task printing 1 GB",
    "install": "An agent's install",
}
TARGETS = {"agent_rss_mib": 45, "server_rss_mib": 300, "server_cpu_pct": 5.0, "output_mib": 300}
# Salt does not document the minion's memory use; these are reports in its issue tracker.
SALT_REPORTS = [
    (
        "75.7 MiB VmRSS, one idle salt-minion 2014.7.5 (Python 2.7)",
        "https://github.com/saltstack/salt/issues/23167",
    ),
    (
        "40–60 MB for each of 3 processes, about 150 MB idle in total",
        "https://github.com/saltstack/salt/issues/23405",
    ),
    (
        "about 100 MB for every minion (2022)",
        "https://github.com/saltstack/salt/issues/61766",
    ),
]


def say(text: str) -> None:
    sys.stderr.write(f"[footprint {time.strftime('%H:%M:%S')}] {text}\n")
    sys.stderr.flush()


def mib(kib: int) -> float:
    return kib / 1024


def idle_window(pids: list[int], seconds: float) -> tuple[float, float]:
    """Sum of the processes' RSS (MiB, at the end) and their CPU % of one core over the window."""
    before = sum(proc_cpu_seconds(p) for p in pids)
    time.sleep(seconds)
    after = sum(proc_cpu_seconds(p) for p in pids)
    rss = sum(proc_rss_kib(p) for p in pids)
    return mib(rss), 100.0 * (after - before) / seconds


def agent_part(
    root: Path, idle: float, settle: float, supervisor_idle: float = 60.0
) -> dict[str, Any]:
    procs = Procs()
    try:
        inventory = root / "inventory.ini"
        inventory.write_text("")
        server = start_server(root / "server-agent", inventory, procs)
        agent = start_agent(
            server,
            "idle1",
            root / "agent-idle1",
            procs,
            "--supervisor-idle",
            f"{supervisor_idle:g}s",
        )
        time.sleep(settle)  # let the enrolment and the first facts settle
        rss0, cpu0 = idle_window([agent.pid], idle)
        say(f"agent before a run: {rss0:.1f} MiB, {cpu0:.3f}% CPU")
        job = server.post("/api/jobs", {"pattern": "idle1", "command": "true"})
        state = wait_job_events(server.http, job["job"]["id"])
        if state != "success":
            raise RuntimeError(f"`true` on the agent ended {state}")
        supervisors = wait_until(
            lambda: [p for p in children_of(agent.pid) if "supervisor" in cmdline(p)],
            timeout=10,
            what="the agent's supervisor process",
        )
        time.sleep(settle)
        both_rss, both_cpu = idle_window([agent.pid, *supervisors], idle)
        sup_rss = sum(mib(proc_rss_kib(p)) for p in supervisors)
        say(f"agent + supervisor after a run: {both_rss:.1f} MiB, {both_cpu:.3f}% CPU")
        # no run for --supervisor-idle: the supervisor exits and the agent is one process again
        wait_until(
            lambda: not [p for p in children_of(agent.pid) if "supervisor" in cmdline(p)],
            timeout=supervisor_idle + 30,
            what="the idle supervisor to exit",
        )
        time.sleep(settle)
        rss2, cpu2 = idle_window([agent.pid], idle)
        say(f"agent idle again, supervisor gone: {rss2:.1f} MiB, {cpu2:.3f}% CPU")
        return {
            "idle_again_rss": rss2,
            "idle_again_cpu": cpu2,
            "supervisor_idle": supervisor_idle,
            "before_rss": rss0,
            "before_cpu": cpu0,
            "after_agent_rss": both_rss - sup_rss,
            "supervisor_rss": sup_rss,
            "after_rss": both_rss,
            "after_cpu": both_cpu,
            "supervisors": len(supervisors),
            "idle": idle,
        }
    finally:
        procs.stop_all()


def fleet_part(root: Path, count: int, idle: float, settle: float) -> dict[str, Any]:
    procs = Procs()
    try:
        inventory = root / "inventory.ini"
        inventory.write_text("")
        server = start_server(root / "server-fleet", inventory, procs)
        rss_empty = mib(proc_rss_kib(server.proc.pid))
        token = server.post("/api/agents/tokens", {"uses": count, "ttl": "1h"})["token"]
        t0 = time.perf_counter()
        sim = start_agentsim(
            procs,
            server,
            count,
            "idle",
            "idle",
            token,
            root / "sim",
            root / "agentsim.log",
            "--keepalive",
            "15",  # the `easytask agent` default
        )

        def all_online() -> bool:
            if not sim.alive():
                raise RuntimeError(f"agentsim exited:\n{sim.tail()}")
            return server.online("idle") >= count

        wait_until(all_online, timeout=120 + count / 5, interval=0.5, what=f"{count} agents online")
        connect = time.perf_counter() - t0
        say(f"{count} agents online after {connect:.1f} s")
        time.sleep(settle)  # let the enrolments settle
        cpu0 = proc_cpu_seconds(server.proc.pid)
        sim0 = proc_cpu_seconds(sim.pid)
        time.sleep(idle)
        cpu = 100.0 * (proc_cpu_seconds(server.proc.pid) - cpu0) / idle
        sim_cpu = 100.0 * (proc_cpu_seconds(sim.pid) - sim0) / idle
        rss = mib(proc_rss_kib(server.proc.pid))
        online = server.online("idle")
        say(f"server with {count} idle agents: {rss:.1f} MiB, {cpu:.2f}% CPU")
        return {
            "agents": count,
            "online_after": online,
            "connect": connect,
            "server_rss_empty": rss_empty,
            "server_rss": rss,
            "server_hwm": mib(proc_rss_kib(server.proc.pid, "VmHWM")),
            "server_cpu": cpu,
            "sim_rss": mib(proc_rss_kib(sim.pid)),
            "sim_cpu": sim_cpu,
            "idle": idle,
        }
    finally:
        procs.stop_all()


def output_part(root: Path, size: int) -> dict[str, Any]:
    procs = Procs()
    try:
        inventory = root / "inventory.ini"
        inventory.write_text("")
        server = start_server(root / "server-output", inventory, procs, "--output-limit", "32M")
        start_agent(server, "huge1", root / "agent-huge1", procs, "--spool-cap", "2G")
        rss0 = mib(proc_rss_kib(server.proc.pid))
        hwm0 = mib(proc_rss_kib(server.proc.pid, "VmHWM"))
        # Reset the peak so that VmHWM tells the peak while the output flows, not at start-up.
        Path(f"/proc/{server.proc.pid}/clear_refs").write_text("5")
        command = f"yes \"$(printf '%0999d' 0)\" | head -c {size}"
        t0 = time.perf_counter()
        job = server.post("/api/jobs", {"pattern": "huge1", "command": command})
        state = wait_job_events(server.http, job["job"]["id"])
        elapsed = time.perf_counter() - t0
        run = server.get(f"/api/jobs/{job['job']['id']}")["runs"][0]
        if state != "success" or run["out_bytes"] != size:
            raise RuntimeError(f"the 1 GB task ended {state}, {run['out_bytes']} bytes counted")
        hwm = mib(proc_rss_kib(server.proc.pid, "VmHWM"))
        say(f"{size} bytes in {elapsed:.1f} s; server peak RSS {hwm:.1f} MiB")
        return {
            "bytes": size,
            "seconds": elapsed,
            "server_rss_before": rss0,
            "server_hwm_before": hwm0,
            "server_hwm": hwm,
            "truncated": bool(run.get("truncated")),
        }
    finally:
        procs.stop_all()


def install_part(root: Path, idle: float, settle: float) -> dict[str, Any]:
    """Size of an agent's install and of a server's, and the idle agent each one runs."""
    wheel = build_wheel(root / "dist")
    installs = {"agent": str(wheel), "full": f"{wheel}[server]"}
    out: dict[str, Any] = {}
    procs = Procs()
    try:
        inventory = root / "inventory.ini"
        inventory.write_text("")
        server = start_server(root / "server-install", inventory, procs)
        for kind, requirement in installs.items():
            venv = install_venv(root / f"venv-{kind}", requirement)
            (site,) = (venv / "lib").glob("python3*/site-packages")
            du = subprocess.run(
                ["du", "-sk", str(site)], capture_output=True, text=True, check=True
            )
            agent = launch_agent(
                procs,
                server,
                f"install-{kind}",
                root / f"agent-{kind}",
                command=[str(venv / "bin" / "easytask")],
                timeout=60,
                interval=0.1,
            )
            time.sleep(settle)
            rss, cpu = idle_window([agent.pid], idle)
            out[kind] = {
                "site_kib": int(du.stdout.split()[0]),
                "distributions": sorted(installed_distributions(venv)),
                "rss": rss,
                "cpu": cpu,
            }
            say(
                f"{kind} install: {out[kind]['site_kib'] / 1024:.1f} MiB in site-packages, "
                f"{len(out[kind]['distributions'])} distributions; idle agent {rss:.1f} MiB, "
                f"{cpu:.3f}% CPU"
            )
    finally:
        procs.stop_all()
    out["idle"] = idle
    return out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    raise_nofile()
    root = Path(tempfile.mkdtemp(prefix="efp-", dir=args.workdir or "/tmp"))
    rec: dict[str, Any] = {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "argv": args.argv,
        "load_before": load_average(),
        "versions": software_versions(),
    }
    try:
        for part in PARTS:
            if part not in args.parts:
                continue
            load = load_average()
            if part == "agent":
                rec[part] = agent_part(root, args.idle, args.settle, args.supervisor_idle)
            elif part == "fleet":
                rec[part] = fleet_part(root, args.agents, args.idle, args.settle)
            elif part == "install":
                rec[part] = install_part(root, args.idle, args.settle)
            else:
                rec[part] = output_part(root, args.output_bytes)
            rec[part].update(load_before=load, load_after=load_average())
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rec["load_after"] = load_average()
    return rec


def _verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def report(rec: dict[str, Any], only: str | None = None) -> list[str]:
    """The figures as Markdown lines (tables and target verdicts), of every part or one."""
    out: list[str] = []
    rec = {k: v for k, v in rec.items() if only is None or k not in PARTS or k == only}
    if "agent" in rec:
        a = rec["agent"]
        out += [
            f"**One idle `easytask agent`** (CPU over {a['idle']:g} s idle, % of one core):",
            "",
            "| | RSS MiB | CPU % |",
            "|---|---:|---:|",
            f"| agent, before any run | {a['before_rss']:.1f} | {a['before_cpu']:.3f} |",
            f"| agent, after one run | {a['after_agent_rss']:.1f} | |",
            f"| its supervisor ({a['supervisors']} process) | {a['supervisor_rss']:.1f} | |",
            f"| agent + supervisor, after one run | {a['after_rss']:.1f} | {a['after_cpu']:.3f} |",
            f"| agent, {a['supervisor_idle']:g} s after the run (supervisor exited) | "
            f"{a['idle_again_rss']:.1f} | {a['idle_again_cpu']:.3f} |",
            "",
            "salt-minion, from Salt's issue tracker (its documentation gives no figure): "
            + "; ".join(f"{text} ({url})" for text, url in SALT_REPORTS)
            + f". Ours: {a['idle_again_rss']:.0f} MiB idle "
            f"({75.7 / a['idle_again_rss']:.1f}x less than the first report's 75.7 MiB), "
            f"{a['after_rss']:.0f} MiB while its supervisor is up.",
            "",
            f"- idle agent RSS <= {TARGETS['agent_rss_mib']} MiB: "
            f"{_verdict(a['idle_again_rss'] <= TARGETS['agent_rss_mib'])} — "
            f"{a['idle_again_rss']:.1f} MiB; with its supervisor (running commands): "
            f"{a['after_rss']:.1f} MiB",
            f"- idle CPU about 0: {_verdict(a['after_cpu'] < 0.5)} — {a['after_cpu']:.3f}% of a "
            f"core ({a['after_cpu'] / 100 * a['idle']:.2f} CPU-s in {a['idle']:g} s)",
            "",
        ]
    if "fleet" in rec:
        f = rec["fleet"]
        out += [
            f"**A server with {f['agents']:,} idle agents** ({f['online_after']:,} online at the "
            f"end; all connected {f['connect']:.0f} s after the simulator started; keepalive "
            f"every 15 s from each agent, every 10 s from the server; CPU over {f['idle']:g} s):",
            "",
            "| | RSS MiB | CPU % of a core |",
            "|---|---:|---:|",
            f"| server, no agents | {f['server_rss_empty']:.1f} | |",
            f"| server, {f['agents']:,} agents | {f['server_rss']:.1f} "
            f"(peak {f['server_hwm']:.1f}) | {f['server_cpu']:.2f} |",
            f"| the {f['agents']:,} simulated agents (one process) | {f['sim_rss']:.1f} | "
            f"{f['sim_cpu']:.2f} |",
            "",
            f"- server RSS <= {TARGETS['server_rss_mib']} MiB: "
            f"{_verdict(f['server_rss'] <= TARGETS['server_rss_mib'])} — {f['server_rss']:.1f} MiB",
            f"- server CPU < {TARGETS['server_cpu_pct']:g}% of a core: "
            f"{_verdict(f['server_cpu'] < TARGETS['server_cpu_pct'])} — {f['server_cpu']:.2f}%",
            "",
        ]
    if "output" in rec:
        o = rec["output"]
        gib = o["bytes"] / (1 << 30)
        out += [
            f"**One task printing {o['bytes']:,} bytes** ({gib:.2f} GiB of 1,000-byte lines; "
            "server `--output-limit 32M`, agent `--spool-cap 2G`): "
            f"{o['seconds']:.1f} s ({o['bytes'] / o['seconds'] / 1e6:.0f} MB/s), server RSS "
            f"{o['server_rss_before']:.1f} MiB before (peak since start-up "
            f"{o['server_hwm_before']:.1f} MiB; the peak is then reset through "
            f"`/proc/PID/clear_refs`), peak (VmHWM) while the output flowed "
            f"{o['server_hwm']:.1f} MiB.",
            "",
            f"- server peak RSS < {TARGETS['output_mib']} MiB: "
            f"{_verdict(o['server_hwm'] < TARGETS['output_mib'])} — {o['server_hwm']:.1f} MiB",
            "",
        ]
    if "install" in rec:
        i = rec["install"]
        rows = (
            ("agent", "`pip install easytask` (an agent's)"),
            ("full", "`pip install 'easytask[server]'`"),
        )
        out += [
            f"**An agent's install against a server's** (site-packages of an empty venv, `du -sk`; "
            f"a connected `easytask agent` from each, idle {i['idle']:g} s, against one server):",
            "",
            "| install | distributions | site-packages MiB | idle agent RSS MiB | CPU % |",
            "|---|---:|---:|---:|---:|",
            *(
                f"| {label} | {len(i[k]['distributions'])} | {i[k]['site_kib'] / 1024:.1f} | "
                f"{i[k]['rss']:.1f} | {i[k]['cpu']:.3f} |"
                for k, label in rows
            ),
            "",
            f"An agent's install: {', '.join(i['agent']['distributions'])}. "
            f"{i['agent']['site_kib'] / i['full']['site_kib']:.0%} of the server's install on "
            "disk; the agent loads the same modules from either, so its memory is the same.",
            "",
        ]
    return out


INTRO = """\
`bench/footprint.py` measures what EasyTask costs while it waits, and the server's memory under a
flood of output:

- **agent**: one idle `easytask agent`: RSS and CPU over 30 s, before any run, with its
  supervisor up after a run, and after the supervisor exited (`--supervisor-idle`, 60 s).
- **fleet**: a server with 1,000 simulated agents connected: its RSS and CPU over 30 s of idle
  keepalives.
- **output**: one task prints 1 GB; the server's peak RSS (VmHWM).
- **install**: an agent's install (`pip install easytask`) against a server's
  (`pip install 'easytask[server]'`), each into an empty venv from the wheel built from the tree:
  site-packages on disk, and a connected agent's idle RSS from each.

Run it with `.venv/bin/python -m bench.footprint --write` (`--parts agent,fleet,output,install`
picks parts, each with its own section); `--quick` uses 1 s windows, 20 agents and 10 MB of
output."""


def write_doc(rec: dict[str, Any]) -> None:
    """Rewrite the measured parts' sections of docs/benchmarks.md (the others are kept)."""
    text = DOC.read_text()
    if "<!-- footprint-agent:begin -->" not in text:
        text = text.rstrip("\n") + f"\n\n## Footprint\n\n{INTRO}\n"
        for part, title in PARTS.items():
            text += (
                f"\n### {title}\n\n<!-- footprint-{part}:begin -->\nNot measured yet."
                f"\n<!-- footprint-{part}:end -->\n"
            )
        DOC.write_text(text)
    for part in PARTS:
        if part in rec:
            r = rec[part]
            lines = conditions_lines(
                ["-m", "bench.footprint", *rec["argv"]],
                rec["when"],
                r.get("load_before", rec["load_before"]),
                r.get("load_after", rec["load_after"]),
                rec.get("versions"),
            )
            body = "\n".join([*lines, "", *report(rec, only=part)])
            write_section(DOC, f"footprint-{part}", PARTS[part], "", body)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument(
        "--parts", default="agent,fleet,output,install", help="which parts (comma separated)"
    )
    p.add_argument("--idle", type=float, default=30.0, help="idle window in seconds (default 30)")
    p.add_argument("--agents", type=int, default=1000, help="agents in the fleet part (1000)")
    p.add_argument("--output-bytes", type=int, default=1 << 30, help="output size (1 GiB)")
    p.add_argument("--settle", type=float, default=5.0, help="wait before each window (5 s)")
    p.add_argument("--quick", action="store_true", help="1 s windows, 20 agents, 10 MB (smoke)")
    p.add_argument(
        "--supervisor-idle",
        type=float,
        default=60.0,
        help="the agent's --supervisor-idle in seconds (its default, 60)",
    )
    p.add_argument("--write", action="store_true", help="rewrite its section of docs/benchmarks.md")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    p.add_argument("--workdir", help="where the temp dir goes (default /tmp)")
    p.add_argument("--report", metavar="FILE", help="measure nothing: report an earlier --json")
    args = p.parse_args(argv)
    args.parts = {s.strip() for s in args.parts.split(",") if s.strip()}
    if args.parts - set(PARTS) or not args.parts:
        p.error("--parts: agent, fleet, output, install")
    if args.quick:
        args.idle, args.settle, args.agents, args.output_bytes = 1.0, 0.5, 20, 10 << 20
        args.supervisor_idle = 3.0
    args.argv = list(argv)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    exit_on_sigterm()
    rec = json.loads(Path(args.report).read_text()) if args.report else measure(args)
    print(f"load average before: {rec['load_before']}, after: {rec['load_after']}")
    for line in report(rec):
        print(line.replace("**", "").replace("`", ""))
    if args.json and not args.report:
        Path(args.json).write_text(json.dumps(rec, indent=2) + "\n")
    if args.write:
        write_doc(rec)
        say(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
