"""The fan-out benchmark starts, measures and cleans up; its figures are not checked here."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO


def _bench(module: str, *args: str) -> list[str]:
    """The command that runs `python -m bench.MODULE ARGS`."""
    return [sys.executable, "-m", f"bench.{module}", *args]


def _bench_env() -> dict[str, str]:
    """The environment a benchmark runs in from another directory: the repo on the path."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(REPO) + (os.pathsep + path if path else "")}


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


@pytest.mark.slow
def test_fanout_quick_prints_a_row_and_leaves_nothing_running(tmp_path: Path) -> None:
    """`fanout.py --quick --sizes 5 --no-ansible` exits 0, prints N=5 with a positive time, cleans up."""
    work = tmp_path / "work"
    result = subprocess.run(
        _bench(
            "fanout",
            "--quick",
            "--sizes",
            "5",
            "--no-ansible",
            "--workdir",
            str(work),
            "--json",
            str(tmp_path / "fanout.json"),
        ),
        capture_output=True,
        text=True,
        timeout=110,
        cwd=tmp_path,
        env=_bench_env(),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    row = re.search(r"^\s*5\s+(\d+\.\d+)\s", result.stdout, re.M)
    assert row is not None, result.stdout
    assert float(row.group(1)) > 0
    data = json.loads((tmp_path / "fanout.json").read_text())
    assert [r["n"] for r in data["rows"]] == [5]
    assert data["rows"][0]["agents"][0] > 0
    assert not _processes_mentioning(str(work))
    assert list(work.iterdir()) == []


def _run_quick(script: str, tmp_path: Path, *extra: str) -> tuple[str, dict]:
    """Run `python -m bench.SCRIPT --quick` in a fresh work dir; its stdout and its --json record."""
    work = tmp_path / "work"
    work.mkdir()
    out_json = tmp_path / f"{script}.json"
    result = subprocess.run(
        _bench(
            script.removesuffix(".py"),
            "--quick",
            "--workdir",
            str(work),
            "--json",
            str(out_json),
            *extra,
        ),
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
        env=_bench_env(),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert not _processes_mentioning(str(work))
    assert list(work.iterdir()) == []
    return result.stdout, json.loads(out_json.read_text())


@pytest.mark.slow
def test_roundtrip_quick_measures_every_path(tmp_path: Path) -> None:
    """`roundtrip.py --quick`: 3 rounds of every path, a ratio to ssh for each, nothing left."""
    stdout, rec = _run_quick("roundtrip.py", tmp_path)
    assert set(rec["samples"]) == {
        "api_agent",
        "api_agentless",
        "cli_agent",
        "cli_agentless",
        "ssh_mux",
        "ssh_plain",
        "cli_version",
        "py_floor",
    }
    assert all(len(v) == 3 and min(v) > 0 for v in rec["samples"].values())
    assert re.search(r"^API, agent\s+\d+\.\d\s+\d+\.\d\s+\d+\.\dx$", stdout, re.M), stdout
    assert "load average before:" in stdout


@pytest.mark.slow
def test_ingest_quick_stores_and_finds_every_line(tmp_path: Path) -> None:
    """`ingest.py --quick`: 20,000 lines stored and the last one found; raw rates alongside."""
    stdout, rec = _run_quick("ingest.py", tmp_path)
    assert rec["real"]["lines"] == 20_000
    assert rec["real"]["rate"] > 0
    assert rec["store"]["rate"] > 0
    assert set(rec["raw"]) == {"fts", "indexed", "bare"}
    assert "lines/s" in stdout
    assert "last line searchable" in stdout


@pytest.mark.slow
def test_footprint_quick_reports_each_part(tmp_path: Path) -> None:
    """`footprint.py --quick`: the agent with its supervisor, 20 agents, 10 MB of output, and
    an agent's install against a server's."""
    stdout, rec = _run_quick("footprint.py", tmp_path)
    assert rec["agent"]["supervisors"] == 1
    assert rec["agent"]["after_rss"] > rec["agent"]["before_rss"] > 0
    assert rec["fleet"]["online_after"] == 20
    assert rec["fleet"]["server_rss"] > 0
    assert rec["output"]["bytes"] == 10 << 20
    assert rec["output"]["server_hwm"] > 0
    assert "server peak RSS" in stdout
    agent, full = rec["install"]["agent"], rec["install"]["full"]
    assert "asyncssh" in agent["distributions"] and "sqlmodel" not in agent["distributions"]
    assert "sqlmodel" in full["distributions"]
    assert 0 < agent["site_kib"] < full["site_kib"]
    assert agent["rss"] > 0 and full["rss"] > 0


@pytest.mark.slow
@pytest.mark.postgres
def test_cluster_quick_one_and_two_servers_and_both_backends(tmp_path: Path) -> None:
    """`cluster.py --quick` with 40 runs: every set-up finishes them all, the two servers execute
    20 each, ingest on both backends; PostgreSQL and every child stopped, nothing left."""
    stdout, rec = _run_quick("cluster.py", tmp_path, "--runs", "40", "--lines", "3000")
    t = rec["throughput"]
    assert set(t) == {"sqlite1", "pg1", "pg2"}
    assert all(r["runs"] == 40 and r["jobs"] == 2 and r["rate"] > 0 for r in t.values())
    assert [len(r["server_cpu"]) for r in (t["pg1"], t["pg2"])] == [1, 2]
    assert t["pg1"]["runs_by_server"] == [40]
    assert t["pg2"]["runs_by_server"] == [20, 20]  # each server executes its own agents' runs
    for path in ("store", "real"):
        assert set(rec["ingest"][path]) == {"sqlite", "postgresql"}
        assert all(r["lines"] == 3000 and r["rate"] > 0 for r in rec["ingest"][path].values())
    assert re.search(r"^PostgreSQL, 2 servers\s+\d+\.\d\s+\d+\s", stdout, re.M), stdout
    assert re.search(r"^Store\.write_lines alone\s+[\d,]+\s+[\d,]+\s+\d+\.\d\d$", stdout, re.M)
    assert "Two servers / one server on PostgreSQL" in stdout
    assert not Path(rec["postgres_root"]).exists()
    assert not _processes_mentioning(rec["postgres_root"])


@pytest.mark.slow
@pytest.mark.postgres
def test_pgout_quick_ingests_and_searches_on_both_backends(tmp_path: Path) -> None:
    """`pgout.py --quick`: `seq 1 20000` stored and found on SQLite and PostgreSQL, with CPU
    seconds per 100k lines, and a word and a phrase found in a 100,000-line history on both."""
    stdout, rec = _run_quick("pgout.py", tmp_path)
    for backend in ("sqlite", "postgresql"):
        real, hist = rec["real"][backend], rec["history"][backend]
        assert real["lines"] == 20_000 and real["rate"] > 0 and real["server_cpu_100k"] > 0
        assert hist["lines"] == 100_000
        assert all(hist[k] > 0 for k in ("run_word", "run_phrase", "all_word", "all_phrase"))
    assert rec["real"]["postgresql"]["pg_cpu_100k"] > 0
    assert "PostgreSQL CPU s per 100k lines" in stdout


@pytest.mark.slow
def test_grouping_quick_folds_and_renders(tmp_path: Path) -> None:
    """`grouping.py --quick`: 50 hosts x 100 lines folded for the CLI and the console, nothing
    left in the work dir."""
    stdout, rec = _run_quick("grouping.py", tmp_path)
    assert (rec["hosts"], rec["lines"]) == (50, 100)
    assert rec["cli"]["groups"] == 2  # web0025 fails; the others print the same
    assert rec["cli"]["largest"] == "web[0001:0024], web[0026:0050]"
    assert rec["console"]["groups"] == 2 and rec["console"]["cut_hosts"] == 0
    assert rec["cli"]["total"] > 0 and min(rec["console"]["seconds"]) > 0
    assert re.search(r"^CLI: all three\s+\d+\.\d{3}$", stdout, re.M), stdout


def test_all_runs_every_benchmark_with_write(tmp_path: Path) -> None:
    """`make bench` (bench.all) runs the seven benchmarks in order, each writing its report."""
    result = subprocess.run(
        _bench("all", "--dry-run"),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=_bench_env(),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "== python -m bench.fanout --write",
        "== python -m bench.console",
        "== python -m bench.roundtrip --write",
        "== python -m bench.ingest --write",
        "== python -m bench.footprint --write",
        "== python -m bench.cluster --write",
        "== python -m bench.grouping --write",
    ]
    assert "-m bench.all" in (REPO / "Makefile").read_text()


PYINFRA_VENV = Path("/tmp/pyinfra-venv")


@pytest.mark.slow
@pytest.mark.skipif(
    not (PYINFRA_VENV / "bin" / "pyinfra").exists(),
    reason="pyinfra is not installed in /tmp/pyinfra-venv (the benchmark would install it)",
)
def test_pyinfra_fanout_quick_times_both_tools(tmp_path: Path) -> None:
    """`pyinfra_fanout.py --quick`: N=3 with EasyTask and pyinfra side by side, nothing left."""
    stdout, rec = _run_quick("pyinfra_fanout.py", tmp_path, "--pyinfra-venv", str(PYINFRA_VENV))
    (row,) = rec["rows"]
    assert row["n"] == 3
    assert min(row["cold"] + row["pooled"] + row["pyinfra"]) > 0
    assert re.search(r"^\s*3\s+\d+\.\d\d\s+\d+\.\d\d\s+\d+\.\d\d\s", stdout, re.M), stdout


@pytest.mark.slow
def test_hostmetrics_quick_samples_and_ingests(tmp_path: Path) -> None:
    """`hostmetrics.py --quick`: a CPU cost per sample from the real /proc, samples of 5 agents
    stored through the real ingest path while they sample, none while they do not."""
    stdout, rec = _run_quick("hostmetrics.py", tmp_path)
    assert rec["sampling"]["cpu_per_sample_ms"] > 0
    assert rec["sampling"]["full_queue_kib"] > 0
    phases = rec["ingest"]["phases"]
    assert phases["idle links"]["stored"] == 0
    assert phases["sampling at 1 s"]["stored"] > 0
    assert "1,000 agents at 1 s, ingest alone" in stdout


@pytest.mark.slow
@pytest.mark.postgres
def test_dbfaults_quick_keeps_every_promise(tmp_path: Path) -> None:
    """`dbfaults.py --quick`: 5 agents, PostgreSQL down 5 s: the server stays up, the API answers
    503 with Retry-After, /readyz says unreachable, every line is stored once."""
    stdout, rec = _run_quick("dbfaults.py", tmp_path)
    assert rec["problems"] == []
    assert rec["api_while_down"] == {"503 retry-after": rec["api_while_down"]["503 retry-after"]}
    assert rec["runs_complete"] == rec["agents"] == 5
    assert "runs with every line once:     5 of 5" in stdout


@pytest.mark.slow
def test_scale_quick_puts_every_agent_online_and_stores_each_run_once(tmp_path: Path) -> None:
    """`scale.py --quick`: 200 agents over 2 simulator processes all online, `easytask run all`
    reaches each of them, its job stored with one run per agent; nothing left running."""
    stdout, rec = _run_quick("scale.py", tmp_path)
    r = rec["result"]
    assert (r["agents"], r["procs"]) == (200, 2)
    assert r["online_at_end"] == 200
    (fan,) = r["fanouts"]
    assert fan["runs"] == fan["hosts"] == 200
    assert fan["summary"].startswith("200 success")
    assert fan["seconds"] > 0 and r["idle_cpu_s"] >= 0 and r["rss_mib"] > 0
    # the 200 `sh -c true` ran and were reaped by the supervisors; the machine did the rest too
    assert fan["commands_cpu_s"] > 0 and fan["machine_busy_s"] >= fan["server_cpu_s"]
    phases = fan["phases"]  # the runs' timeline, seconds after the job's creation
    assert phases["CLI start"][0] < 0 < phases["dispatched"][0] <= phases["finished"][1]
    assert phases["dispatched"][0] <= phases["job end"][0] <= phases["CLI exit"][0]
    assert "easytask run all -a true" in stdout
    assert "-m bench.scale --write" in (REPO / "Makefile").read_text()  # `make bench-scale`


@pytest.mark.slow
def test_storm_quick_one_server_every_run_and_line_once_after_kill_9(tmp_path: Path) -> None:
    """`storm.py --quick --no-handoff`: 20 agents with runs printing lines, the server killed
    with kill -9 and started again: every agent back, one run per host, every run `success`,
    executed once, each line stored once; nothing left running."""
    stdout, rec = _run_quick("storm.py", tmp_path, "--no-handoff")
    r = rec["result"]["single"]
    c = r["counts"]
    assert set(rec["result"]) == {"single"}
    assert c["ok"] and c["runs"] == c["hosts"] == c["runs_every_line_once"] == 20
    assert c["states"] == {"success": 20} and c["executed_twice"] == c["hosts_twice"] == 0
    assert c["lines_stored"] == 20 * 6 and c["started_once"] == c["executed_once"] == 20
    assert r["online_api"] == 20 and 0 < r["back_online_s"] < 60
    assert "every agent online again after the kill" in stdout
    assert "-m bench.storm" in (REPO / "Makefile").read_text()  # `make bench-scale`


@pytest.mark.slow
@pytest.mark.postgres
def test_storm_quick_handoff_every_run_and_line_once_on_the_other_server(tmp_path: Path) -> None:
    """`storm.py --quick --no-single`: two servers on PostgreSQL, 20 agents on B with runs in
    flight, B killed with kill -9: A holds every agent and finishes every run, each once, each
    line stored once."""
    stdout, rec = _run_quick("storm.py", tmp_path, "--no-single")
    r = rec["result"]["handoff"]
    c = r["counts"]
    assert set(rec["result"]) == {"handoff"}
    assert c["ok"] and c["runs"] == c["hosts"] == c["runs_every_line_once"] == 20
    assert c["states"] == {"success": 20} and c["executed_twice"] == c["hosts_twice"] == 0
    assert c["lines_stored"] == 20 * 6 and c["started_once"] == c["executed_once"] == 20
    assert r["runs_on_a"] == 20 and r["b_rows_left"] == 0
    assert "A holds B's job" in stdout


@pytest.mark.slow
@pytest.mark.postgres
def test_servers_quick_fan_out_from_each_server_and_live_lines_across(tmp_path: Path) -> None:
    """`servers.py --quick`: three servers on one PostgreSQL, 30 agents spread over them: the
    CLI's fan-out from each server stores one run per agent (two thirds run by the other
    servers); a viewer on the next server gets every timed line of a run, each once."""
    stdout, rec = _run_quick("servers.py", tmp_path)
    r = rec["result"]
    assert (r["agents"], r["servers"], r["shares"]) == (30, 3, [10, 10, 10])
    assert [f["server"] for f in r["fanouts"]] == [0, 1, 2]
    for f in r["fanouts"]:
        assert f["runs"] == f["hosts"] == 30 and f["elsewhere"] == 20
        assert f["summary"].startswith("30 success") and f["seconds"] > 0
    assert [(v["from"], v["to"]) for v in r["views"]] == [(0, 1), (1, 2), (2, 0)]
    for v in r["views"]:
        assert v["state"] == "success" and v["ran_on_holder"]
        assert v["seen"] == 30 and v["missed"] == [] and v["twice"] == 0
    assert r["latency_ms"]["samples"] > 0 and r["latency_ms"]["p99"] >= r["latency_ms"]["p50"] > 0
    assert "live output across servers" in stdout
    assert "-m bench.servers" in (REPO / "Makefile").read_text()  # `make bench-scale`
