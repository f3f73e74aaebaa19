"""Console benchmark: live lines to 50 SSE viewers, a 1,000,000-line run, a 100,000-run history.

    .venv/bin/python -m bench.console [--viewers 50] [--rate 1000] [--seconds 10]
        [--viewer-procs 2] [--lines 1000000] [--runs 100000] [--repeat 5] [--no-browser]
        [--variants as-is,nodelay] [--skip live,log,history] [--quiet-below 25] [--quiet-wait 90]
        [--quick] [--results FILE] [--json FILE] [--workdir DIR] [--keep]

Everything runs against a real `easytask server` and a real `easytask agent` on loopback:
- live: one run prints RATE lines/s for SECONDS seconds, each line carrying the time it was
  printed (one clock: same machine); VIEWERS clients follow `GET /api/runs/{id}/events` with a
  bearer token (plain asyncio HTTP/1.1 streams, spread over --viewer-procs processes). Latency is the time a
  viewer received a line minus the time it was printed; the line's `ts` (stamped by the server
  when the line arrived from the agent) splits it into agent -> server and server -> viewer.
- big log: a run whose log is LINES lines (the first printed by the agent, the rest appended to
  the store directly, as the browser test does): the run page plus the windows its script asks
  for first, the same in Chromium until the last line is on screen, and searches.
- history: RUNS runs (in jobs of 5) appended to the store with executemany, with three log
  lines each (indexed for full-text search): `GET /api/runs` and the `/runs` page with filters.
`--variants as-is,nodelay` measures everything a second time on a server whose HTTP connections
have TCP_NODELAY (set through a `sitecustomize` on that server's PYTHONPATH; no engine change).
Figures go to stdout and, as a Markdown page, to --results (bench/results/console.md by
default, keeping the notes section of the previous file; `--quick` writes only when --results
is given).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import resource
import shlex
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from bench.common import (
    busy_since,
    cpu_busy,
    cpu_counters,
    git_revision,
    machine_info,
    raise_nofile,
    start_agent,
    start_server,
    stop_server,
)
from tests.support import (
    REPO,
    Procs,
    ServerHandle,
    wait_until,
)

RESULTS = REPO / "bench" / "results" / "console.md"
CHROMIUM = os.environ.get("EASYTASK_CHROMIUM", "/usr/bin/chromium")
TARGET_P99_MS = 50.0
TARGET_FIRST_SCREEN_MS = 1000.0
TARGET_SEARCH_MS = 300.0
TARGET_LIST_MS = 200.0
PAGE = 200  # lines per window, as web/static/logview.js asks for them
# one live line event: seq, the server's ts, and the printed time at the start of the text
LINE_EVENT = re.compile(
    rb'"seq":(\d+),"ts":([0-9.eE+-]+),"stream":"stdout","level":"\w+","text":"(\d+\.\d+) '
)
PRINTER = """\
import os, sys, time
go, rate, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
while not os.path.exists(go):
    time.sleep(0.005)
out = sys.stdout
start = time.time()
for i in range(int(rate * seconds)):
    delay = start + i / rate - time.time()
    if delay > 0:
        time.sleep(delay)
    out.write("%.6f %d\\n" % (time.time(), i))
    out.flush()
