"""What the benchmarks share beyond the test harness (tests.support): machine facts, reports."""

from __future__ import annotations

import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from tests.support import (
    REPO,
    Proc,
    Procs,
    ServerHandle,
    easytask_cli,
    launch_agent,
    launch_server,
)

DOC = REPO / "docs" / "benchmarks.md"


def raise_nofile() -> int:
    """Raise this process's open-file limit to the hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def start_server(state_dir: Path, inventory: Path, procs: Procs, *extra: str) -> ServerHandle:
    """A real `easytask server` on free loopback ports with its own state dir, run from there;
    its CLI reads an empty config file (nothing from the machine's)."""
    server = launch_server(
        procs,
        state_dir,
        "--agents",
        "127.0.0.1:0",
        "--inventory",
        str(inventory),
        *extra,
        cwd=state_dir,
        http_timeout=60,
    )
    config = state_dir / "cli-config.toml"
    config.write_text("")
    server.cli_config = str(config)
    return server


def start_server_on(
    root: Path, backend: str, pg: Any, procs: Procs, state_name: str
) -> tuple[ServerHandle, str]:
    """A server with an empty inventory on `backend` (`postgresql`: a new database of `pg`;
    else SQLite in its state dir); the server and its database URL."""
    inventory = root / "inventory.ini"
    inventory.write_text("")
    state = root / state_name
    if backend == "postgresql":
        url = pg.new_database()
        return start_server(state, inventory, procs, "--db", url), url
    return start_server(state, inventory, procs), f"sqlite:///{state / 'easytask.db'}"


def start_agentsim(
    procs: Procs,
    server: ServerHandle,
    count: int,
    prefix: str,
    group: str,
    token: str,
    state_dir: Path,
    log: Path,
    *options: str,
) -> Proc:
    """COUNT simulated agents in one process (bench/agentsim.py) enrolling with `token`, named
    PREFIX0001..., in `group`; run from the log's directory."""
    args = [
        sys.executable,
        str(REPO / "bench" / "agentsim.py"),
        "--server",
        server.agents_addr,
        "--count",
        str(count),
        "--prefix",
        prefix,
        "--state-dir",
        str(state_dir),
        "--enroll",
        token,
        "--group",
        group,
        *options,
    ]
    return procs.start(args, log, cwd=log.parent)


def stop_server(server: ServerHandle, procs: Procs) -> None:
    """Stop a server before the others (its client first)."""
    server.close()
    procs.stop(server.proc)


# -- the machine and the software ------------------------------------------------------------------


def machine_info() -> dict[str, str]:
    """CPU count and model, memory, kernel."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    except (OSError, ValueError):
        pass
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpus": str(cpus),
        "cpu_model": model or platform.processor() or "?",
        "memory": mem or "?",
        "kernel": f"{platform.system()} {platform.release()}",
    }


def openssh_version() -> str:
    """`OpenSSH_9.2p1 ...` as printed by `ssh -V`."""
    try:
        done = subprocess.run(["ssh", "-V"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return (done.stderr or done.stdout).strip().split(",")[0] or "?"


def cpu_counters() -> tuple[int, int]:
    """Total and idle jiffies of all CPUs so far (from /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(fields), fields[3] + (fields[4] if len(fields) > 4 else 0)


def busy_since(start: tuple[int, int]) -> float:
    """Percent of all CPUs busy since `start` (a `cpu_counters()` reading), every process counted."""
    total, idle = cpu_counters()
    span = total - start[0]
    return 100.0 * (1 - (idle - start[1]) / span) if span > 0 else 0.0


def cpu_busy(seconds: float = 2.0) -> float:
    """Percent of all CPUs busy over the next `seconds`."""
    start = cpu_counters()
    time.sleep(seconds)
    return busy_since(start)


def git_revision() -> str:
    """The checked-out commit, marked when the working tree has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    if not head:
        return "?"
    return f"{head} + uncommitted changes" if dirty else head


def start_fleet(
    procs: Procs,
    server: ServerHandle,
    agents: int,
    processes: int,
    prefix: str,
    group: str,
    state_dir: Path,
    logs: Path,
    *options: str,
) -> list[Proc]:
    """AGENTS simulated agents over PROCESSES simulator processes, enrolling with one token of
    `server` (agents PREFIX0-0001...; process P logs to LOGS-P.log)."""
    per = -(-agents // processes)
    token = server.post("/api/agents/tokens", {"uses": agents, "ttl": "2h"})["token"]
    sims, left = [], agents
    for p in range(processes):
        count = min(per, left)
        left -= count
        if count <= 0:
            break
        log = logs.with_name(f"{logs.name}-{p}.log")
        sims.append(
            start_agentsim(
                procs, server, count, f"{prefix}{p}-", group, token, state_dir, log, *options
            )  # fmt: skip
        )
    return sims


def measured(
    args: Any, module: str, argv: Sequence[str] | None, measure: Callable[[Any, Path], Any]
) -> Record:
    """Run `measure(args, a temporary directory)` (under --workdir when given) and wrap what it
    found in a record: when, the command, the load average before and after."""
    load_before = load_average()
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"bench-{module}-", dir=args.workdir) as tmp:
        result = measure(args, Path(tmp))
    return {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": ["-m", f"bench.{module}", *(argv if argv is not None else [])],
        "load_before": load_before,
        "load_after": load_average(),
        "result": result,
    }


# -- shared by the roundtrip, ingest and footprint benchmarks --------------------------------------


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as `uptime` shows them."""
    try:
        one, five, fifteen = Path("/proc/loadavg").read_text().split()[:3]
    except (OSError, ValueError):
        return "?"
    return f"{one}, {five}, {fifteen}"


def proc_rss_kib(pid: int, field: str = "VmRSS") -> int:
    """A memory figure of a process in KiB from /proc/PID/status (VmRSS, VmHWM...)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise ValueError(f"no {field} for pid {pid}")


CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds a process has used so far (/proc/PID/stat utime+stime)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def start_agent(
    server: ServerHandle, name: str, state_dir: Path, procs: Procs, *extra: str, timeout: float = 60
) -> Proc:
    """A real `easytask agent` process, enrolled with a one-use token, waited for online."""
    return launch_agent(
        procs,
        server,
        name,
        state_dir,
        *extra,
        command=easytask_cli(),
        timeout=timeout,
        interval=0.1,
    )


def wait_job_events(http: httpx.Client, job_id: int) -> str:
    """Follow GET /api/jobs/ID/events?lines=0 until the job's final event; its state."""
    with http.stream(
        "GET", f"/api/jobs/{job_id}/events", params={"lines": "0"}, timeout=httpx.Timeout(60.0)
    ) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line[6:])
                if event.get("t") == "job":
                    return str(event["state"])
    raise RuntimeError(f"the event stream of job {job_id} ended without a final state")


def percentile(values: list[float], pct: float) -> float:
    """The pct-th percentile (nearest rank) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def write_section(doc: Path, name: str, title: str, intro: str, block: str) -> None:
    """Replace `<!-- NAME:begin -->`..`<!-- NAME:end -->` in doc, or add `## TITLE` with it.

    Only that section changes; every other part of the page is kept as it is.
    """
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    body = f"{begin}\n{block.strip()}\n{end}"
    if begin in text and end in text:
        head, _, rest = text.partition(begin)
        _, _, tail = rest.partition(end)
        text = head + body + tail
    else:
        text = text.rstrip("\n") + f"\n\n## {title}\n\n{intro.strip()}\n\n{body}\n"
    doc.write_text(text)


Record = dict[str, Any]


def run(
    argv: Sequence[str] | None,
    parse_args: Callable[[list[str]], Any],
    measure: Callable[[Any], Record],
    table: Callable[..., str],
    notes: Callable[[Record], list[str]],
    block: Callable[[Record], str],
    section: tuple[str, str, str],
    say: Callable[[str], None],
) -> int:
    """A benchmark's main: parse the arguments, measure, print the figures and notes; save the
    record (--json) and its section (`section` = name, title, intro) of docs/benchmarks.md
    (--write)."""
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    exit_on_sigterm()
    rec = measure(args)
    print(f"load average before: {rec['load_before']}, after: {rec['load_after']}")
    print(table(rec, markdown=False))
    lines = notes(rec)
    if lines:
        print()
    for line in lines:
        print(line.replace("**", "").replace("`", ""))
    save(args, rec, section, block(rec), say)
    return 0


def save(
    args: Any, rec: Record, section: tuple[str, str, str], text: str, say: Callable[[str], None]
) -> None:
    """Keep a benchmark's record (--json) and write its section (`section` = name, title,
    intro; `text` its figures) of docs/benchmarks.md (--write)."""
    if args.json:
        Path(args.json).write_text(json.dumps(rec, indent=2) + "\n")
    if args.write:
        write_section(DOC, *section, text)
        say(f"wrote {DOC}")


def shown_python() -> str:
    """The interpreter as a user would type it: relative when it is the repo's venv."""
    exe = Path(sys.executable)
    try:
        return str(exe.relative_to(REPO))
    except ValueError:
        return "python"


