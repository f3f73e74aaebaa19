"""Ad hoc scripts and file operations on agents and an agentless host."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest

from tests.conftest import AgentFactory, ServerFactory, write
from tests.support import SSHD, ServerHandle


@pytest.fixture
def hosts(
    tmp_path: Path, start_server: ServerFactory, start_agent: AgentFactory, sshd: SSHD
) -> ServerHandle:
    """Two agents and one sshd host in group `all3`."""
    inventory = write(
        tmp_path / "inv.ini",
        f"""\
        [all3]
        fa1
        fa2
        fs1 {sshd.host_vars()}
        """,
    )
    server = start_server(inventory)
    start_agent(server, "fa1")
    start_agent(server, "fa2")
    return server


def test_script_with_arguments_on_three_hosts(hosts: ServerHandle, tmp_path: Path) -> None:
    """--script sends a local file, runs it with its arguments through its #! line, removes it."""
    script = write(
        tmp_path / "check me.py",
        """\
        #!/usr/bin/env python3
        import os, sys
        print("args:", sys.argv[1:])
        print("here:", os.path.dirname(os.path.abspath(__file__)))
        sys.exit(3 if "fail" in sys.argv else 0)
        """,
    )
    result = hosts.cli("run", "all3", "--script", str(script), "--", "one", "two words", "ünï")
    assert result.returncode == 0, result.stdout + result.stderr
    for host in ("fa1", "fa2", "fs1"):
        assert re.search(
            rf"^{host}\s+\| args: \['one', 'two words', 'ünï'\]$", result.stdout, re.M
        ), result.stdout
    dirs = re.findall(r"\| here: (\S+)", result.stdout)
    assert len(dirs) == 3 and all(not Path(d).exists() for d in dirs)
    failing = hosts.cli("run", "fa1", "--script", str(script), "--", "fail")
    assert failing.returncode == 1
    assert re.search(r"^fa1\s+failed\s+3", failing.stdout, re.M)


def test_copy_file_then_unchanged_and_backup(hosts: ServerHandle, tmp_path: Path) -> None:
    """copy reports changed, then unchanged; --backup keeps the previous version."""
    src = write(tmp_path / "app conf é.ini", "port = 1\n")
    dest_dir = tmp_path / "dest dir ü"
    dest_dir.mkdir()
    results = {}
    for host in ("fa1", "fs1"):
        dest = dest_dir / f"{host}.ini"
        first = hosts.cli("copy", host, str(src), str(dest), "--mode", "0600", "--format", "json")
        assert first.returncode == 0, first.stdout + first.stderr
        assert json.loads(first.stdout)["runs"][0]["reason"] == "changed"
        assert dest.read_text() == "port = 1\n" and dest.stat().st_mode & 0o777 == 0o600
        again = hosts.cli("copy", host, str(src), str(dest), "--format", "json")
        results[host] = json.loads(again.stdout)["runs"][0]["reason"]
        src.write_text("port = 2\n")
        backup = hosts.cli("copy", host, str(src), str(dest), "--backup")
        assert backup.returncode == 0, backup.stdout
        assert dest.read_text() == "port = 2\n"
        (kept,) = [
            p
            for p in dest_dir.iterdir()
            if p.name.startswith(f"{host}.ini.") and p.name.endswith("~")
        ]
        assert kept.read_text() == "port = 1\n"
        src.write_text("port = 1\n")
    assert results == {"fa1": "unchanged", "fs1": "unchanged"}