"""


def wait_quiet(limit: float, threshold: float) -> tuple[float, float]:
    """Wait up to `limit` s for the CPUs to be less than `threshold`% busy (over 2 s).

    The machine may be shared: measuring while other work saturates it says little about
    EasyTask. Returns (busy % of the last 2 s, seconds waited).
    """
    start = time.monotonic()
    while True:
        busy = cpu_busy(2.0)
        waited = time.monotonic() - start
        if busy < threshold or waited >= limit:
            return busy, waited


def say(text: str) -> None:
    """Progress goes to stderr; the table goes to stdout."""
    sys.stderr.write(f"[console {time.strftime('%H:%M:%S')}] {text}\n")
    sys.stderr.flush()


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Timing:
    """Repeated wall-clock samples of one request (ms)."""

    name: str
    samples: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    @property
    def worst(self) -> float:
        return max(self.samples) if self.samples else float("nan")


def timed(name: str, repeat: int, fn: Callable[[], Any], note: str = "") -> Timing:
    """Call fn `repeat` times (after one warm-up call) and keep each wall-clock time in ms."""
    fn()
    out = Timing(name, note=note)
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.samples.append((time.perf_counter() - start) * 1000)
    return out


# -- the console as a browser without JavaScript sees it ---------------------------------------


def signed_in_client(server: ServerHandle) -> httpx.Client:
    """A cookie-keeping client signed in as admin through the login form."""
    password = (server.state_dir / "admin.password").read_text().strip()
    client = httpx.Client(base_url=server.url, timeout=120, follow_redirects=False)
    page = client.get("/login")
    token = re.search(r'name="csrf" value="([^"]*)"', page.text)
    assert token, page.text
    resp = client.post(
        "/login",
        data={"csrf": token.group(1), "username": "admin", "password": password, "next": "/"},
    )
    if resp.status_code != 303:
        raise RuntimeError(f"sign-in failed: {resp.status_code} {resp.text[:200]}")
    return client


def agent_pid(procs: Procs, name: str) -> int:
    for proc in procs:
        if "agent" in proc.args and name in proc.args:
            return proc.pid
    return 0


# -- (a) live latency ----------------------------------------------------------------------------


async def follow_run(
    url: str, token: str, run_id: int, count: int, ready: Path, timeout: float
) -> list[dict[str, Any]]:
    """`count` SSE viewers of one run; each returns its (printed, server ts, received) samples.

    Each viewer is a plain HTTP/1.1 connection read with asyncio streams (chunked transfer
    decoded by hand): on a 2-core machine the viewers share the CPUs with the server, and a
    general HTTP client costs several times more per received chunk than the server does to
    send it, which would show up as the server's latency.
    """
    opened = 0
    parsed = urlsplit(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    request = (
        f"GET /api/runs/{run_id}/events HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()

    async def viewer() -> dict[str, Any]:
        nonlocal opened
        printed: list[float] = []
        stamped: list[float] = []
        received: list[float] = []
        seqs: list[int] = []
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 60)
        try:
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
            status = head.split(b"\r\n", 1)[0]
            if b" 200 " not in status:
                raise RuntimeError(f"viewer got {status.decode(errors='replace')}")
            chunked = b"transfer-encoding: chunked" in head.lower()
            buf = b""
            first = True
            done = False
            while not done:
                if chunked:
                    size = int((await asyncio.wait_for(reader.readline(), timeout)).strip(), 16)
                    if size == 0:
                        break
                    chunk = await reader.readexactly(size + 2)
                    chunk = chunk[:-2]
                else:
                    chunk = await asyncio.wait_for(reader.read(65536), timeout)
                    if not chunk:
                        break
                now = time.time()
                if first:
                    first = False
                    opened += 1
                    if opened == count:
                        ready.write_text("ready")
                buf += chunk
                cut = buf.rfind(b"\n\n")
                if cut < 0:
                    continue
                complete, buf = buf[: cut + 2], buf[cut + 2 :]
                for m in LINE_EVENT.finditer(complete):
                    seqs.append(int(m.group(1)))
                    stamped.append(float(m.group(2)))
                    printed.append(float(m.group(3)))
                    received.append(now)
                done = b'"t":"end"' in complete
        finally:
            writer.close()
        return {"printed": printed, "ts": stamped, "received": received, "seqs": seqs}

    return list(await asyncio.gather(*(viewer() for _ in range(count))))


def viewer_worker(spec: str) -> int:
    """Entry point of a viewer process: follow the run, write the samples as JSON."""
    conf = json.loads(spec)
    results = asyncio.run(
        follow_run(
            conf["url"],
            conf["token"],
            conf["run"],
            conf["count"],
            Path(conf["ready"]),
            conf["timeout"],
        )
    )
    Path(conf["out"]).write_text(json.dumps(results))
    return 0


@dataclass
class LiveResult:
    viewers: int
    rate: float
    seconds: float
    lines: int
    total_ms: list[float]
    agent_ms: list[float]
    fanout_ms: list[float]
    per_viewer: list[int]
    in_order: bool
    problems: list[str]
    busy: float
    server_cpu: float
    agent_cpu: float
    viewer_cpu: float
    wall: float


def bench_live(
    server: ServerHandle,
    procs: Procs,
    work: Path,
    viewers: int,
    rate: float,
    seconds: float,
    nprocs: int,
) -> LiveResult:
    """One run printing `rate` lines/s for `seconds`, followed by `viewers` SSE clients."""
    printer = work / "printer.py"
    printer.write_text(PRINTER)
    go = work / "go"
    command = " ".join(
        shlex.quote(x) for x in (sys.executable, str(printer), str(go), str(rate), str(seconds))
    )
    job = server.post("/api/jobs", {"pattern": "live1", "command": command, "timeout": "10m"})
    run_id = job["runs"][0]["id"]
    wait_until(
        lambda: server.get(f"/api/runs/{run_id}")["run"]["state"] == "running",
        timeout=60,
        what="the live run to start",
    )
    nprocs = max(1, min(nprocs, viewers))
    workers = []
    for i in range(nprocs):
        count = viewers // nprocs + (1 if i < viewers % nprocs else 0)
        spec = {
            "url": server.url,
            "token": server.token,
            "run": run_id,
            "count": count,
            "ready": str(work / f"ready{i}"),
            "out": str(work / f"viewers{i}.json"),
            "timeout": seconds * 20 + 120,
        }
        args = [sys.executable, str(Path(__file__).resolve()), "--viewer-worker", json.dumps(spec)]
        workers.append(procs.start(args, work / f"viewers{i}.log"))
    wait_until(
        lambda: (
            all((work / f"ready{i}").exists() for i in range(nprocs))
            or not all(w.alive() for w in workers)
        ),
        timeout=120,
        what="every viewer connected",
    )
    if not all(w.alive() for w in workers):
        raise RuntimeError("a viewer process ended early:\n" + workers[0].tail())
    say(f"{viewers} viewers connected to run {run_id}; printing {rate:g} lines/s for {seconds:g}s")
    spid, apid = server.proc.pid, agent_pid(procs, "live1")
    cpu0 = (proc_cpu_seconds(spid), proc_cpu_seconds(apid), _children_cpu())
    busy0 = cpu_counters()
    start = time.monotonic()
    go.touch()
    for w in workers:
        w.popen.wait(timeout=seconds * 20 + 180)
    wall = time.monotonic() - start
    busy = busy_since(busy0)
    server_cpu = proc_cpu_seconds(spid) - cpu0[0]
    agent_cpu = proc_cpu_seconds(apid) - cpu0[1]
    viewer_cpu = _children_cpu() - cpu0[2]  # the viewer processes, now waited for
    total: list[float] = []
    agent: list[float] = []
    fanout: list[float] = []
    counts: list[int] = []
    stored = server.get(f"/api/runs/{run_id}/log", limit=1_000_000)["lines"]
    expected = [ln["seq"] for ln in stored if ln["stream"] == "stdout"]
    in_order = True
    problems: list[str] = []
    for i, w in enumerate(workers):
        if w.popen.returncode != 0:
            raise RuntimeError(f"viewer process {i} failed:\n{w.tail()}")
        for v in json.loads((work / f"viewers{i}.json").read_text()):
            counts.append(len(v["printed"]))
            if v["seqs"] != expected:
                in_order = False
                problems.append(_difference(v["seqs"], expected))
            for p, ts, r in zip(v["printed"], v["ts"], v["received"], strict=True):
                total.append((r - p) * 1000)
                agent.append((ts - p) * 1000)
                fanout.append((r - ts) * 1000)
    return LiveResult(
        viewers=viewers,
        rate=rate,
        seconds=seconds,
        lines=int(rate * seconds),
        total_ms=total,
        agent_ms=agent,
        fanout_ms=fanout,
        per_viewer=counts,
        in_order=in_order,
        problems=problems,
        busy=busy,
        server_cpu=server_cpu,
        agent_cpu=agent_cpu,
        viewer_cpu=viewer_cpu,
        wall=wall,
    )


def _difference(got: list[int], expected: list[int]) -> str:
    """Where a viewer's line seqs first differ from the stored ones."""
    dups = len(got) - len(set(got))
    missing = len(set(expected) - set(got))
    for i, (a, b) in enumerate(zip(got, expected, strict=False)):
        if a != b:
            return f"at #{i}: got seq {a}, stored {b} ({dups} repeated, {missing} missing)"
    return f"lengths {len(got)} vs {len(expected)} ({dups} repeated, {missing} missing)"


