"""Exports: streamed JSON Lines and CSV, signed manifests, verification, constant memory."""

from __future__ import annotations

import csv
import html
import io
import json
import os
import re
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from easytask import exports
from tests.browser.support import Browserless, admin_password
from tests.conftest import AgentFactory, ServerFactory
from tests.support import ServerHandle

FORMULA = '=HYPERLINK("http://evil","x")'


@pytest.fixture
def history(start_server: ServerFactory, start_agent: AgentFactory) -> ServerHandle:
    """A server with one agent and two finished runs, one printing formula-like output."""
    server = start_server()
    start_agent(server, "ex1")
    assert server.cli("run", "ex1", "-a", "echo hello; echo second line").returncode == 0
    command = f"printf '%s\\n' '{FORMULA}' '+1+1' '-2' '@SUM(A1)' 'plain'; exit 3"
    assert server.cli("run", "ex1", "-a", command).returncode == 1
    return server


def test_export_with_logs_verifies_and_catches_tampering(
    history: ServerHandle, tmp_path: Path
) -> None:
    """The CLI export holds runs and lines, its manifest verifies; one changed byte fails it."""
    target = tmp_path / "out" / "runs.jsonl"
    target.parent.mkdir()
    made = history.cli("export", "--since", "1h", "--include-logs", "-o", str(target))
    assert made.returncode == 0, made.stderr
    assert "2 run(s), 7 line(s)" in made.stdout
    records = [json.loads(line) for line in target.read_text().splitlines()]
    assert [r["type"] for r in records] == ["run", "line", "line"] + ["run"] + ["line"] * 5
    assert records[0]["host"] == "ex1" and records[0]["submitted_by"] == "admin"
    assert [r["text"] for r in records[1:3]] == ["hello", "second line"]
    assert records[3]["exit_code"] == 3
    manifest = json.loads((tmp_path / "out" / "runs.jsonl.manifest.json").read_text())
    assert manifest["rows"] == {"runs": 2, "lines": 7}
    assert manifest["filters"] == {"since": "1h"} and manifest["include_logs"] is True
    assert manifest["sha256"] == exports.file_digest(target)[1]
    # the manifest names the audit event of this export as the chain head at export time
    events = history.get("/api/audit", action="export", limit=10)["events"]
    start = next(e for e in events if e["action"] == "export")
    done = next(e for e in events if e["action"] == "export.done")
    assert manifest["audit_head"] == {"id": start["id"], "hash": start["hash"]}
    assert done["detail"]["sha256"] == manifest["sha256"]
    ok = history.cli("export", "verify", str(target))
    assert ok.returncode == 0 and ": OK: sha256" in ok.stdout, ok.stderr
    key = history.get("/api/export/key")
    assert key["public_key"] == manifest["public_key"]
    pinned = history.cli("export", "verify", str(target), "--key", key["public_key"])
    assert pinned.returncode == 0 and "(pinned)" in pinned.stdout
    other = exports.public_key_text(exports.Ed25519PrivateKey.generate())
    wrong = history.cli("export", "verify", str(target), "--key", other)
    assert wrong.returncode == 1 and "not by the pinned key" in wrong.stderr

    data = bytearray(target.read_bytes())
    data[10] ^= 0x01
    target.write_bytes(bytes(data))
    bad = history.cli("export", "verify", str(target))
    assert bad.returncode == 1
    assert "does not match the manifest's" in bad.stderr and "(the file was altered)" in bad.stderr
    data[10] ^= 0x01
    target.write_bytes(bytes(data))
    # a manifest edited to match a changed file fails on its signature instead
    manifest_path = tmp_path / "out" / "runs.jsonl.manifest.json"
    forged = dict(manifest, rows={"runs": 1, "lines": 2})
    manifest_path.write_text(json.dumps(forged))
    bad = history.cli("export", "verify", str(target))
    assert bad.returncode == 1 and "manifest signature is not valid" in bad.stderr


