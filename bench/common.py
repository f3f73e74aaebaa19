"""Shared pieces of the benchmarks: child processes in their own groups, a loopback sshd, a server."""

from __future__ import annotations

import json
import os
import platform
import pwd
import resource
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
SSHD_BIN = shutil.which("sshd") or "/usr/sbin/sshd"


def raise_nofile() -> int:
    """Raise this process's open-file limit to the hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    cond: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05, what: str = "condition"
) -> Any:
    """Poll `cond` until it returns something truthy; raise after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = cond()
        except Exception as exc:  # the condition may raise until the thing is up
            last_exc = exc
        else:
            if value:
                return value
        time.sleep(interval)
    raise TimeoutError(
        f"timed out after {timeout:g}s waiting for {what}" + (f": {last_exc!r}" if last_exc else "")
    )


class Proc:
    """A child process in its own process group, stopped with its whole group."""

    def __init__(
        self,
        args: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
            cwd=cwd,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 15.0) -> None:
        """TERM the group, wait, then KILL the group."""
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self.signal(signal.SIGKILL)
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()

    def tail(self, lines: int = 20) -> str:
        self._log.flush()
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Procs:
    """Every process a benchmark starts; `stop_all` ends them in reverse order."""

    def __init__(self) -> None:
        self.items: list[Proc] = []

    def start(self, args: list[str], log_path: Path, **kwargs: Any) -> Proc:
        proc = Proc(args, log_path, **kwargs)
        self.items.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.items:
            self.items.remove(proc)

    def stop_all(self) -> None:
        while self.items:
            self.items.pop().stop()


# -- a real OpenSSH sshd on loopback -----------------------------------------------------------


@dataclass
class SSHD:
    """A loopback sshd with a client key and a known_hosts file."""

    root: Path
    port: int
    proc: Proc
    client_key: Path
    known_hosts: Path
    user: str