def _children_cpu() -> float:
    """CPU seconds of this process's children that have been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- (b) a 1,000,000-line run ---------------------------------------------------------------------


def seed_big_log(db: Path, run_id: int, first: int, last: int) -> None:
    """Append numbered lines (every 1000th an ERROR) to a run, indexed for full-text search."""
    now = time.time()

    def text(n: int) -> str:
        level = "ERROR" if n % 1000 == 0 else "INFO"
        return (
            f"{level} line {n:07d} worker={n % 8} processed batch of {n % 500} items in {n % 97} ms"
        )

    rows = (
        (run_id, n, now, "stdout", "ERROR" if n % 1000 == 0 else "INFO", text(n))
        for n in range(first, last + 1)
    )
    with sqlite3.connect(db, timeout=120) as conn:
        top = conn.execute("SELECT coalesce(max(id), 0) FROM log_line").fetchone()[0]
        conn.executemany(
            "INSERT INTO log_line (run_id, seq, ts, stream, level, text) VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )
        conn.execute(
            "INSERT INTO log_fts(rowid, text) SELECT id, text FROM log_line WHERE id > ?", (top,)
        )
        conn.execute(
            "UPDATE run SET out_lines = ?, out_bytes = ? WHERE id = ?",
            (last, last * 80, run_id),
        )


@dataclass
class BigLogResult:
    lines: int
    page: Timing
    count_window: Timing
    tail_window: Timing
    first_screen: Timing
    browser: Timing | None
    searches: list[Timing]


def bench_big_log(
    quiet: Callable[[str], None],
    server: ServerHandle,
    client: httpx.Client,
    lines: int,
    repeat: int,
    browser: bool,
) -> BigLogResult:
    """The run page of a LINES-line run: the page, its first windows, Chromium, searches."""
    job = server.post("/api/jobs", {"pattern": "live1", "command": "echo INFO line 0000001"})
    run_id = job["runs"][0]["id"]
    wait_until(
        lambda: server.get(f"/api/jobs/{job['job']['id']}")["job"]["state"] == "success",
        timeout=60,
        what="the first line",
    )
    say(f"appending {lines - 1:,} lines to run {run_id} (and indexing them)")
    start = time.monotonic()
    seed_big_log(server.state_dir / "easytask.db", run_id, 2, lines)
    say(f"  done in {time.monotonic() - start:.1f}s")
    base = f"/api/runs/{run_id}"
    tail = (lines - 1) // PAGE * PAGE
    quiet("big log")

    def get(path: str, **params: Any) -> httpx.Response:
        resp = client.get(path, params=params)
        resp.raise_for_status()
        return resp

    def first_screen() -> None:
        get(f"/runs/{run_id}")
        total = get(base + "/lines", count=1, offset=0, limit=PAGE).json()["total"]
        assert total == lines, total
        last = get(base + "/lines", offset=(total - 1) // PAGE * PAGE, limit=PAGE).json()
        assert last["lines"][-1]["seq"] == lines

    page = timed("run page (HTML)", repeat, lambda: get(f"/runs/{run_id}"))
    count_window = timed(
        "first window with count",
        repeat,
        lambda: get(base + "/lines", count=1, offset=0, limit=PAGE),
    )
    tail_window = timed(
        "tail window", repeat, lambda: get(base + "/lines", offset=tail, limit=PAGE)
    )
    screen = timed(
        "first screen over HTTP", repeat, first_screen, "page + count window + tail window"
    )
    one = int(lines * 0.777777)
    searches = []
    for label, q, note in (
        ("search, one match", f"line {one:07d}", "1 match"),
        ("search, 1,000 matches", "ERROR line", "1,000 matches"),
        ("search, no match", "no such text", "0 matches"),
        ("search, 10,000+ matches", "worker=3 processed", "capped at limit=10000"),
    ):

        def search(q: str = q) -> None:
            get(base + "/search", q=q)

        searches.append(timed(label, repeat, search, note))
    seen = get(base + "/search", q=f"line {one:07d}").json()["matches"]
    assert seen == [{"seq": one, "pos": one - 1}], seen
    shown = None
    if browser:
        shown = browser_first_screen(server, client, run_id, lines, repeat)
    return BigLogResult(lines, page, count_window, tail_window, screen, shown, searches)


def browser_first_screen(
    server: ServerHandle, client: httpx.Client, run_id: int, lines: int, repeat: int
) -> Timing | None:
    """Chromium: from navigation to the run page until its last line is on screen."""
    if not Path(CHROMIUM).exists():
        say(f"{CHROMIUM} is missing: skipping the browser measurement")
        return None
    from playwright.sync_api import sync_playwright

    cookie = client.cookies.get("easytask_session") or ""
    out = Timing("first screen in Chromium", note=f"navigation until line {lines:,} is on screen")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"], headless=True
        )
        try:
            context = chromium.new_context(
                base_url=server.url, viewport={"width": 1280, "height": 860}
            )
            host = server.url.split("//", 1)[1].split(":")[0]
            context.add_cookies(
                [{"name": "easytask_session", "value": cookie, "domain": host, "path": "/"}]
            )
            page = context.new_page()
            wanted = f"#logview .logline[data-seq='{lines}']"
            for i in range(repeat + 1):
                start = time.perf_counter()
                page.goto(f"/runs/{run_id}", wait_until="commit")
                page.wait_for_selector(wanted, state="visible", timeout=60_000)
                if i:  # the first load fills the browser's cache of scripts and styles
                    out.samples.append((time.perf_counter() - start) * 1000)
            context.close()
        finally:
            chromium.close()
    return out


# -- (c) 100,000 runs ------------------------------------------------------------------------------

HOSTS = (
    [f"web{i:03d}" for i in range(1, 201)]
    + [f"db{i:03d}" for i in range(1, 51)]
    + [f"cache{i:03d}" for i in range(1, 51)]
)
COMMANDS = [
    "uptime",
    "df -h /",
    "systemctl restart nginx",
    "apt-get update",
    "journalctl -u app --since -1h",
    "/opt/app/bin/migrate --check",
    "backup.sh --dir /var/backups --keep 7",
    "rotate-logs /var/log/app",
    "curl -fsS http://localhost/health",
    "tar czf /tmp/etc.tgz /etc",
]
STATES = (
    ["success"] * 85 + ["failed"] * 8 + ["terminated"] * 3 + ["unreachable"] * 2 + ["skipped"] * 2
)
USERS = ["admin", "otto", "ci", "schedule"]


def fmt_db(value: datetime) -> str:
    """A UTC time as SQLAlchemy stores it in SQLite."""
    return value.astimezone(UTC).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")


def seed_history(db: Path, runs: int, days: float = 60.0, per_job: int = 5) -> None:
    """Append `runs` finished runs in jobs of `per_job` over the last `days` days, with lines."""
    rnd = random.Random(7)
    now = datetime.now(UTC)
    jobs = runs // per_job
    step = timedelta(days=days) / max(jobs, 1)
    start = now - timedelta(days=days)
    with sqlite3.connect(db, timeout=120) as conn:
        job_id = conn.execute("SELECT coalesce(max(id), 0) FROM job").fetchone()[0]
        run_id = conn.execute("SELECT coalesce(max(id), 0) FROM run").fetchone()[0]
        line_top = conn.execute("SELECT coalesce(max(id), 0) FROM log_line").fetchone()[0]
        job_rows, run_rows, line_rows = [], [], []
        for j in range(jobs):
            job_id += 1
            created = start + step * j
            command = rnd.choice(COMMANDS)
            user = rnd.choice(USERS)
            hosts = rnd.sample(HOSTS, per_job)
            kind = "schedule" if user == "schedule" else "adhoc"
            states = [rnd.choice(STATES) for _ in hosts]
            job_state = (
                "success"
                if all(s in ("success", "skipped") for s in states)
                else "terminated"
                if "terminated" in states
                else "failed"
                if "failed" in states
                else "unreachable"
            )
            finished = created + timedelta(seconds=rnd.uniform(0.2, 30))
            job_rows.append(
                (
                    job_id,
                    kind,
                    command[:200],
                    " ".join(hosts[:2]),
                    command,
                    "{}",
                    user,
                    f"{'schedule' if kind == 'schedule' else 'cli'} 127.0.0.1",
                    job_state,
                    None,
                    60.0,
                    0,
                    fmt_db(created),
                    fmt_db(finished),
                )
            )
            for host, state in zip(hosts, states, strict=True):
                run_id += 1
                began = created + timedelta(milliseconds=rnd.uniform(5, 300))
                ended = began + timedelta(seconds=rnd.uniform(0.05, 20))
                code = 0 if state == "success" else (1 if state == "failed" else None)
                run_rows.append(
                    (
                        run_id,
                        job_id,
                        command.split()[0],
                        host,
                        "agent",
                        host,
                        command,
                        state,
                        1,
                        code,
                        "TERM" if state == "terminated" else None,
                        "killed by admin" if state == "terminated" else "",
                        fmt_db(created),
                        fmt_db(began) if state != "unreachable" else None,
                        fmt_db(ended),
                        120,
                        3,
                        0,
                        0,
                        0,
                    )
                )
                ts = began.timestamp()
                texts = [
                    f"INFO {host} starting {command}",
                    f"INFO {host} took {rnd.randint(1, 5000)} ms",
                    f"ERROR {host} disk full on /var"
                    if state == "failed" and rnd.random() < 0.1
                    else f"INFO {host} done rc={code}",
                ]
                for seq, text in enumerate(texts, 1):
                    level = "ERROR" if text.startswith("ERROR") else "INFO"
                    line_rows.append((run_id, seq, ts, "stdout", level, text))
        conn.executemany(f"INSERT INTO job VALUES ({', '.join('?' * 14)})", job_rows)
        conn.executemany(f"INSERT INTO run VALUES ({', '.join('?' * 20)})", run_rows)
        conn.executemany(
            "INSERT INTO log_line (run_id, seq, ts, stream, level, text) VALUES (?, ?, ?, ?, ?, ?)",
            line_rows,
        )
        conn.execute(
            "INSERT INTO log_fts(rowid, text) SELECT id, text FROM log_line WHERE id > ?",
            (line_top,),
        )


@dataclass
class HistoryResult:
    runs: int
    api: list[Timing]
    page: list[Timing]


def history_filters(host: str) -> list[tuple[str, dict[str, Any], bool]]:
    """(label, query, page only) of each filter combination measured."""
    return [
        ("no filter (newest 50)", {}, False),
        ("status=failed", {"status": "failed"}, False),
        (
            "status=failed,terminated,unreachable",
            {"status": "failed,terminated,unreachable"},
            False,
        ),
        (f"host={host}", {"host": host}, False),
        ("host=db0* (wildcard)", {"host": "db0*"}, True),
        ("since=7d", {"since": "7d"}, False),
        ("since=30d until=29d", {"since": "30d", "until": "29d"}, False),
        ("task=restart", {"task": "restart"}, False),
        ("task=no-such-command (no match)", {"task": "no-such-command"}, False),
        ("user=otto", {"user": "otto"}, True),
        ("q=disk full (full text)", {"q": "disk full"}, True),
        ("q=starting (full text, in every run)", {"q": "starting"}, True),
        ("q=no such words (full text, no match)", {"q": "no such words"}, True),
        (
            "status=failed host=db0* since=30d task=backup",
            {"status": "failed", "host": "db0*", "since": "30d", "task": "backup"},
            True,
        ),
        (
            f"status=failed host={host} since=60d q=disk full",
            {"status": "failed", "host": host, "since": "60d", "q": "disk full"},
            True,
        ),
        ("before=50000 (an older page)", {"before": 50000}, False),
    ]


def bench_history(
    quiet: Callable[[str], None], server: ServerHandle, client: httpx.Client, runs: int, repeat: int
) -> HistoryResult:
    """The runs list (API and page) over `runs` stored runs, with each filter combination."""
    say(f"appending {runs:,} runs with 3 lines each")
    start = time.monotonic()
    seed_history(server.state_dir / "easytask.db", runs)
    say(f"  done in {time.monotonic() - start:.1f}s")
    host = "web042"
    quiet("runs list")
    api: list[Timing] = []
    page: list[Timing] = []
    for label, query, page_only in history_filters(host):
        params = {"limit": 50, **query}

        def get_page(params: dict[str, Any] = params) -> None:
            resp = client.get("/runs", params=params)
            if resp.status_code != 200:
                raise RuntimeError(f"/runs {params}: {resp.status_code}")

        page.append(timed(label, repeat, get_page))
        if not page_only:

            def get_api(params: dict[str, Any] = params) -> None:
                server.get("/api/runs", **params)

            api.append(timed(label, repeat, get_api))
    return HistoryResult(runs, api, page)


# -- the report ------------------------------------------------------------------------------------


def verdict(value: float, target: float) -> str:
    if value != value:  # NaN
        return "not measured"
    if value < target:
        return "met"
    return f"missed by {value - target:.0f} ms ({value / target:.1f}x)"


NOTES = "<!-- notes: kept when the benchmark rewrites this file -->"
VARIANTS = {
    "as-is": "The server as it is",
    "nodelay": (
        "What if: the same server with TCP_NODELAY on its HTTP connections (a `sitecustomize` "
        "in the server's PYTHONPATH makes asyncio set it; the engine code is unchanged)"
    ),
}
# Loaded by the server process of the `nodelay` variant only.
NODELAY_SITECUSTOMIZE = """\
import asyncio.base_events as _base_events
import socket as _socket


