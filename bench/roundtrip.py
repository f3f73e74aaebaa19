"""Round trip of one command on one host: EasyTask's API and CLI against multiplexed OpenSSH.

    .venv/bin/python -m bench.roundtrip [--runs 50] [--quick] [--write] [--json FILE]

One real server, one real `easytask agent` process and one loopback OpenSSH sshd. Each round
runs `true` once on every path below, in turn, so that load from other work on the machine falls
on every path alike; p50 and p95 are over `--runs` rounds (after `--warmup` rounds not counted).

- API: POST /api/jobs, then GET /api/jobs/ID/events until the job's final event, on one open
  HTTP connection (what a program using the API waits for);
- CLI: `easytask run HOST -a true` as a subprocess, from process start to exit;
- `ssh -o ControlMaster=auto -o ControlPath=... -o ControlPersist=60 HOST true` with its master
  already up (OpenSSH multiplexed), and plain `ssh HOST true` (a new connection each time).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import (
    conditions_lines,
    load_average,
    percentile,
    run,
    start_agent,
    start_server,
    wait_job_events,
)
from tests.support import (
    SSHD,
    Procs,
    ServerHandle,
    easytask_cli,
    start_sshd,
)

TARGET = 2.0  # ours / OpenSSH multiplexed, p50
PATHS: list[tuple[str, str]] = [
    ("api_agent", "API, agent"),
    ("api_agentless", "API, agentless"),
    ("cli_agent", "CLI, agent"),
    ("cli_agentless", "CLI, agentless"),
    ("ssh_mux", "ssh, ControlMaster up"),
    ("ssh_plain", "ssh, new connection"),
    ("cli_version", "`easytask --version`"),
    ("py_floor", "`python -c 'import http.client, json'`"),
]


def say(text: str) -> None:
    sys.stderr.write(f"[roundtrip {time.strftime('%H:%M:%S')}] {text}\n")
    sys.stderr.flush()


class Bench:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs = Procs()
        self.sshd: SSHD | None = None
        self.server: ServerHandle | None = None
        self.cli = easytask_cli()

    def setup(self) -> None:
        self.sshd = start_sshd(self.root / "sshd", self.procs)
        inventory = self.root / "inventory.ini"
        sshd = self.sshd
        inventory.write_text(
            "[plain]\n"
            f"plain1 easytask_connection=ssh ansible_host=127.0.0.1 ansible_port={sshd.port} "
            f"ansible_user={sshd.user} ansible_ssh_private_key_file={sshd.client_key} "
            f"easytask_known_hosts={sshd.known_hosts}\n"
        )
        self.server = start_server(self.root / "server", inventory, self.procs)
        start_agent(self.server, "agent1", self.root / "agent1", self.procs)

    def close(self) -> None:
        if self.sshd is not None:
            subprocess.run(
                [*self.ssh_base(), "-O", "exit", "bench-host"], capture_output=True, timeout=15
            )
        self.procs.stop_all()

    # -- the paths --------------------------------------------------------------------------------

    def api(self, host: str) -> float:
        assert self.server is not None
        http = self.server.http
        t0 = time.perf_counter()
        resp = http.post("/api/jobs", json={"pattern": host, "command": "true"})
        resp.raise_for_status()
        state = wait_job_events(http, resp.json()["job"]["id"])
        elapsed = time.perf_counter() - t0
        if state != "success":
            raise RuntimeError(f"job on {host} ended {state}")
        return elapsed

    def cli_run(self, host: str) -> float:
        assert self.server is not None
        t0 = time.perf_counter()
        done = subprocess.run(
            [*self.cli, "run", host, "-a", "true"],
            env=self.server.env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        elapsed = time.perf_counter() - t0
        if done.returncode != 0:
            raise RuntimeError(f"easytask run {host} exited {done.returncode}: {done.stdout}")
        return elapsed

    def cli_version(self) -> float:
        t0 = time.perf_counter()
        subprocess.run([*self.cli, "--version"], capture_output=True, check=True, timeout=60)
        return time.perf_counter() - t0

    def py_floor(self) -> float:
        """The least a CLI written in Python costs: the interpreter (with site, as the entry
        point runs) and the imports of the standard library's HTTP client."""
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", "import http.client, json"],
            capture_output=True,
            check=True,
            timeout=60,
        )
        return time.perf_counter() - t0

    def ssh_base(self, mux: bool = True) -> list[str]:
        assert self.sshd is not None
        s = self.sshd
        args = [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(s.client_key),
            "-p",
            str(s.port),
            "-l",
            s.user,
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"UserKnownHostsFile={s.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
        ]
        if mux:
            args += [
                "-o",
                "ControlMaster=auto",
                "-o",
                f"ControlPath={self.root / 'cm'}",
                "-o",
                "ControlPersist=60",
            ]
        return args

    def ssh(self, mux: bool) -> float:
        t0 = time.perf_counter()
        done = subprocess.run(
            [*self.ssh_base(mux), "127.0.0.1", "true"], capture_output=True, timeout=60
        )
        elapsed = time.perf_counter() - t0
        if done.returncode != 0:
            raise RuntimeError(f"ssh exited {done.returncode}: {done.stderr.decode()}")
        return elapsed

    def round(self) -> dict[str, float]:
        steps: dict[str, Callable[[], float]] = {
            "api_agent": lambda: self.api("agent1"),
            "api_agentless": lambda: self.api("plain1"),
            "cli_agent": lambda: self.cli_run("agent1"),
            "cli_agentless": lambda: self.cli_run("plain1"),
            "ssh_mux": lambda: self.ssh(True),
            "ssh_plain": lambda: self.ssh(False),
            "cli_version": self.cli_version,
            "py_floor": self.py_floor,
        }
        return {key: fn() for key, fn in steps.items()}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="ert-", dir=args.workdir or "/tmp"))
    bench = Bench(root)
    samples: dict[str, list[float]] = {key: [] for key, _ in PATHS}
    load_before = load_average()
    try:
        bench.setup()
        for i in range(args.warmup + args.runs):
            got = bench.round()
            if i >= args.warmup:
                for key, value in got.items():
                    samples[key].append(value)
        say(f"{args.runs} rounds done")
    finally:
        bench.close()
        subprocess.run(["rm", "-rf", str(root)], check=False)
    return {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "argv": args.argv,
        "runs": args.runs,
        "warmup": args.warmup,
        "load_before": load_before,
        "load_after": load_average(),
        "samples": samples,
    }


