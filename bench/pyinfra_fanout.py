"""Fan-out against pyinfra: `pyinfra INVENTORY exec -- true` next to `easytask run plain -a true`.

    .venv/bin/python -m bench.pyinfra_fanout [--sizes 10,100] [--repeat 1]
        [--pyinfra-venv /tmp/pyinfra-venv] [--quick] [--write] [--json FILE]

N inventory aliases of one loopback OpenSSH sshd for both tools, measured in the same run, from
process start to exit.  EasyTask: first run (the server connects N times) and again (connections
pooled by the server).  pyinfra: its own inventory file of the same N aliases, `-y`, defaults
otherwise (it connects to every host on each run).  pyinfra lives in a throwaway venv (created
with `pip install pyinfra` if missing), never in ours.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import (
    conditions_lines,
    load_average,
    run,
    start_server,
    stop_server,
)
from tests.support import (
    SSHD,
    Procs,
    ServerHandle,
    easytask_cli,
    start_sshd,
)


def say(text: str) -> None:
    sys.stderr.write(f"[pyinfra {time.strftime('%H:%M:%S')}] {text}\n")
    sys.stderr.flush()


def ensure_pyinfra(venv: Path) -> tuple[Path, str]:
    exe = venv / "bin" / "pyinfra"
    if not exe.exists():
        say(f"creating {venv} with pyinfra (throwaway, not a project dependency)")
        base = getattr(sys, "_base_executable", None) or shutil.which("python3") or sys.executable
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "pyinfra"], check=True)
    done = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True)
    return exe, done.stdout.strip().split()[-1]


def inventories(root: Path, sshd: SSHD, n: int) -> tuple[Path, Path]:
    """The same N aliases for EasyTask (INI) and pyinfra (inventory.py), own known_hosts each."""
    kh_dir = root / "known_hosts"
    kh_dir.mkdir(exist_ok=True)
    ini = ["[plain]"]
    hosts = []
    for i in range(1, n + 1):
        name = f"s{i:03d}"
        kh = kh_dir / name
        if not kh.exists():
            shutil.copyfile(sshd.known_hosts, kh)
        ini.append(
            f"{name} easytask_connection=ssh ansible_host=127.0.0.1 ansible_port={sshd.port} "
            f"ansible_user={sshd.user} ansible_ssh_private_key_file={sshd.client_key} "
            f"easytask_known_hosts={kh}"
        )
        hosts.append(
            (
                name,
                {
                    "ssh_hostname": "127.0.0.1",
                    "ssh_port": sshd.port,
                    "ssh_user": sshd.user,
                    "ssh_key": str(sshd.client_key),
                    "ssh_known_hosts_file": str(kh),
                    "ssh_strict_host_key_checking": "yes",
                },
            )
        )
    ini_path = root / f"inventory-{n}.ini"
    ini_path.write_text("\n".join(ini) + "\n")
    py_path = root / f"pyinfra_inventory_{n}.py"
    py_path.write_text(f"hosts = {hosts!r}\n")
    return ini_path, py_path


def time_easytask(server: ServerHandle, n: int) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(
        [*easytask_cli(), "run", "plain", "-a", "true"],
        env=server.env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    elapsed = time.perf_counter() - t0
    if done.returncode != 0 or f"{n} host(s): {n} success" not in done.stdout:
        raise RuntimeError(f"easytask run exited {done.returncode}: {done.stdout[-2000:]}")
    return elapsed


def time_pyinfra(exe: Path, inventory: Path, root: Path, n: int) -> float:
    home = root / "pyinfra-home"
    home.mkdir(exist_ok=True)
    env = {
        "PATH": f"{exe.parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
    }
    t0 = time.perf_counter()
    done = subprocess.run(
        [str(exe), "-y", str(inventory), "exec", "--", "true"],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=900,
    )
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(
            f"pyinfra exited {done.returncode}: {(done.stdout + done.stderr)[-2000:]}"
        )
    total = re.search(r"Grand total\s+(\d+)\s+(\d+)", done.stdout + done.stderr)
    if total is None or total.groups() != (str(n), str(n)):
        raise RuntimeError(f"pyinfra did not succeed on all {n} hosts:\n{done.stderr[-1500:]}")
    return elapsed


def measure(args: argparse.Namespace) -> dict[str, Any]:
    exe, version = ensure_pyinfra(Path(args.pyinfra_venv))
    root = Path(tempfile.mkdtemp(prefix="epy-", dir=args.workdir or "/tmp"))
    procs = Procs()
    rows = []
    load_before = load_average()
    try:
        sshd = start_sshd(root / "sshd", procs)
        for n in args.sizes:
            ini, py = inventories(root, sshd, n)
            row: dict[str, Any] = {"n": n, "cold": [], "pooled": [], "pyinfra": []}
            for rep in range(args.repeat):
                server = start_server(root / f"server-{n}-{rep}", ini, procs)
                try:
                    row["cold"].append(time_easytask(server, n))
                    row["pooled"].append(time_easytask(server, n))
                finally:
                    stop_server(server, procs)
                row["pyinfra"].append(time_pyinfra(exe, py, root, n))
                say(
                    f"N={n}: easytask cold {row['cold'][-1]:.2f}s, pooled {row['pooled'][-1]:.2f}s,"
                    f" pyinfra {row['pyinfra'][-1]:.2f}s"
                )
            rows.append(row)
    finally:
        procs.stop_all()
        shutil.rmtree(root, ignore_errors=True)
    return {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "argv": args.argv,
        "pyinfra": version,
        "repeat": args.repeat,
        "load_before": load_before,
        "load_after": load_average(),
        "rows": rows,
    }


def table(rec: dict[str, Any], markdown: bool) -> str:
    headers = (
        "N",
        "agentless cold s",
        "agentless pooled s",
        "pyinfra s",
        "pyinfra / cold",
        "pyinfra / pooled",
    )
    body = []
    for r in rec["rows"]:
        cold, pooled, py = (statistics.median(r[k]) for k in ("cold", "pooled", "pyinfra"))
        body.append(
            (
                str(r["n"]),
                f"{cold:.2f}",
                f"{pooled:.2f}",
                f"{py:.2f}",
                f"{py / cold:.1f}x",
                f"{py / pooled:.1f}x",
            )
        )
    if markdown:
        out = ["| " + " | ".join(headers) + " |", "|" + "---:|" * len(headers)]
        out += ["| " + " | ".join(b) + " |" for b in body]
        return "\n".join(out)
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join(lines)


INTRO = """\
`bench/pyinfra_fanout.py` times `pyinfra INVENTORY exec -- true` next to `easytask run plain -a
true` (first run and pooled) on the same N aliases of one loopback sshd, from process start to
exit. pyinfra connects on every run, so compare it with EasyTask's first run.