def _set_nodelay(sock):
    if sock.family in (_socket.AF_INET, _socket.AF_INET6) and sock.type == _socket.SOCK_STREAM:
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)


_base_events._set_nodelay = _set_nodelay
"""


@dataclass
class VariantResult:
    """Every figure measured on one server."""

    name: str
    quiet: dict[str, tuple[float, float]] = field(default_factory=dict)
    busy_during: dict[str, float] = field(default_factory=dict)
    live: LiveResult | None = None
    big: BigLogResult | None = None
    history: HistoryResult | None = None


def nan_max(values: list[float]) -> float:
    return max(values) if values else float("nan")


def summary(results: list[VariantResult]) -> list[str]:
    """One row per target, one column per variant."""
    names = [r.name for r in results]
    out = [
        "## Targets",
        "",
        "| target | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]

    def row(label: str, values: list[tuple[float, float]]) -> None:
        cells = ["-" if v != v else f"{v:.0f} ms: {verdict(v, target)}" for v, target in values]
        out.append(f"| {label} | " + " | ".join(cells) + " |")

    nan = float("nan")
    row(
        f"live line p99 < {TARGET_P99_MS:g} ms",
        [(pct(r.live.total_ms, 99) if r.live else nan, TARGET_P99_MS) for r in results],
    )
    row(
        f"first screen of the big run < {TARGET_FIRST_SCREEN_MS:g} ms (HTTP)",
        [(r.big.first_screen.median if r.big else nan, TARGET_FIRST_SCREEN_MS) for r in results],
    )
    row(
        f"first screen of the big run < {TARGET_FIRST_SCREEN_MS:g} ms (Chromium)",
        [
            (r.big.browser.median if r.big and r.big.browser else nan, TARGET_FIRST_SCREEN_MS)
            for r in results
        ],
    )
    row(
        f"slowest search of the big run < {TARGET_SEARCH_MS:g} ms",
        [
            (max(t.median for t in r.big.searches) if r.big else nan, TARGET_SEARCH_MS)
            for r in results
        ],
    )
    row(
        f"slowest runs-list filter < {TARGET_LIST_MS:g} ms (API and page)",
        [
            (
                max(t.median for t in r.history.api + r.history.page) if r.history else nan,
                TARGET_LIST_MS,
            )
            for r in results
        ],
    )
    out += ["", "Each figure is a median; the tables below have the worst case too.", ""]
    return out


def render_variant(args: argparse.Namespace, result: VariantResult) -> list[str]:
    out = [f"## {VARIANTS[result.name]}", ""]
    if result.quiet:
        out += [
            "Before each step the benchmark waited (at most "
            f"{args.quiet_wait:g} s) for the CPUs to be less than {args.quiet_below:g}% busy, "
            "then measured (busy % includes the benchmark's own processes): "
            + "; ".join(
                f"{step}: {busy:.0f}% busy after {waited:.0f} s, "
                f"{result.busy_during.get(step, float('nan')):.0f}% while measured"
                for step, (busy, waited) in result.quiet.items()
            )
            + ".",
            "",
        ]
    live, big, history = result.live, result.big, result.history
    if live is not None:
        tot, agt, fan = live.total_ms, live.agent_ms, live.fanout_ms
        complete = live.in_order and min(live.per_viewer, default=0) == live.lines
        out += [
            "### Live lines to many viewers",
            "",
            f"One run prints {live.rate:g} lines/s for {live.seconds:g} s ({live.lines:,} lines, "
            f"each with its print time); {live.viewers} viewers follow `GET /api/runs/ID/events` "
            f"(asyncio HTTP/1.1 streams, bearer token, {args.viewer_procs} client processes). Latency = received - "
            "printed; the server's `ts` of each line splits it in two.",
            "",
            "| | p50 ms | p99 ms | max ms |",
            "|---|---:|---:|---:|",
        ]
        for label, values in (
            ("printed -> viewer (total)", tot),
            ("printed -> server (supervisor, agent, SSH link)", agt),
            ("server -> viewer (hub, SSE, TCP, client)", fan),
        ):
            out.append(
                f"| {label} | {pct(values, 50):.1f} | {pct(values, 99):.1f} "
                f"| {nan_max(values):.1f} |"
            )
        out += [
            "",
            f"- Lines per viewer: {min(live.per_viewer, default=0):,} to "
            f"{max(live.per_viewer, default=0):,} of {live.lines:,}; in order with none missing "
            f"or repeated (compared with the stored log): {'yes' if complete else 'NO'}"
            + (
                f" ({len(live.problems)} viewers differ; first: {live.problems[0]})"
                if live.problems
                else ""
            )
            + ".",
            f"- From the first line to the last viewer's end: {live.wall:.1f} s. CPU used "
            f"meanwhile: server {live.server_cpu:.1f} s, agent {live.agent_cpu:.1f} s, viewer "
            f"processes {live.viewer_cpu:.1f} s (all CPUs {live.busy:.0f}% busy).",
            f"- Target p99 < {TARGET_P99_MS:g} ms: **{verdict(pct(tot, 99), TARGET_P99_MS)}**.",
            "",
        ]
    if big is not None:
        out += [
            f"### A run of {big.lines:,} lines",
            "",
            f"The run page, signed in (median and worst of {args.repeat}, after one warm-up; one "
            "kept-alive connection, as a browser uses).",
            "",
            "| request | median ms | worst ms | note |",
            "|---|---:|---:|---|",
        ]
        rows = [big.page, big.count_window, big.tail_window, big.first_screen]
        if big.browser is not None:
            rows.append(big.browser)
        rows += big.searches
        for t in rows:
            out.append(f"| {t.name} | {t.median:.0f} | {t.worst:.0f} | {t.note} |")
        out += [
            "",
            f"- Target first screen < {TARGET_FIRST_SCREEN_MS:g} ms: over HTTP "
            f"**{verdict(big.first_screen.median, TARGET_FIRST_SCREEN_MS)}**"
            + (
                f"; in Chromium **{verdict(big.browser.median, TARGET_FIRST_SCREEN_MS)}**."
                if big.browser is not None
                else "."
            ),
            f"- Target search < {TARGET_SEARCH_MS:g} ms: "
            + "; ".join(
                f"{t.name}: **{verdict(t.median, TARGET_SEARCH_MS)}**" for t in big.searches
            )
            + ".",
            "",
        ]
    if history is not None:
        api = {t.name: t for t in history.api}
        out += [
            f"### The runs list over {history.runs:,} runs",
            "",
            "`GET /api/runs?limit=50&...` (bearer token) and the `/runs` page (signed in), "
            f"median and worst of {args.repeat} after one warm-up. The API has no user or "
            "full-text filter and no host wildcard (-).",
            "",
            f"| filters | API median | API worst | page median | page worst "
            f"| target < {TARGET_LIST_MS:g} ms |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for t in history.page:
            a = api.get(t.name)
            slowest = max(t.median, a.median if a else 0.0)
            out.append(
                f"| {t.name} | {f'{a.median:.0f}' if a else '-'} "
                f"| {f'{a.worst:.0f}' if a else '-'} | {t.median:.0f} | {t.worst:.0f} "
                f"| {verdict(slowest, TARGET_LIST_MS)} |"
            )
        out.append("")
    return out


def render(
    args: argparse.Namespace,
    results: list[VariantResult],
    machine: dict[str, str],
    busy_before: float,
    busy_during: float,
    started: datetime,
) -> str:
    out: list[str] = ["# Console benchmark", ""]
    out.append(f"Measured {started:%Y-%m-%d %H:%M} UTC with:")
    out += ["", "```sh", ".venv/bin/python -m bench.console " + " ".join(args.argv), "```", ""]
    out.append(
        f"- Machine: {machine['cpus']} CPUs ({machine['cpu_model']}), {machine['memory']} RAM, "
        f"{machine['kernel']}"
    )
    out.append(
        f"- Software: Python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}, "
        f"EasyTask revision {git_revision()}"
    )
    out.append(
        f"- Other work on the machine (it is shared): the CPUs were {busy_before:.0f}% busy in "
        f"the 2 s before the benchmark started and {busy_during:.0f}% over the whole run, the "
        "benchmark's own processes included."
    )
    out.append(
        "- Server, agent and clients on one machine over loopback; every figure is wall clock "
        "seen by the client."
    )
    out.append("")
    out += summary(results)
    for result in results:
        out += render_variant(args, result)
    return "\n".join(out)


def run_variant(args: argparse.Namespace, name: str, work: Path, skip: set[str]) -> VariantResult:
    """Start a server and an agent, measure everything asked for, stop them."""
    result = VariantResult(name)
    procs = Procs()
    saved = os.environ.get("PYTHONPATH")
    try:
        inventory = work / "inventory.ini"
        inventory.write_text("[bench]\nlive1\n")
        if name == "nodelay":
            site = work / "nodelay-site"
            site.mkdir(exist_ok=True)
            (site / "sitecustomize.py").write_text(NODELAY_SITECUSTOMIZE)
            os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), saved) if p)
        try:
            server = start_server(
                work / "server", inventory, procs, "--playbooks", str(work / "none")
            )
        finally:
            if saved is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = saved
        start_agent(server, "live1", work / "agents" / "live1", procs, "--keepalive", "1")

        current: list[Any] = []  # the step being measured and the CPU counters at its start

        def finish_step() -> None:
            if current:
                result.busy_during[current[0]] = busy_since(current[1])
                current.clear()

        def quiet(step: str) -> None:
            finish_step()
            busy, waited = wait_quiet(args.quiet_wait, args.quiet_below)
            result.quiet[step] = (busy, waited)
            say(f"{step}: CPUs {busy:.0f}% busy after waiting {waited:.0f}s for a quieter machine")
            current[:] = [step, cpu_counters()]

        if "live" not in skip:
            quiet("live")
            live = bench_live(
                server, procs, work, args.viewers, args.rate, args.seconds, args.viewer_procs
            )
            say(
                f"{name} live: p50 {pct(live.total_ms, 50):.1f} ms, "
                f"p99 {pct(live.total_ms, 99):.1f} ms, max {nan_max(live.total_ms):.1f} ms"
            )
            result.live = live
            finish_step()
        client = signed_in_client(server)
        try:
            if "log" not in skip:
                result.big = bench_big_log(
                    quiet, server, client, args.lines, args.repeat, browser=not args.no_browser
                )
                finish_step()
            if "history" not in skip:
                result.history = bench_history(quiet, server, client, args.runs, args.repeat)
            finish_step()
        finally:
            client.close()
        stop_server(server, procs)
    finally:
        procs.stop_all()
    return result


def write_results(path: Path, report: str) -> None:
    """Write the report, keeping the notes section of the previous file."""
    notes = ""
    if path.exists():
        old = path.read_text()
        if NOTES in old:
            notes = old[old.index(NOTES) :]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report + "\n" + ("\n" + notes if notes else ""))


def as_json(results: list[VariantResult]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in results:
        entry: dict[str, Any] = {}
        if r.live is not None:
            entry["live"] = {
                "p50": pct(r.live.total_ms, 50),
                "p99": pct(r.live.total_ms, 99),
                "max": nan_max(r.live.total_ms),
                "per_viewer": r.live.per_viewer,
            }
        if r.big is not None:
            timings = [r.big.page, r.big.count_window, r.big.tail_window, r.big.first_screen]
            timings += r.big.searches + ([r.big.browser] if r.big.browser else [])
            entry["log"] = {t.name: t.samples for t in timings}
        if r.history is not None:
            entry["history"] = {
                "api": {t.name: t.samples for t in r.history.api},
                "page": {t.name: t.samples for t in r.history.page},
            }
        out[r.name] = entry
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--viewers", type=int, default=50)
    parser.add_argument("--rate", type=float, default=1000.0, help="lines per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--viewer-procs", type=int, default=2, help="client processes")
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-browser", action="store_true", help="skip the Chromium figure")
    parser.add_argument("--skip", default="", help="comma list of live,log,history to skip")
    parser.add_argument(
        "--variants",
        default="as-is",
        help="comma list of as-is,nodelay (nodelay: TCP_NODELAY on the server's HTTP side)",
    )
    parser.add_argument(
        "--quiet-below",
        type=float,
        default=25.0,
        help="before each step wait for the CPUs to be less busy than this (percent)",
    )
    parser.add_argument(
        "--quiet-wait", type=float, default=90.0, help="but wait at most this long (seconds)"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    parser.add_argument("--results", type=Path, help=f"Markdown report (default {RESULTS})")
    parser.add_argument("--json", type=Path, help="raw figures as JSON")
    parser.add_argument("--workdir", type=Path, help="state dirs go here (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    parser.add_argument("--viewer-worker", help=argparse.SUPPRESS)
    raw = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(raw)
    if args.viewer_worker:
        return viewer_worker(args.viewer_worker)
    args.argv = raw
    if args.quick:
        args.viewers, args.seconds, args.lines, args.runs, args.repeat = 5, 2.0, 20_000, 2_000, 2
        args.quiet_wait = 0.0
    results_path = args.results or (None if args.quick else RESULTS)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant {unknown[0]!r}; use {', '.join(VARIANTS)}")
    raise_nofile()
    started = datetime.now(UTC)
    machine = machine_info()
    busy_before = cpu_busy(2.0)
    busy0 = cpu_counters()
    base = args.workdir or Path(tempfile.mkdtemp(prefix="easytask-bench-console-"))
    base.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for name in variants:
            work = base / name
            work.mkdir(parents=True, exist_ok=True)
            say(f"variant {name}")
            results.append(run_variant(args, name, work, skip))
    finally:
        if not args.keep:
            if args.workdir:
                for child in base.iterdir():
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
            else:
                shutil.rmtree(base, ignore_errors=True)
    report = render(args, results, machine, busy_before, busy_since(busy0), started)
    print(report)
    if results_path is not None:
        write_results(results_path, report)
        say(f"wrote {results_path}")
    if args.json is not None:
        args.json.write_text(json.dumps(as_json(results), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