def test_csv_is_safe_against_formula_and_header_injection(history: ServerHandle) -> None:
    """Cells that could start a formula get a leading quote; request text never reaches a header."""
    resp = history.http.get(
        "/api/export",
        params={"format": "csv", "logs": "1", "host": "ex1", "task": "x\r\nX-Evil: 1"},
    )
    assert resp.status_code == 200 and resp.text.startswith("type,run,job,")
    assert "x-evil" not in resp.headers
    assert resp.headers["content-disposition"].startswith('attachment; filename="easytask-export-')
    resp = history.http.get("/api/export", params={"format": "csv", "logs": "1"})
    rows = list(csv.DictReader(io.StringIO(resp.text)))
    assert len(rows) == 9  # 2 runs + 7 lines: quoted newlines cannot forge rows
    texts = [r["text"] for r in rows if r["type"] == "line"]
    assert texts[2:] == ["'" + FORMULA, "'+1+1", "'-2", "'@SUM(A1)", "plain"]
    assert [r["exit_code"] for r in rows if r["type"] == "run"] == ["0", "3"]
    bad = history.http.get("/api/export", params={"format": "xlsx"})
    assert bad.status_code == 400 and "format must be one of" in bad.json()["error"]
    bad = history.http.get("/api/export", params={"status": "done;DROP TABLE run"})
    assert bad.status_code == 400 and "unknown status" in bad.json()["error"]
    for export_id in ("..%2F..%2Fadmin.token", "../../admin", "0123456789abcdeg"):
        assert history.http.get(f"/api/exports/{export_id}/manifest").status_code == 404


def _vm(pid: int, field: str) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(ln for ln in status.splitlines() if ln.startswith(field)).split()[1])


@pytest.mark.slow
@pytest.mark.sqlite
@pytest.mark.timeout(1800)
def test_large_export_keeps_server_memory_flat(start_server: ServerFactory, tmp_path: Path) -> None:
    """An export of a million stored lines streams with the server's peak RSS under 200 MB."""
    total = int(os.environ.get("EASYTASK_EXPORT_LINES", "1000000"))
    server = start_server()
    with sqlite3.connect(server.state_dir / "easytask.db", timeout=60) as db:
        db.execute(
            "INSERT INTO job (kind, name, pattern, command, vars, submitted_by, source, state, "
            "pending_timeout, forks, created_at) VALUES ('adhoc', 'big', 'h', 'yes', '{}', "
            "'admin', 'test', 'success', 60, 0, datetime('now'))"
        )
        job = db.execute("SELECT max(id) FROM job").fetchone()[0]
        per_run = 100_000
        for r in range(total // per_run):
            db.execute(
                "INSERT INTO run (job_id, task, host, connection, agent, command, state, attempt, "
                "reason, created_at, out_bytes, out_lines, truncated, dropped_bytes, "
                "dropped_lines) VALUES (?, 'big', ?, 'agent', '', 'yes', 'success', 1, '', "
                "datetime('now'), 0, 0, 0, 0, 0)",
                (job, f"host{r}"),
            )
            run = db.execute("SELECT max(id) FROM run").fetchone()[0]
            db.executemany(
                "INSERT INTO log_line (run_id, seq, ts, stream, level, text) "
                "VALUES (?, ?, 0, 'stdout', 'INFO', ?)",
                (
                    (run, i, f"line {i} of run {r}: some ordinary output text")
                    for i in range(1, per_run + 1)
                ),
            )
    pid = server.proc.pid
    before = _vm(pid, "VmHWM")
    target = tmp_path / "big.jsonl"
    started = time.monotonic()
    made = server.cli("export", "--include-logs", "-o", str(target), timeout=1800)
    elapsed = time.monotonic() - started
    assert made.returncode == 0, made.stderr
    peak = _vm(pid, "VmHWM")
    manifest = json.loads(Path(f"{target}.manifest.json").read_text())
    assert manifest["rows"]["lines"] == total
    print(
        f"\nexport of {total} lines: {target.stat().st_size >> 20} MB in {elapsed:.1f}s; "
        f"server VmHWM {before >> 10} MB before, {peak >> 10} MB after; "
        f"VmRSS now {_vm(pid, 'VmRSS') >> 10} MB"
    )
    assert peak < 200 * 1024, f"server peak RSS {peak >> 10} MB"
    assert httpx.get(server.url + "/api/health").json() == {"ok": True}


def test_console_download_keeps_the_page_filters(history: ServerHandle) -> None:
    """The runs page links a download of exactly the runs it filters, signed in by the session."""
    console = Browserless(history)
    assert console.login("admin", admin_password(history)).status_code == 303
    page = console.http.get("/runs", params={"host": "ex1", "status": "failed"})
    link = re.search(
        r'id="export-csv" href="([^"]+)"|href="([^"]+)"[^>]*id="export-csv"', page.text
    )
    assert link is not None, page.text
    href = html.unescape(link.group(1) or link.group(2))
    assert "host=ex1" in href and "status=failed" in href
    resp = console.http.get(href)
    assert resp.status_code == 200
    rows = list(csv.DictReader(io.StringIO(resp.text)))
    assert [(r["type"], r["exit_code"]) for r in rows] == [("run", "3")]
    console.close()