def stats(rec: dict[str, Any]) -> dict[str, tuple[float, float]]:
    return {
        key: (percentile(values, 50), percentile(values, 95))
        for key, values in rec["samples"].items()
        if values
    }


def table(rec: dict[str, Any], markdown: bool) -> str:
    st = stats(rec)
    mux = st["ssh_mux"][0]
    rows = [
        (label, f"{st[key][0] * 1000:.1f}", f"{st[key][1] * 1000:.1f}", f"{st[key][0] / mux:.1f}x")
        for key, label in PATHS
        if key in st
    ]
    headers = ("path", "p50 ms", "p95 ms", "p50 / ssh mux p50")
    if markdown:
        out = ["| " + " | ".join(headers) + " |", "|---|---:|---:|---:|"]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(out)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = [
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w)
            for i, (h, w) in enumerate(zip(headers, widths, strict=True))
        )
    ]
    for r in rows:
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    return "\n".join(lines)


def verdicts(rec: dict[str, Any]) -> list[str]:
    st = stats(rec)
    mux = st["ssh_mux"][0]
    out = []
    slow_cli = False
    for key in ("api_agent", "api_agentless", "cli_agent", "cli_agentless"):
        label = dict(PATHS)[key]
        ratio = st[key][0] / mux
        head = "**met**" if ratio <= TARGET else "**missed**"
        slow_cli |= key.startswith("cli") and ratio > TARGET
        out.append(
            f"- {label} within {TARGET:g}x of OpenSSH multiplexed (p50): {head} — "
            f"{ratio:.1f}x ({st[key][0] * 1000:.1f} ms vs {mux * 1000:.1f} ms)"
        )
    if slow_cli and "py_floor" in st:
        floor = st["py_floor"][0]
        out.append(
            f"- A Python interpreter's start with its HTTP client's imports alone takes "
            f"{floor * 1000:.1f} ms ({floor / mux:.1f}x)."
        )
    return out


INTRO = """\
`bench/roundtrip.py` runs `true` on one host round after round through each path below and
reports the median (p50) and 95th percentile (p95); one real server, agent and loopback sshd.

- **API**: `POST /api/jobs`, then the job's event stream until its final event.
- **CLI**: `easytask run HOST -a true` from process start to exit; `easytask --version` and
  `python -c 'import http.client, json'` show the interpreter's share.
- **ssh**: `ssh 127.0.0.1 true` with a ControlMaster up, and over a new connection.

Run it with `.venv/bin/python -m bench.roundtrip --write`; `--quick` does 3 rounds."""


def block(rec: dict[str, Any]) -> str:
    lines = conditions_lines(
        ["-m", "bench.roundtrip", *rec["argv"]], rec["when"], rec["load_before"], rec["load_after"]
    )
    lines += [
        f"- {rec['runs']} rounds after {rec['warmup']} not counted; milliseconds.",
        "",
        table(rec, markdown=True),
        "",
        "Targets:",
        "",
        *verdicts(rec),
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--runs", type=int, default=50, help="rounds counted (default 50)")
    p.add_argument("--warmup", type=int, default=3, help="rounds first, not counted (default 3)")
    p.add_argument("--quick", action="store_true", help="3 rounds, 1 warm-up (smoke test)")
    p.add_argument("--write", action="store_true", help="rewrite its section of docs/benchmarks.md")
    p.add_argument("--json", metavar="FILE", help="also write every sample as JSON")
    p.add_argument("--workdir", help="where the temp dir goes (default /tmp)")
    args = p.parse_args(argv)
    if args.quick:
        args.runs, args.warmup = 3, 1
    if args.runs < 1 or args.warmup < 0:
        p.error("--runs must be positive")
    args.argv = list(argv)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    section = ("roundtrip", "Round trip: one command on one host", INTRO)
    return run(argv, parse_args, measure, table, verdicts, block, section, say)


if __name__ == "__main__":
    sys.exit(main())
