"""Fan-out benchmark: wall clock of `easytask run PATTERN -a true` against Ansible.

    .venv/bin/python -m bench.fanout [--sizes 10,100,200,500] [--repeat 3] [--ansible-max 200]
        [--ansible-venv /tmp/easytask-bench-ansible] [--no-ansible] [--no-agentless]
        [--quick] [--json FILE] [--write] [--wait-idle SECONDS] [--workdir DIR] [--keep]

For each N it measures, from CLI start to exit, with the real CLI as a subprocess:
- `easytask run sim -a true` on N agents (bench/agentsim.py: one process, N real reverse SSH links);
- `easytask run plain -a true` on N agentless aliases of one loopback sshd, first run (cold) and
  again (connections pooled by the server);
- a bare asyncssh fan-out over N connections to the same sshd (the transport's floor);
- `ansible all -m command -a true -f 50` and `-m raw`, cold (no ControlPersist master) and warm.
Every figure is the median of `--repeat` runs. Ansible lives in a throwaway venv, never in ours.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import (
    DOC,
    busy_since,
    cpu_busy,
    cpu_counters,
    dist_version,
    git_revision,
    machine_info,
    openssh_version,
    raise_nofile,
    shown_python,
    start_agentsim,
    start_server,
    stop_server,
)
from tests.support import (
    SSHD,
    Procs,
    ServerHandle,
    easytask_cli,
    start_sshd,
    wait_until,
)

BEGIN, END = "<!-- fanout:begin -->", "<!-- fanout:end -->"
ANSIBLE_FORKS = 50
IDLE_BUSY = 15.0  # percent of all CPUs; above it the machine counts as busy with other work
TARGETS = {
    "agents_vs_command": 50.0,
    "agents_vs_raw_warm": 5.0,
    "agents_vs_floor": 1.5,  # at most this many times bare asyncssh (warm) plus CLI start
    "agentless_cold": 3.0,
    "agentless_pooled": 20.0,
    "agents_500_seconds": 2.0,
    "agents_1000_seconds": 3.0,
}


def say(text: str) -> None:
    """Progress goes to stderr; the table goes to stdout."""
    sys.stderr.write(f"[fanout {time.strftime('%H:%M:%S')}] {text}\n")
    sys.stderr.flush()


class BenchError(Exception):
    """A measurement that did not complete as it should."""


@dataclass
class Row:
    """Every sample taken for one fleet size N (seconds)."""

    n: int
    agents: list[float] = field(default_factory=list)
    agents_connect: float | None = None
    ssh_cold: list[float] = field(default_factory=list)
    ssh_pooled: list[float] = field(default_factory=list)
    floor_cold: list[float] = field(default_factory=list)
    floor_warm: list[float] = field(default_factory=list)
    ans_cmd_cold: list[float] = field(default_factory=list)
    ans_cmd_warm: list[float] = field(default_factory=list)
    ans_raw_cold: list[float] = field(default_factory=list)
    ans_raw_warm: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def med(self, name: str) -> float | None:
        values = getattr(self, name)
        return statistics.median(values) if values else None


COLUMNS: list[tuple[str, str, str]] = [
    ("agents", "agents", "`easytask run sim -a true`, N agents"),
    ("ssh_cold", "agentless cold", "`easytask run plain -a true`, first run (connects N times)"),
    ("ssh_pooled", "agentless pooled", "the same again, connections kept by the server"),
    ("floor_cold", "asyncssh cold", "bare asyncssh: connect N + run `true` (no EasyTask)"),
    ("floor_warm", "asyncssh warm", "bare asyncssh: run `true` on N open connections"),
    (
        "ans_cmd_cold",
        "ansible command cold",
        f"`ansible all -m command -a true -f {ANSIBLE_FORKS}`, no master",
    ),
    ("ans_cmd_warm", "ansible command warm", "the same with ControlPersist masters alive"),
    (
        "ans_raw_cold",
        "ansible raw cold",
        f"`ansible all -m raw -a true -f {ANSIBLE_FORKS}`, no master",
    ),
    ("ans_raw_warm", "ansible raw warm", "the same with ControlPersist masters alive"),
]


# -- the parts ------------------------------------------------------------------------------------


class Bench:
    """Owns the temp dir, every child process, the sshd and the Ansible set-up."""

    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args = args
        self.root = root
        self.procs = Procs()
        self.sshd: SSHD | None = None
        self.ansible: Path | None = None
        self.ansible_version = ""
        self.cp_dir = root / "cp"
        self.cli = easytask_cli()
        self.cli_startup: float | None = None
        self.busy_before: list[float] = []
        self.busy_during: float | None = None
        self.revision = git_revision()

    # -- set-up ------------------------------------------------------------------------------

    def setup(self) -> None:
        if self.args.agentless or self.args.ansible:
            try:
                self.sshd = start_sshd(self.root / "sshd", self.procs)
                say(f"sshd on 127.0.0.1:{self.sshd.port}")
            except (FileNotFoundError, RuntimeError, TimeoutError) as exc:
                say(f"no sshd ({exc}): skipping agentless and Ansible")
                self.args.agentless = self.args.ansible = False
        if self.args.ansible:
            self.ansible = self._ensure_ansible(Path(self.args.ansible_venv))
            if self.ansible is None:
                self.args.ansible = False
        samples = []
        for _ in range(3):
            t0 = time.perf_counter()
            subprocess.run([*self.cli, "--version"], capture_output=True, check=True)
            samples.append(time.perf_counter() - t0)
        self.cli_startup = statistics.median(samples)

    @staticmethod
    def _wait_idle(max_wait: float) -> float:
        """Wait (up to max_wait s) for other work on the machine to calm down; return its CPU %."""
        deadline = time.monotonic() + max_wait
        busy = cpu_busy(2.0)
        while busy > IDLE_BUSY and time.monotonic() < deadline:
            say(f"machine is {busy:.0f}% busy before start; waiting (--wait-idle)")
            time.sleep(5)
            busy = cpu_busy(2.0)
        return busy

    def _ensure_ansible(self, venv: Path) -> Path | None:
        """ansible-core in a throwaway venv (created on first use); never a project dependency."""
        ansible = venv / "bin" / "ansible"
        if not ansible.exists():
            say(f"creating {venv} with ansible-core (throwaway, not a project dependency)")
            base = (
                getattr(sys, "_base_executable", None) or shutil.which("python3") or sys.executable
            )
            try:
                subprocess.run([base, "-m", "venv", str(venv)], check=True)
                subprocess.run(
                    [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "ansible-core"],
                    check=True,
                )
            except (OSError, subprocess.CalledProcessError) as exc:
                say(f"cannot install ansible-core ({exc}): skipping Ansible")
                return None
        done = subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-c",
                "import ansible.release as r; print(r.__version__)",
            ],
            capture_output=True,
            text=True,
        )
        self.ansible_version = done.stdout.strip() or "?"
        return ansible

    def close(self) -> None:
        self.stop_masters()
        self.procs.stop_all()

    # -- inventories --------------------------------------------------------------------------

    def easytask_inventory(self, n: int) -> Path:
        """Group `plain`: N aliases of the sshd, each with its own known_hosts copy.

        The server pools connections per (address, port, user, key, known_hosts); a distinct
        known_hosts path per alias gives each alias its own connection, as N real hosts would.
        """
        path = self.root / f"inventory-{n}.ini"
        lines = ["[plain]"]
        if self.sshd is not None:
            kh_dir = self.root / "known_hosts"
            kh_dir.mkdir(exist_ok=True)
            for i in range(1, n + 1):
                name = f"s{i:03d}"
                kh = kh_dir / name
                if not kh.exists():
                    shutil.copyfile(self.sshd.known_hosts, kh)
                lines.append(
                    f"{name} easytask_connection=ssh ansible_host=127.0.0.1 "
                    f"ansible_port={self.sshd.port} ansible_user={self.sshd.user} "
                    f"ansible_ssh_private_key_file={self.sshd.client_key} easytask_known_hosts={kh}"
                )
        path.write_text("\n".join(lines) + "\n")
        return path

    def ansible_inventory(self, n: int) -> Path:
        """Hosts h001..hNNN on the sshd, each with its own ControlPath (its own master)."""
        assert self.sshd is not None
        self.cp_dir.mkdir(exist_ok=True)
        path = self.root / f"ansible-{n}.ini"
        common = shlex.quote(f"-o UserKnownHostsFile={self.sshd.known_hosts}")
        lines = ["[bench]"]
        lines += [
            f"h{i:03d} ansible_control_path={self.cp_dir / f'h{i:03d}'}" for i in range(1, n + 1)
        ]
        lines += [
            "",
            "[bench:vars]",
            "ansible_host=127.0.0.1",
            f"ansible_port={self.sshd.port}",
            f"ansible_user={self.sshd.user}",
            f"ansible_ssh_private_key_file={self.sshd.client_key}",
            "ansible_python_interpreter=/usr/bin/python3",
            f"ansible_ssh_common_args={common}",
        ]
        path.write_text("\n".join(lines) + "\n")
        return path

    # -- measurements ---------------------------------------------------------------------------

    def time_cli(self, server: ServerHandle, pattern: str, n: int) -> float:
        """Wall clock of the real `easytask run PATTERN -a true`, from start to exit."""
        t0 = time.perf_counter()
        done = subprocess.run(
            [*self.cli, "run", pattern, "-a", "true"],
            env=server.env(),
            cwd=server.state_dir,
            capture_output=True,
            text=True,
            timeout=900,
        )
        elapsed = time.perf_counter() - t0
        if done.returncode != 0 or not re.search(rf"{n} host\(s\): {n} success", done.stdout):
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
            raise BenchError(f"easytask run {pattern} exited {done.returncode}:\n{tail}")
        return elapsed

    def measure_agentless(self, row: Row) -> None:
        inventory = self.easytask_inventory(row.n)
        for rep in range(self.args.repeat):
            server = start_server(self.root / f"server-ssh-{row.n}-{rep}", inventory, self.procs)
            try:
                row.ssh_cold.append(self.time_cli(server, "plain", row.n))
                row.ssh_pooled.append(self.time_cli(server, "plain", row.n))
            finally:
                stop_server(server, self.procs)
            say(
                f"N={row.n} agentless: cold {row.ssh_cold[-1]:.2f}s, pooled {row.ssh_pooled[-1]:.2f}s"
            )

    def measure_floor(self, row: Row) -> None:
        assert self.sshd is not None
        cold, warm = asyncio.run(_asyncssh_floor(self.sshd, row.n, self.args.repeat))
        row.floor_cold.append(cold)
        row.floor_warm.extend(warm)
        say(f"N={row.n} asyncssh floor: cold {cold:.2f}s, warm {statistics.median(warm):.2f}s")

    def measure_agents(self, row: Row) -> None:
        n = row.n
        server = start_server(
            self.root / f"server-agents-{n}", self.easytask_inventory(0), self.procs
        )
        sim = None
        try:
            token = server.post("/api/agents/tokens", {"uses": n, "ttl": "1h"})["token"]
            t0 = time.perf_counter()
            sim = start_agentsim(
                self.procs,
                server,
                n,
                "sim",
                "sim",
                token,
                self.root / f"sim-{n}",
                self.root / f"agentsim-{n}.log",
            )

            def all_online() -> bool:
                if not sim.alive():
                    raise BenchError(f"agentsim exited:\n{sim.tail()}")
                return server.online("sim") >= n

            wait_until(all_online, timeout=60 + n / 4, interval=0.2, what=f"{n} agents online")
            row.agents_connect = time.perf_counter() - t0
            say(f"N={n} agents: all online after {row.agents_connect:.1f}s")
            # the connect storm (enrolments, their audit events) settles before the timing, as
            # every step starts from a quiet machine
            self._wait_idle(self.args.wait_idle)
            for _ in range(self.args.repeat):
                # by name: a label an agent reports is no group until an admin approves it
                row.agents.append(self.time_cli(server, "sim*", n))
                say(f"N={n} agents: {row.agents[-1]:.2f}s")
        finally:
            if sim is not None:
                self.procs.stop(sim)
            stop_server(server, self.procs)

    def ansible_run(self, inventory: Path, module: str) -> float:
        assert self.ansible is not None
        home = self.root / "ansible"
        (home / "tmp").mkdir(parents=True, exist_ok=True)
        cfg = home / "ansible.cfg"
        if not cfg.exists():
            cfg.write_text("[defaults]\n")
        env = {
            "PATH": f"{self.ansible.parent}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": str(home),
            "ANSIBLE_CONFIG": str(cfg),
            "ANSIBLE_HOME": str(home / "home"),
            "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "LANG": "C.UTF-8",
        }
        args = [
            str(self.ansible),
            "all",
            "-i",
            str(inventory),
            "-m",
            module,
            "-a",
            "true",
            "-f",
            str(ANSIBLE_FORKS),
        ]
        t0 = time.perf_counter()
        done = subprocess.run(args, env=env, cwd=home, capture_output=True, text=True, timeout=1800)
        elapsed = time.perf_counter() - t0
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
            raise BenchError(f"ansible -m {module} exited {done.returncode}:\n{tail}")
        return elapsed

    def stop_masters(self) -> None:
        """Ask every ControlPersist master of ours to exit (they detach from our process group)."""
        if not self.cp_dir.exists():
            return
        socks = list(self.cp_dir.iterdir())
        for sock in socks:
            subprocess.run(
                ["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "bench-master"],
                capture_output=True,
                timeout=15,
            )
        try:
            wait_until(
                lambda: not any(s.exists() for s in socks), timeout=10, what="masters to exit"
            )
        except TimeoutError:
            for sock in socks:
                sock.unlink(missing_ok=True)

    def measure_ansible(self, row: Row) -> None:
        inventory = self.ansible_inventory(row.n)
        for _ in range(self.args.repeat):
            self.stop_masters()
            row.ans_cmd_cold.append(self.ansible_run(inventory, "command"))
            row.ans_cmd_warm.append(self.ansible_run(inventory, "command"))
            self.stop_masters()
            row.ans_raw_cold.append(self.ansible_run(inventory, "raw"))
            row.ans_raw_warm.append(self.ansible_run(inventory, "raw"))
            self.stop_masters()
            say(
                f"N={row.n} ansible: command {row.ans_cmd_cold[-1]:.2f}s/{row.ans_cmd_warm[-1]:.2f}s, "
                f"raw {row.ans_raw_cold[-1]:.2f}s/{row.ans_raw_warm[-1]:.2f}s (cold/warm)"
            )

    def measure(self, n: int) -> Row:
        row = Row(n)
        steps: list[tuple[str, Any]] = []
        if self.args.agentless:
            steps += [("agentless", self.measure_agentless), ("asyncssh", self.measure_floor)]
        steps.append(("agents", self.measure_agents))
        if self.args.ansible and n <= self.args.ansible_max:
            steps.append(("ansible", self.measure_ansible))
        for name, step in steps:
            # Other people's work on the machine distorts every figure: start each from quiet.
            self.busy_before.append(self._wait_idle(self.args.wait_idle))
            try:
                step(row)
            except (BenchError, TimeoutError, OSError, subprocess.SubprocessError) as exc:
                say(f"N={n} {name} FAILED: {exc}")
                row.errors.append(f"{name}: {exc}")
        return row


async def _asyncssh_floor(sshd: SSHD, n: int, repeat: int) -> tuple[float, list[float]]:
    """Connect N times to the sshd and run `true` on each; then again on the open connections."""
    import asyncssh

    limit = asyncio.Semaphore(64)  # the same connect concurrency as the server's pool

    async def connect() -> asyncssh.SSHClientConnection:
        async with limit:
            return await asyncssh.connect(
                "127.0.0.1",
                sshd.port,
                username=sshd.user,
                client_keys=[str(sshd.client_key)],
                known_hosts=str(sshd.known_hosts),
                config=None,
                agent_path=None,
            )

    async def run(conn: asyncssh.SSHClientConnection) -> None:
        await conn.run("true", check=True)

    async def connect_and_run() -> asyncssh.SSHClientConnection:
        conn = await connect()
        await run(conn)
        return conn

    t0 = time.perf_counter()
    conns = await asyncio.gather(*(connect_and_run() for _ in range(n)))
    cold = time.perf_counter() - t0
    warm = []
    try:
        for _ in range(repeat):
            t0 = time.perf_counter()
            await asyncio.gather(*(run(c) for c in conns))
            warm.append(time.perf_counter() - t0)
    finally:
        for conn in conns:
            conn.close()
        await asyncio.gather(*(c.wait_closed() for c in conns), return_exceptions=True)
    return cold, warm


# -- reporting ------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den <= 0:
        return None
    return num / den


def table(rows: Sequence[Row], markdown: bool) -> str:
    """One line per N: the median seconds of every column."""
    headers = ["N"] + [label for _, label, _ in COLUMNS]
    body = [[str(r.n)] + [_fmt(r.med(key)) for key, _, _ in COLUMNS] for r in rows]
    if markdown:
        out = ["| " + " | ".join(headers) + " |", "|" + "---:|" * len(headers)]
        out += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(out)
    short = [
        "N",
        "agents",
        "ssh-cold",
        "ssh-pooled",
        "floor-cold",
        "floor-warm",
        "ans-cmd-cold",
        "ans-cmd-warm",
        "ans-raw-cold",
        "ans-raw-warm",
    ]
    widths = [max(len(short[i]), *(len(b[i]) for b in body)) for i in range(len(short))]
    lines = ["  ".join(h.rjust(w) for h, w in zip(short, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)) for cells in body]
    return "\n".join(lines)


RATIOS: list[tuple[str, str, str]] = [
    ("ans_cmd_cold", "agents", "command cold / agents"),
    ("ans_cmd_warm", "agents", "command warm / agents"),
    ("ans_cmd_cold", "ssh_cold", "command cold / agentless cold"),
    ("ans_raw_cold", "ssh_cold", "raw cold / agentless cold"),
    ("ans_cmd_warm", "ssh_pooled", "command warm / agentless pooled"),
    ("ans_raw_warm", "ssh_pooled", "raw warm / agentless pooled"),
]


def ratio_table(rows: Sequence[Row], markdown: bool) -> str:
    """How many times faster EasyTask is than Ansible, per N (only where Ansible ran)."""
    rows = [r for r in rows if r.ans_cmd_cold]
    if not rows:
        return ""
    headers = ["N"] + [label for _, _, label in RATIOS]
    body = [
        [str(r.n)]
        + [
            _fmt(_ratio(r.med(a), r.med(b)), 1) + ("x" if _ratio(r.med(a), r.med(b)) else "")
            for a, b, _ in RATIOS
        ]
        for r in rows
    ]
    if markdown:
        out = ["| " + " | ".join(headers) + " |", "|" + "---:|" * len(headers)]
        out += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(out)
    widths = [max(len(headers[i]), *(len(b[i]) for b in body)) for i in range(len(headers))]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)) for cells in body]
    return "\n".join(lines)


def verdicts(rows: Sequence[Row], cli_startup: float | None = None) -> list[str]:
    """Each target, the measured figure, met or missed and by how much."""
    by_n = {r.n: r for r in rows}
    out: list[str] = []

    def against(
        row: Row, ours: str, theirs: Sequence[tuple[str, str]], target: float, what: str
    ) -> str:
        parts = []
        met_all = True
        for key, label in theirs:
            ratio = _ratio(row.med(key), row.med(ours))
            if ratio is None:
                continue
            ok = ratio >= target
            met_all &= ok
            if ok:
                parts.append(f"{ratio:.1f}x vs {label} (met)")
            else:
                need = (row.med(key) or 0.0) / target
                parts.append(
                    f"{ratio:.1f}x vs {label} (missed: {target / ratio:.2f}x short; "
                    f"would need {need:.2f} s, measured {row.med(ours):.2f} s)"
                )
        if not parts:
            return f"- {what}, target >= {target:g}x: not measured"
        head = "**met**" if met_all else "**missed**"
        return f"- {what}, target >= {target:g}x: {head} — " + "; ".join(parts)

    first, warm = ("ans_cmd_cold", "first run"), ("ans_cmd_warm", "masters warm")
    row = by_n.get(200)
    if row is None or not row.ans_cmd_cold:
        out.append("- N=200 with Ansible was not measured: no ratio targets checked.")
    else:
        out.append(
            against(
                row,
                "agents",
                [first, warm],
                TARGETS["agents_vs_command"],
                "N=200, agents vs `ansible -m command`",
            )
        )
        out.append(
            against(
                row,
                "ssh_cold",
                [first],
                TARGETS["agentless_cold"],
                "N=200, agentless cold vs `ansible -m command`",
            )
        )
        out.append(
            against(
                row,
                "ssh_pooled",
                [first, warm],
                TARGETS["agentless_pooled"],
                "N=200, agentless pooled vs `ansible -m command`",
            )
        )
        out.append(
            against(
                row,
                "agents",
                [("ans_raw_warm", "masters warm")],
                TARGETS["agents_vs_raw_warm"],
                "N=200, agents vs `ansible -m raw`",
            )
        )
    row = by_n.get(200)
    most = TARGETS["agents_vs_floor"]
    if row is not None and row.med("agents") and row.med("floor_warm") and cli_startup:
        took, floor = row.med("agents") or 0.0, (row.med("floor_warm") or 0.0) + cli_startup
        head = "**met**" if took <= most * floor else "**missed**"
        out.append(
            f"- N=200, agents within {most:g}x of bare asyncssh (warm) plus CLI start: {head} — "
            f"{took / floor:.2f}x ({took:.2f} s against {floor:.2f} s)"
        )
    for n, key in ((500, "agents_500_seconds"), (1000, "agents_1000_seconds")):
        row = by_n.get(n)
        limit = TARGETS[key]
        if row is None or row.med("agents") is None:
            out.append(f"- N={n} agents under {limit:g} s: not measured")
            continue
        took = row.med("agents") or 0.0
        if took < limit:
            out.append(f"- N={n} agents under {limit:g} s: **met** — {took:.2f} s")
        else:
            out.append(
                f"- N={n} agents under {limit:g} s: **missed** — {took:.2f} s, "
                f"{took - limit:.2f} s ({took / limit:.2f}x) over"
            )
    return out


def _busy_summary(samples: Sequence[float]) -> str:
    if not samples:
        return "?"
    return f"{statistics.median(samples):.0f}% (median) to {max(samples):.0f}% (max)"


def versions(bench: Bench) -> dict[str, str]:
    """Software that shaped the figures."""
    version = dist_version
    return {
        "python": platform.python_version(),
        "easytask": version("easytask"),
        "asyncssh": version("asyncssh"),
        "ansible-core": bench.ansible_version or "not run",
        "openssh": openssh_version(),
    }


def record(rows: Sequence[Row], bench: Bench, argv: Sequence[str]) -> dict[str, Any]:
    """Everything a report needs: the samples and the conditions they were taken in."""
    return {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "argv": list(argv),
        "python_shown": shown_python(),
        "machine": machine_info(),
        "versions": versions(bench),
        "revision": bench.revision,
        "repeat": bench.args.repeat,
        "wait_idle": bench.args.wait_idle,
        "busy_before": bench.busy_before,
        "busy_during": bench.busy_during,
        "cli_startup": bench.cli_startup,
        "rows": [asdict(r) for r in rows],
    }


def measured_block(rec: dict[str, Any]) -> str:
    """The generated part of docs/benchmarks.md."""
    rows = [Row(**r) for r in rec["rows"]]
    m, v = rec["machine"], rec["versions"]
    command = [rec.get("python_shown", "python"), "-m", "bench.fanout", *rec["argv"]]
    lines = [
        BEGIN,
        f"Measured {rec['when']} with:",
        "",
        "```sh",
        " ".join(shlex.quote(a) for a in command),
        "```",
        "",
        f"- Machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['memory']} RAM, {m['kernel']}",
        f"- Software: Python {v['python']}, EasyTask {v['easytask']} (revision {rec['revision']}), "
        f"asyncssh {v['asyncssh']}, ansible-core {v['ansible-core']}, {v['openssh']}",
        f"- Other work on the machine (it is shared): in the 2 s before each measurement step the "
        f"CPUs were {_busy_summary(rec['busy_before'])} busy (each step waited up to "
        f"{rec['wait_idle']:g} s for less than {IDLE_BUSY:g}%); over the whole run they were "
        f"{_fmt(rec['busy_during'], 0)}% busy, the benchmark's own processes included.",
        f"- Median of {rec['repeat']} run(s) per figure, in seconds, from CLI start to exit. "
        f"`easytask --version` alone takes {_fmt(rec['cli_startup'])} s.",
        "",
        table(rows, markdown=True),
        "",
        *(f"- {label}: {meaning}" for _, label, meaning in COLUMNS),
        "",
    ]
    connect = [f"N={r.n}: {r.agents_connect:.1f} s" for r in rows if r.agents_connect is not None]
    if connect:
        lines += [
            "Time for the simulated agents to connect and enrol (not part of any figure): "
            + ", ".join(connect)
            + ".",
            "",
        ]
    ratios = ratio_table(rows, markdown=True)
    if ratios:
        lines += ["How many times faster than Ansible (its median / ours):", "", ratios, ""]
    lines += ["Targets:", "", *verdicts(rows, rec.get("cli_startup")), ""]
    errors = [f"- N={r.n} {e.splitlines()[0]}" for r in rows for e in r.errors]
    if errors:
        lines += ["Measurements that failed:", "", *errors, ""]
    lines.append(END)
    return "\n".join(lines)


DOC_HEAD = """\
# Benchmarks