def start_sshd(root: Path, procs: Procs) -> SSHD:
    """Start sshd with its own config, host key and authorized key (as the test fixture does)."""
    if not Path(SSHD_BIN).exists():
        raise FileNotFoundError("sshd is missing (Debian: apt-get install openssh-server)")
    root.mkdir(parents=True, exist_ok=True)
    home = root / "home"
    home.mkdir(exist_ok=True)
    for name in ("host_key", "client_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)], check=True
        )
    (root / "authorized_keys").write_text((root / "client_key.pub").read_text())
    port = free_port()
    config = root / "sshd_config"
    config.write_text(
        textwrap.dedent(f"""\
        Port {port}
        ListenAddress 127.0.0.1
        HostKey {root / "host_key"}
        AuthorizedKeysFile {root / "authorized_keys"}
        PidFile {root / "sshd.pid"}
        UsePAM no
        StrictModes no
        PasswordAuthentication no
        KbdInteractiveAuthentication no
        PubkeyAuthentication yes
        PermitRootLogin yes
        SetEnv HOME={home}
        MaxStartups 1000:30:2000
        MaxSessions 1000
        LogLevel ERROR
        Subsystem sftp internal-sftp
        """)
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = procs.start([SSHD_BIN, "-D", "-e", "-f", str(config)], root / "sshd.log")
    host_pub = (root / "host_key.pub").read_text().split()
    known_hosts = root / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")

    def listening() -> bool:
        if not proc.alive():
            raise RuntimeError(f"sshd exited: {proc.tail()}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_until(listening, timeout=10, what="sshd listening")
    return SSHD(
        root, port, proc, root / "client_key", known_hosts, pwd.getpwuid(os.getuid()).pw_name
    )


# -- a real easytask server ----------------------------------------------------------------------


def easytask_cli() -> list[str]:
    """The installed `easytask` entry point next to this interpreter, else `python -m easytask`."""
    script = Path(sys.executable).parent / "easytask"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "easytask"]


class Server:
    """A real `easytask server` process on free loopback ports with its own state dir."""

    def __init__(self, state_dir: Path, inventory: Path, procs: Procs, *extra: str) -> None:
        self.state_dir = state_dir
        self.procs = procs
        state_dir.mkdir(parents=True, exist_ok=True)
        info = state_dir / "server.json"
        args = [
            sys.executable,
            "-m",
            "easytask",
            "server",
            "--state-dir",
            str(state_dir),
            "--agents",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--inventory",
            str(inventory),
            *extra,
        ]
        self.proc = procs.start(args, state_dir / "server.log", cwd=state_dir)
        wait_until(lambda: info.exists() or not self.proc.alive(), timeout=30, what="server start")
        if not self.proc.alive():
            raise RuntimeError(f"easytask server did not start:\n{self.proc.tail()}")
        data = json.loads(info.read_text())
        self.url: str = data["url"]
        self.agents_addr: str = data["agents"]
        self.token = (state_dir / "admin.token").read_text().strip()
        self.http = httpx.Client(
            base_url=self.url, timeout=60, headers={"authorization": f"Bearer {self.token}"}
        )
        self.config_file = state_dir / "cli-config.toml"
        self.config_file.write_text("")

    def get(self, path: str, **params: Any) -> Any:
        resp = self.http.get(path, params=params)
        resp.raise_for_status()
        return resp.json()

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        resp = self.http.post(path, json=body or {})
        resp.raise_for_status()
        return resp.json()

    def cli_env(self) -> dict[str, str]:
        """Environment for the real CLI: this server's URL and admin token, no other config."""
        env = dict(os.environ)
        env.update(
            {
                "EASYTASK_URL": self.url,
                "EASYTASK_TOKEN": self.token,
                "EASYTASK_CONFIG": str(self.config_file),
                "NO_COLOR": "1",
            }
        )
        return env

    def online(self, group: str) -> int:
        """How many agents of a group are online now."""
        return sum(
            1
            for a in self.get("/api/agents")["agents"]
            if a["status"] == "online" and group in a["groups"]
        )

    def stop(self) -> None:
        self.http.close()
        self.procs.stop(self.proc)


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


def children_of(pid: int) -> list[int]:
    """Direct child processes of a process."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def cmdline(pid: int) -> str:
    """A process's command line with spaces between the arguments."""
    try:
        return (Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")).decode().strip()
    except OSError:
        return ""


def start_agent(
    server: Server, name: str, state_dir: Path, procs: Procs, *extra: str, timeout: float = 60
) -> Proc:
    """A real `easytask agent` process, enrolled with a one-use token, waited for online."""
    state_dir.mkdir(parents=True, exist_ok=True)
    token = server.post("/api/agents/tokens", {"uses": 1, "ttl": "10m"})["token"]
    args = [
        *easytask_cli(),
        "agent",
        "--server",
        server.agents_addr,
        "--name",
        name,
        "--state-dir",
        str(state_dir),
        "--enroll",
        token,
        *extra,
    ]
    proc = procs.start(args, state_dir / "agent.log")

    def online() -> bool:
        if not proc.alive():
            raise RuntimeError(f"agent {name} exited:\n{proc.tail()}")
        return any(
            a["name"] == name and a["status"] == "online"
            for a in server.get("/api/agents")["agents"]
        )

    wait_until(online, timeout=timeout, interval=0.1, what=f"agent {name} online")
    return proc


FINAL_STATES = {"success", "failed", "terminated", "unreachable", "skipped"}


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


def report(
    rec: dict[str, Any],
    args: Any,
    *,
    table_text: str,
    notes: list[str],
    doc: Path,
    section: tuple[str, str, str],
    block: str,
    say: Callable[[str], None],
) -> int:
    """Print a benchmark's figures and notes; save the record (--json) and its section
    (`section` = name, title, intro) of the doc (--write)."""
    print(f"load average before: {rec['load_before']}, after: {rec['load_after']}")
    print(table_text)
    if notes:
        print()
    for line in notes:
        print(line.replace("**", "").replace("`", ""))
    if args.json:
        Path(args.json).write_text(json.dumps(rec, indent=2) + "\n")
    if args.write:
        write_section(doc, *section, block)
        say(f"wrote {doc}")
    return 0


def shown_python() -> str:
    """The interpreter as a user would type it: relative when it is the repo's venv."""
    exe = Path(sys.executable)
    try:
        return str(exe.relative_to(REPO))
    except ValueError:
        return "python"


def software_versions() -> dict[str, str]:
    """Python, EasyTask (with the revision), asyncssh, SQLite, OpenSSH."""
    import sqlite3
    from importlib import metadata

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "?"

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
