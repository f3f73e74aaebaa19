"""The container recipes and systemd units: the wheel, installed alone, runs as they start it."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.support import REPO, Proc, free_port, wait_until

DEPLOY = REPO / "deploy"


@dataclass
class Recipe:
    """What a Containerfile's final stage says about how the program starts."""

    env: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    healthcheck: list[str] = field(default_factory=list)
    user: str = ""
    workdir: str = ""
    volume: str = ""
    installs: str = ""  # what the stage's `pip install` installs: `easytask`, `'easytask[server]'`


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _exec_form(text: str) -> list[str]:
    value = json.loads(text)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), text
    return value


def parse_containerfile(path: Path) -> Recipe:
    """The final stage's ENV, ENTRYPOINT, CMD, HEALTHCHECK, USER, WORKDIR and VOLUME."""
    recipe = Recipe()
    for word, rest in _instructions(path):
        if word == "FROM":
            recipe = Recipe()  # a new stage: only the last one runs
        elif word == "ENV":
            for item in shlex.split(rest):
                key, sep, value = item.partition("=")
                assert sep, f"{path.name}: use ENV KEY=VALUE, got {item!r}"
                recipe.env[key] = value
        elif word == "ENTRYPOINT":
            recipe.entrypoint = _exec_form(rest)
        elif word == "CMD":
            recipe.cmd = _exec_form(rest)
        elif word == "HEALTHCHECK":
            options, _, command = rest.partition(" CMD ")
            recipe.healthcheck = _exec_form(command)
        elif word == "USER":
            recipe.user = rest
        elif word == "WORKDIR":
            recipe.workdir = rest
        elif word == "VOLUME":
            recipe.volume = rest
        elif word == "RUN" and rest.startswith("pip install "):
            words = shlex.split(rest.partition("&&")[0])
            recipe.installs = next(w for w in words[2:] if w.startswith("easytask"))
    return recipe


def _container(
    recipe: Recipe, venv: Path, root: Path, overrides: dict[str, str]
) -> tuple[list[str], dict[str, str], Path]:
    """argv, environment and working directory as `podman run -e ...` would give the program.

    The image's volume and working directory are mapped to directories under `root`.
    """
    mounts = {recipe.volume: root / "volume", recipe.workdir: root / "workdir"}

    def mapped(value: str) -> str:
        for inside, outside in mounts.items():
            if value == inside or value.startswith(inside + "/"):
                return str(outside) + value[len(inside) :]
        return value

    for outside in mounts.values():
        outside.mkdir(parents=True, exist_ok=True)
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(root / "home"), "LANG": "C.UTF-8"}
    env.update({k: mapped(v) for k, v in recipe.env.items()})
    env.update(overrides)
    argv = [mapped(a) for a in recipe.entrypoint + recipe.cmd]
    argv[0] = str(venv / "bin" / argv[0])
    return argv, env, Path(mapped(recipe.workdir))


def _health(recipe: Recipe, venv: Path, env: dict[str, str]) -> int:
    argv = list(recipe.healthcheck)
    argv[0] = str(venv / "bin" / argv[0])
    return subprocess.run(argv, env=env, timeout=30, capture_output=True).returncode


def test_recipes_run_as_a_user_with_state_on_a_volume() -> None:
    """Both images run as a non-root user, keep state on a volume and have a health check."""
    for name, entry in (("server", ["easytask", "server"]), ("agent", ["easytask", "agent"])):
        recipe = parse_containerfile(DEPLOY / f"Containerfile.{name}")
        assert recipe.entrypoint == entry
        assert recipe.user and recipe.user not in ("root", "0")
        assert recipe.volume == "/var/lib/easytask"
        assert recipe.healthcheck
        state = recipe.env.get("EASYTASK_STATE_DIR") or recipe.env["EASYTASK_AGENT_STATE_DIR"]
        assert state.startswith(recipe.volume + "/")
        assert recipe.env["EASYTASK_LOG_FORMAT"] == "json"


def test_the_agent_image_holds_the_agent_alone() -> None:
    """The agent's image installs the wheel without the server's extra; the server's with it."""
    assert parse_containerfile(DEPLOY / "Containerfile.agent").installs == "easytask"
    assert parse_containerfile(DEPLOY / "Containerfile.server").installs == "easytask[server]"