def dist_version(dist: str) -> str:
    """The installed version of a distribution, "?" when it is not installed."""
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def software_versions() -> dict[str, str]:
    """Python, EasyTask (with the revision), asyncssh, SQLite, OpenSSH."""
    import sqlite3

    version = dist_version
    return {
        "python": platform.python_version(),
        "easytask": f"{version('easytask')} (revision {git_revision()})",
        "asyncssh": version("asyncssh"),
        "sqlite": sqlite3.sqlite_version,
        "openssh": openssh_version(),
    }


def conditions_lines(
    command: list[str],
    when: str,
    load_before: str,
    load_after: str,
    versions: dict[str, str] | None = None,
) -> list[str]:
    """The command, machine, software and load lines every report section starts with."""
    import shlex

    m, v = machine_info(), versions or software_versions()
    niceness = os.nice(0)
    nice = f"nice -n {niceness} " if niceness > 0 else ""
    return [
        f"Measured {when} with:",
        "",
        "```sh",
        nice + " ".join(shlex.quote(a) for a in [shown_python(), *command]),
        "```",
        "",
        f"- Machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['memory']} RAM, {m['kernel']}",
        f"- Software: Python {v['python']}, EasyTask {v['easytask']}, asyncssh {v['asyncssh']}, "
        f"SQLite {v['sqlite']}, {v['openssh']}",
        f"- Load average (1, 5, 15 min; the machine is shared): {load_before} before, "
        f"{load_after} after",
    ]


def exit_on_sigterm() -> None:
    """SIGTERM unwinds through `finally` blocks (which stop every child) like Ctrl-C does."""

    def _terminate(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _terminate)