Run it with `.venv/bin/python -m bench.pyinfra_fanout --write` (not in `make bench`: it installs
pyinfra into `/tmp/pyinfra-venv` when missing)."""


def block(rec: dict[str, Any]) -> str:
    lines = conditions_lines(
        ["-m", "bench.pyinfra_fanout", *rec["argv"]],
        rec["when"],
        rec["load_before"],
        rec["load_after"],
    )
    lines += [
        f"- pyinfra {rec['pyinfra']}; median of {rec['repeat']} run(s) per figure, seconds.",
        "",
        table(rec, markdown=True),
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--sizes", default="10,100", help="fleet sizes (default 10,100)")
    p.add_argument("--repeat", type=int, default=1, help="runs per figure (median; default 1)")
    p.add_argument("--pyinfra-venv", default="/tmp/pyinfra-venv", help="venv holding pyinfra")
    p.add_argument("--quick", action="store_true", help="N=3, one run (smoke test)")
    p.add_argument("--write", action="store_true", help="rewrite its section of docs/benchmarks.md")
    p.add_argument("--json", metavar="FILE", help="also write every sample as JSON")
    p.add_argument("--workdir", help="where the temp dir goes (default /tmp)")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.repeat = "3", 1
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if not args.sizes or min(args.sizes) < 1 or args.repeat < 1:
        p.error("sizes and --repeat must be positive")
    args.argv = list(argv)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    section = ("pyinfra", "Fan-out against pyinfra", INTRO)
    return run(argv, parse_args, measure, table, lambda rec: [], block, section, say)


if __name__ == "__main__":
    sys.exit(main())
