"""`easytask demo`: server and three agents, the CLI configured, Ctrl-C stops it all."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.support import REPO, Proc, easytask_cmd, wait_until


@pytest.mark.slow
def test_demo_runs_all_three_agents_and_stops_cleanly(tmp_path: Path, procs: list[Proc]) -> None:
    """The demo enrols web1, web2, db1; `easytask run all -a uptime` works; SIGINT ends it."""
    state = tmp_path / "demo"
    demo = Proc(
        easytask_cmd(
            "demo", "--dir", str(state), "--http", "127.0.0.1:0", "--agents", "127.0.0.1:0"
        ),
        tmp_path / "demo.log",
        cwd=REPO,
    )
    procs.append(demo)
    wait_until(
        lambda: "Press Ctrl-C" in demo.output() or not demo.alive(), timeout=40, what="demo ready"
    )
    out = demo.output()
    assert demo.alive(), out
    assert "login: admin / " in out
    env = dict(os.environ, EASYTASK_CONFIG=str(state / "config.toml"), NO_COLOR="1")
    env.pop("EASYTASK_URL", None)
    env.pop("EASYTASK_TOKEN", None)
    result = subprocess.run(
        easytask_cmd("run", "all", "-a", "uptime"),
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for host in ("web1", "web2", "db1"):
        assert f"{host} | " in result.stdout.replace("  ", " ")
    assert "3 host(s): 3 success" in result.stdout
    demo.popen.send_signal(signal.SIGINT)
    assert demo.popen.wait(timeout=20) == 0
    assert "stopping" in demo.output()
    # the agents were stopped with the demo
    agent_pids = []
    for name in ("web1", "web2", "db1"):
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    cmd = (entry / "cmdline").read_bytes()
                except OSError:
                    continue
                if str(state).encode() in cmd and f"--name\0{name}".encode() in cmd:
                    agent_pids.append(int(entry.name))
    assert not agent_pids