def test_installed_wheel_starts_as_the_containers_do(
    server_venv: Path, agent_venv: Path, tmp_path: Path
) -> None:
    """Server and agent started from the Containerfiles' ENTRYPOINT/CMD/ENV run a command: the
    server from a `pip install 'easytask[server]'`, the agent from a plain `pip install easytask`."""
    server_recipe = parse_containerfile(DEPLOY / "Containerfile.server")
    agent_recipe = parse_containerfile(DEPLOY / "Containerfile.agent")
    installed = server_venv
    http_port, agent_port = free_port(), free_port()
    argv, env, cwd = _container(
        server_recipe,
        installed,
        tmp_path / "server",
        # what `podman run -p` maps: the test binds loopback on free ports
        {"EASYTASK_HTTP": f"127.0.0.1:{http_port}", "EASYTASK_AGENTS": f"127.0.0.1:{agent_port}"},
    )
    (cwd / "playbooks").mkdir()
    state = Path(env["EASYTASK_STATE_DIR"])
    server = Proc(argv, tmp_path / "server.log", env=env, cwd=cwd)
    agent: Proc | None = None
    api: httpx.Client | None = None
    try:
        wait_until(
            lambda: (state / "server.json").exists() or not server.alive(),
            timeout=60,
            what="server start",
        )
        assert server.alive(), server.output()
        url = f"http://127.0.0.1:{http_port}"
        assert httpx.get(url + "/healthz").json() == {"status": "ok"}
        assert _health(server_recipe, installed, env) == 0
        token = (state / "admin.token").read_text().strip()
        api = httpx.Client(base_url=url, headers={"authorization": f"Bearer {token}"}, timeout=30)
        enroll = api.post("/api/agents/tokens", json={"uses": 1, "ttl": "10m"}).json()["token"]
        argv, agent_env, agent_cwd = _container(
            agent_recipe,
            agent_venv,
            tmp_path / "agent",
            {
                "EASYTASK_AGENT_SERVER": f"127.0.0.1:{agent_port}",
                "EASYTASK_AGENT_NAME": "boxed1",
                "EASYTASK_AGENT_ENROLL": enroll,
            },
        )
        agent = Proc(argv, tmp_path / "agent.log", env=agent_env, cwd=agent_cwd)

        def online() -> bool:
            agents = api.get("/api/agents").json()["agents"]
            return any(a["name"] == "boxed1" and a["status"] == "online" for a in agents)

        wait_until(online, timeout=60, what="agent online")
        job = api.post("/api/jobs", json={"pattern": "boxed1", "command": "echo from-the-box"})
        job_id = job.json()["job"]["id"]
        done = wait_until(
            lambda: (
                (d := api.get(f"/api/jobs/{job_id}").json())["job"]["state"]
                in ("success", "failed", "unreachable", "terminated")
                and d
            ),
            timeout=60,
            what="job end",
        )
        assert done["job"]["state"] == "success"
        run_id = done["runs"][0]["id"]
        lines = api.get(f"/api/runs/{run_id}/log").json()["lines"]
        assert [ln["text"] for ln in lines if ln["stream"] == "stdout"] == ["from-the-box"]
        assert _health(agent_recipe, agent_venv, agent_env) == 0
        # JSON logs from EASYTASK_LOG_FORMAT in both images
        assert json.loads(agent.output().splitlines()[0])["logger"] == "easytask.agent"
        assert any(json.loads(ln).get("logger") for ln in server.output().splitlines()[:1])
    finally:
        if agent is not None:
            agent.stop()
        server.stop()
        if api is not None:
            api.close()
    assert agent is not None
    assert _health(agent_recipe, agent_venv, agent_env) == 1  # stopped: not connected


UNITS = sorted((DEPLOY / "systemd").glob("*.service"))


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_units_verify(unit: Path, tmp_path: Path) -> None:
    """systemd-analyze verify finds nothing wrong with the units (skipped without systemd)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify wants the ExecStart binary to exist: point it at the installed console script
    script = Path(sys.executable).parent / "easytask"
    text = unit.read_text().replace("/opt/easytask/bin/easytask", str(script))
    name = unit.name.replace("@.service", "@check.service")
    copy = tmp_path / name
    copy.write_text(text)
    env = dict(os.environ, SYSTEMD_LOG_LEVEL="warning")
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    version = subprocess.run([analyze, "--version"], capture_output=True, text=True).stdout
    newer_keys = ("RestartSteps", "RestartMaxDelaySec")  # systemd 254+; older ones ignore them
    tolerated = newer_keys if int(version.split()[1]) < 254 else ()
    problems = [
        ln
        for ln in (result.stdout + result.stderr).splitlines()
        if (copy.name in ln or unit.name in ln)
        and not any(f"Unknown key '{key}'" in ln for key in tolerated)
    ]
    assert result.returncode == 0 and problems == [], result.stdout + result.stderr


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_units_are_hardened(unit: Path) -> None:
    """Each unit restarts on failure with backoff and runs sandboxed with its own state dir."""
    text = unit.read_text()
    for line in (
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "StateDirectory=",
        "RestartSteps=",
        "RestartMaxDelaySec=",
    ):
        assert line in text, f"{unit.name}: missing {line}"
    if "agent" in unit.name:
        assert "KillMode=control-group" in text