## Fan-out: one trivial command on N hosts

`bench/fanout.py` times `easytask run PATTERN -a true` from CLI start to exit against a real
`easytask server`, next to Ansible on the same machine:

- **agents**: N agents in one process (`bench/agentsim.py`), each with its own key and reverse
  SSH link.
- **agentless**: N aliases of one loopback sshd; first run (N connections) and second (pooled).
- **asyncssh**: bare asyncssh over N connections to the same sshd, the transport's floor.
- **Ansible**: `ansible all -m command|raw -a true -f 50` on N aliases of the same sshd, cold (no
  ControlPersist master) and warm; sizes above `--ansible-max` (200) are skipped.

Run it with `make bench` or `.venv/bin/python -m bench.fanout --write`; `--quick` measures N=10
without Ansible, `--json FILE` saves the samples and `--report FILE --write` renders them again.

"""


def write_doc(rec: dict[str, Any]) -> None:
    """Replace the measured section of docs/benchmarks.md (the rest of the page is kept)."""
    block = measured_block(rec)
    text = DOC.read_text() if DOC.exists() else ""
    if BEGIN in text and END in text:
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        text = head + block + tail
    else:
        text = DOC_HEAD + "### Results\n\n" + block + "\n"
    DOC.write_text(text)
    say(f"wrote {DOC}")


# -- entry point ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--sizes", help="fleet sizes, comma separated (default 10,100,200,500)")
    p.add_argument("--repeat", type=int, help="runs per figure; the median is reported (default 3)")
    p.add_argument("--ansible-max", type=int, default=200, help="skip Ansible above this N")
    p.add_argument(
        "--ansible-venv",
        default="/tmp/easytask-bench-ansible",
        help="venv holding ansible-core (created with it if missing)",
    )
    p.add_argument("--no-ansible", dest="ansible", action="store_false", help="skip Ansible")
    p.add_argument(
        "--no-agentless",
        dest="agentless",
        action="store_false",
        help="skip agentless hosts and the asyncssh floor",
    )
    p.add_argument("--quick", action="store_true", help="N=10, one run, no Ansible (smoke test)")
    p.add_argument("--json", metavar="FILE", help="also write every sample as JSON")
    p.add_argument("--write", action="store_true", help="write the results into docs/benchmarks.md")
    p.add_argument(
        "--report", metavar="FILE", help="measure nothing: report the samples of an earlier --json"
    )
    p.add_argument("--workdir", help="where the temp dir goes (default /tmp)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, state) afterwards")
    p.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to this long for the machine to be idle (other jobs)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.sizes = args.sizes or "10"
        args.repeat = args.repeat or 1
        args.ansible = False
    args.sizes = [int(s) for s in (args.sizes or "10,100,200,500").split(",") if s.strip()]
    args.repeat = args.repeat or 3
    if not args.sizes or min(args.sizes) < 1 or args.repeat < 1:
        p.error("sizes and --repeat must be positive")
    return args


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through the `finally` that stops every child


def measure_all(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Run every measurement; every child process and the temp dir are gone when it returns."""
    raise_nofile()
    # Under /tmp by default: a short path keeps Ansible's ControlPath sockets within 108 bytes.
    workdir = Path(args.workdir or "/tmp")
    workdir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="ebench-", dir=workdir))
    bench = Bench(args, root)
    rows: list[Row] = []
    try:
        bench.setup()
        started = cpu_counters()
        for n in args.sizes:
            rows.append(bench.measure(n))
        bench.busy_during = busy_since(started)
    finally:
        bench.close()
        if args.keep:
            say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return record(rows, bench, argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    rec = json.loads(Path(args.report).read_text()) if args.report else measure_all(args, argv)
    rows = [Row(**r) for r in rec["rows"]]
    print(table(rows, markdown=False))
    ratios = ratio_table(rows, markdown=False)
    if ratios:
        print("\nhow many times faster than Ansible (its median / ours):")
        print(ratios)
    print()
    for line in verdicts(rows, rec.get("cli_startup")):
        print(line.replace("**", ""))
    if args.json and not args.report:
        Path(args.json).write_text(json.dumps(rec, indent=2) + "\n")
    if args.write:
        write_doc(rec)
    failed = [e for r in rows for e in r.errors]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