def test_copy_directory_recursively(hosts: ServerHandle, tmp_path: Path) -> None:
    """A directory is sent recursively; a second copy changes nothing."""
    src = tmp_path / "tree"
    write(src / "a.txt", "a\n")
    write(src / "sub" / "b.txt", "b\n")
    dest = tmp_path / "out-tree"
    result = hosts.cli("copy", "fa2", str(src), str(dest), "--format", "json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (dest / "sub" / "b.txt").read_text() == "b\n"
    assert json.loads(result.stdout)["runs"][0]["reason"] == "changed (2 of 2 files)"
    again = hosts.cli("copy", "fa2", str(src), str(dest), "--format", "json")
    assert json.loads(again.stdout)["runs"][0]["reason"] == "unchanged (0 of 2 files)"


def test_copy_to_unwritable_destination_fails_clearly(hosts: ServerHandle, tmp_path: Path) -> None:
    """A destination that cannot be written gives a per-host error and exit 1."""
    src = write(tmp_path / "x.txt", "x\n")
    result = hosts.cli("copy", "fa1,fs1", str(src), "/proc/easytask-cannot-write/x.txt")
    assert result.returncode == 1
    for host in ("fa1", "fs1"):
        assert re.search(rf"^{host}\s+failed\s+.*copy failed", result.stdout, re.M), result.stdout


def test_checksum_groups_hosts_and_names_the_odd_one(hosts: ServerHandle, tmp_path: Path) -> None:
    """checksum prints each digest with its hosts and exits 1 naming the host that differs."""
    same = tmp_path / "same.txt"
    same.write_text("same\n")
    digest = hashlib.sha256(b"same\n").hexdigest()
    ok = hosts.cli("checksum", "all3", str(same), "--expect", digest)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith(f"{digest}  3 host(s): fa1, fa2, fs1")
    missing = hosts.cli("checksum", "all3", str(tmp_path / "nope"))
    assert missing.returncode == 0 and "missing  3 host(s)" in missing.stdout
    # `~/` is each host's home: the agents share this process's HOME, the sshd host has its own
    name = f"easytask-checksum-{tmp_path.name}.txt"
    agent_home = Path.home() / name
    ssh_home = hosts.state_dir.parent / "sshd" / "home" / name
    agent_home.write_text("agents\n")
    ssh_home.write_text("sshd\n")
    try:
        differ = hosts.cli("checksum", "all3", f"~/{name}")
        assert differ.returncode == 1, differ.stdout
        assert "content differs: fs1" in differ.stdout
        expect = hashlib.sha256(b"agents\n").hexdigest()
        mismatch = hosts.cli("checksum", "all3", f"~/{name}", "--expect", expect)
        assert mismatch.returncode == 1
        assert "differ from --expect: fs1" in mismatch.stdout
    finally:
        agent_home.unlink()


def test_fetch_brings_one_file_per_host(hosts: ServerHandle, tmp_path: Path) -> None:
    """fetch stores each host's file under DEST_DIR/HOST/."""
    src = write(tmp_path / "remote file.txt", "remote\n")
    dest = tmp_path / "fetched"
    result = hosts.cli("fetch", "all3", str(src), str(dest))
    assert result.returncode == 0, result.stdout + result.stderr
    for host in ("fa1", "fa2", "fs1"):
        assert (dest / host / "remote file.txt").read_text() == "remote\n"
    missing = hosts.cli("fetch", "fa1", str(tmp_path / "absent"), str(dest))
    assert missing.returncode == 1 and "fetch failed" in missing.stdout


def _peak_rss_kib(pid: int) -> int:
    """The process's peak resident set size (VmHWM) in KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M).group(1))


def test_copy_of_200_mb_keeps_server_memory_flat(hosts: ServerHandle, tmp_path: Path) -> None:
    """A 200 MB copy to an agent and an sshd host streams: server peak RSS grows far less than it."""
    big = tmp_path / "big.bin"
    digest = hashlib.sha256()
    with open(big, "wb") as fh:
        for _ in range(200):
            chunk = os.urandom(1 << 20)
            digest.update(chunk)
            fh.write(chunk)
    # warm up every link and code path with a small copy, then take the baseline
    small = write(tmp_path / "small.txt", "hello\n")
    assert hosts.cli("copy", "fa1,fs1", str(small), str(tmp_path / "warm.txt")).returncode == 0
    pid = hosts.proc.pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # peak RSS := current RSS (start-up peaks)
    before = _peak_rss_kib(pid)
    for host in ("fa1", "fs1"):
        dest = tmp_path / host / "big.bin"
        result = hosts.cli("copy", host, str(big), str(dest), "--format", "json", timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
        (run,) = json.loads(result.stdout)["runs"]
        assert (run["host"], run["state"]) == (host, "success")
        with open(dest, "rb") as fh:
            assert hashlib.file_digest(fh, "sha256").hexdigest() == digest.hexdigest()
        audit = hosts.get("/api/audit", action="job.submit", limit=1)["events"][0]["detail"]
        assert audit["files"] == {"big.bin": digest.hexdigest()}
    grown_mib = (_peak_rss_kib(pid) - before) / 1024
    print(f"server peak RSS {before / 1024:.0f} MiB before, grew {grown_mib:.1f} MiB")
    # Measured: 15-21 MiB for both copies (upload, SFTP to the agent and to sshd). With asyncssh's
    # default SFTP window towards an agent (16 x 4 MiB requests) it was ~150 MiB. 64 MiB leaves
    # room for a loaded machine and still fails on any copy that holds the file in memory.
    assert grown_mib < 64, f"server peak RSS grew {grown_mib:.0f} MiB for a 200 MiB copy"


def test_uploads_are_size_limited_and_checked(start_server: ServerFactory) -> None:
    """Past --upload-limit an upload is refused with a clear 413 and nothing is kept."""
    server = start_server(None, "--upload-limit", "1k")
    uploads = server.state_dir / "uploads"
    ok = server.http.post("/api/uploads", params={"name": "a.txt"}, content=b"hello\n")
    assert ok.status_code == 201, ok.text
    assert ok.json()["sha256"] == hashlib.sha256(b"hello\n").hexdigest()
    assert (uploads / ok.json()["upload"] / "a.txt").read_bytes() == b"hello\n"
    declared = server.http.post("/api/uploads", params={"name": "b.bin"}, content=b"x" * 2048)
    assert declared.status_code == 413
    assert declared.json()["error"] == (
        "upload too large: 2.0 KiB is more than the server's limit of 1.0 KiB "
        "(easytask server --upload-limit)"
    )

    def chunks():  # no content-length: the limit is found while streaming
        for _ in range(4):
            yield b"x" * 1000

    streamed = server.http.post("/api/uploads", params={"name": "c.bin"}, content=chunks())
    assert streamed.status_code == 413 and "upload too large" in streamed.json()["error"]
    assert [p.name for p in uploads.iterdir()] == [ok.json()["upload"]]
    for name in ("", "../x", "a/b"):
        bad = server.http.post("/api/uploads", params={"name": name}, content=b"x")
        assert bad.status_code == 400 and "plain name" in bad.json()["error"]
    job = server.http.post(
        "/api/jobs",
        json={
            "pattern": "all",
            "kind": "copy",
            "copy": {"name": "a.txt", "upload": "0" * 16, "dest": "/tmp/a.txt"},
        },
    )
    assert job.status_code == 400 and "no uploaded file" in job.json()["error"]
