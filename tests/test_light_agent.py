"""An agent host installs the agent alone (`pip install easytask`: asyncssh and its requirements);
the server's dependencies are the `server` extra. `easytask agents install` writes what runs such
an agent: a systemd unit and env file, or a Podman Quadlet unit and `podman run` line.

The clean installs are real: the wheel built from the tree, installed into empty virtual
environments (tests/support/wheel.py), started against a real server."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

from easytask import __version__
from easytask.cli.agentinstall import SECRET_TARGET
from easytask.cli.main import SERVER_MODULES
from tests.conftest import ServerFactory
from tests.support import REPO, Proc, Procs, wait_until
from tests.support.cli import run_cli
from tests.support.wheel import CLEAN_ENV, installed_distributions
from tests.test_deploy import DEPLOY, _container, parse_containerfile

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
SERVER_SIDE = ("server", "store", "scheduler", "service", "web", "inventory", "playbook", "plan")


def _name(requirement: str) -> str:
    return Requirement(requirement).name.lower().replace("_", "-")


def _closure(names: list[str]) -> set[str]:
    """The distributions `names` need, recursively, as installed in this venv (extras left out)."""
    env = default_environment()
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for text in importlib.metadata.requires(name) or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({**env, "extra": ""}):
                todo.append(_name(text))
    return seen


def _top_modules(distribution: str) -> set[str]:
    mapping = importlib.metadata.packages_distributions()
    return {
        module
        for module, dists in mapping.items()
        if distribution in {d.lower().replace("_", "-") for d in dists}
        and not module.startswith("_")
    }


# -- what an install holds ----------------------------------------------------------------------


def test_the_agent_needs_asyncssh_alone_and_the_server_extra_holds_the_rest() -> None:
    """pyproject: the base install is asyncssh; the server's dependencies are the `server` extra,
    which `test` (and so `make test`) pulls in, and whose modules the CLI knows as missing."""
    assert [_name(r) for r in PYPROJECT["dependencies"]] == ["asyncssh"]
    extra = [_name(r) for r in PYPROJECT["optional-dependencies"]["server"]]
    assert {"sqlmodel", "starlette", "uvicorn", "alembic", "psycopg", "argon2-cffi"} <= set(extra)
    assert "easytask[server]" in PYPROJECT["optional-dependencies"]["test"]
    agent = _closure(["asyncssh"])
    for dist in extra:
        if dist in agent:
            continue  # cryptography: asyncssh brings it
        modules = _top_modules(dist)
        assert modules and modules <= SERVER_MODULES, (dist, modules)
    assert "-e '.[server,test]'" in (REPO / "Makefile").read_text()


def test_the_agent_imports_nothing_of_the_server() -> None:
    """With everything installed, `easytask agent --help` and the agent's own modules load none
    of the server's packages or modules."""
    code = (
        "import io, json, sys\n"
        "from easytask.cli.main import main\n"
        "assert main(['agent', '--help'], io.StringIO()) == 0\n"
        "assert main(['agents', 'install', '--systemd', '--server', 'h:1', '--name', 'a',"
        " '--easytask', '/usr/bin/easytask'], io.StringIO()) == 0\n"
        "import easytask.agent.main, easytask.agent.supervisor\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    ).stdout
    modules = json.loads(out.splitlines()[-1])  # after the help text
    assert "easytask.agent.main" in modules and "asyncssh" in modules
    loaded = {m.partition(".")[0] for m in modules}
    assert loaded & SERVER_MODULES == set()
    ours = [m for m in modules if m.startswith("easytask.")]
    assert [m for m in ours if m.split(".")[1] in SERVER_SIDE] == [], ours


def test_an_agent_install_holds_asyncssh_and_its_requirements(agent_venv: Path) -> None:
    """`pip install easytask` in an empty venv installs the agent and asyncssh's closure only."""
    installed = installed_distributions(agent_venv)
    assert installed == {"easytask"} | _closure(["asyncssh"]), installed
    extra = {_name(r) for r in PYPROJECT["optional-dependencies"]["server"]}
    assert installed & extra <= _closure(["asyncssh"])


def _easytask(venv: Path, *argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "easytask"), *argv],
        capture_output=True,
        text=True,
        env={**CLEAN_ENV, "HOME": str(cwd or venv)},
        cwd=cwd or venv,
        timeout=60,
    )


def test_agent_commands_work_without_the_server_extra(agent_venv: Path, tmp_path: Path) -> None:
    """In the agent-only install `easytask agent --help`, the whole `--help` and
    `agents install` work, and a client command reaches for its server (the CLI's HTTP client
    is the standard library's)."""
    agent = _easytask(agent_venv, "agent", "--help")
    assert agent.returncode == 0 and "--enroll-file" in agent.stdout, agent.stderr
    whole = _easytask(agent_venv, "--help")
    assert whole.returncode == 0 and "server" in whole.stdout, whole.stderr
    made = _easytask(
        agent_venv, "agents", "install", "--podman", "--server", "h:8022", "--name", "a1"
    )
    assert made.returncode == 0 and "Image=localhost/easytask-agent" in made.stdout, made.stderr
    runs = _easytask(agent_venv, "--url", "http://127.0.0.1:9", "--token", "t", "runs")
    assert runs.returncode == 3 and "cannot reach the server" in runs.stderr, runs.stderr


@pytest.mark.parametrize(
    "argv",
    [["server"], ["demo"], ["db", "current"], ["play", "site.yml"], ["inventory", "--list"]],
    ids=lambda a: " ".join(a),
)
def test_server_commands_without_the_extra_say_how_to_install_it(
    agent_venv: Path, tmp_path: Path, argv: list[str]
) -> None:
    """A command that needs the server's dependencies (the server, the demo, the database, and
    the commands that read YAML: play, inventory) exits 3 with the exact command that adds
    them, not a traceback."""
    if argv[0] == "server":
        argv = [*argv, "--state-dir", str(tmp_path / "state")]
    if argv[0] == "demo":
        argv = [*argv, "--dir", str(tmp_path / "demo")]
    (tmp_path / "site.yml").write_text("- hosts: all\n  tasks:\n    - command: uptime\n")
    (tmp_path / "inventory").write_text("web1\n")
    client = ["--url", "http://127.0.0.1:9", "--token", "t"]  # a client command gets that far
    result = _easytask(agent_venv, *client, *argv, cwd=tmp_path)
    command = f"{agent_venv / 'bin' / 'python'} -m pip install 'easytask[server]=={__version__}'"
    assert result.returncode == 3, result.stderr
    assert f"`easytask {argv[0]}` needs the `server` extra" in result.stderr
    assert result.stderr.rstrip().endswith(command), result.stderr
    assert "Traceback" not in result.stderr and "unexpected error" not in result.stderr
    assert not (tmp_path / "state").exists() and not (tmp_path / "demo").exists()


# -- systemd ------------------------------------------------------------------------------------


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """A unit file's sections and their KEY=VALUE lines, in order, repeated keys kept."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, raw
        current.append((key.strip(), value.strip()))
    return sections


def values(section: list[tuple[str, str]], key: str) -> list[str]:
    return [v for k, v in section if k == key]


def parse_env_file(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, raw
            out[key] = value
    return out


def _write_systemd(into: Path, program: Path, *extra: str) -> tuple[Path, Path]:
    code, out = run_cli(
        "agents",
        "install",
        "--systemd",
        "--server",
        "sched.example.com:8022,sched2.example.com:8022",
        "--name",
        "web1",
        "--group",
        "web",
        "--easytask",
        str(program),
        "--write",
        str(into),
        *extra,
    )
    assert code == 0, out
    return into / "easytask-agent-web1.service", into / "agent-web1.env"


def test_systemd_unit_and_env_file(tmp_path: Path) -> None:
    """The unit starts the pip-installed agent as root, restarts it always, hands it the token
    from a root-only file as a credential, never in argv or in the unit's or env file's text."""
    unit_path, env_path = _write_systemd(tmp_path / "out", Path("/opt/easytask/bin/easytask"))
    assert unit_path.stat().st_mode & 0o777 == 0o644
    assert env_path.stat().st_mode & 0o777 == 0o600
    unit = parse_unit(unit_path.read_text())
    service = unit["Service"]
    assert values(service, "ExecStart") == ["/opt/easytask/bin/easytask agent"]
    assert values(service, "Restart") == ["always"]
    assert values(unit["Unit"], "StartLimitIntervalSec") == ["0"]
    assert values(service, "User") == []  # root: its commands administer the host
    assert values(service, "EnvironmentFile") == ["/etc/easytask/agent-web1.env"]
    assert values(service, "LoadCredential") == ["enroll:/etc/easytask/agent-web1.enroll"]
    assert values(service, "SetCredential") == ["enroll:\\n"]  # the file gone: a blank token
    assert values(service, "Environment") == ["EASYTASK_AGENT_ENROLL_FILE=%d/enroll"]
    assert values(service, "StateDirectory") == ["easytask/agent-web1"]
    assert values(service, "StateDirectoryMode") == ["0700"]
    for key in ("LockPersonality", "RestrictRealtime"):
        assert values(service, key) == ["yes"], key
    for key in ("NoNewPrivileges", "ProtectSystem", "CapabilityBoundingSet", "PrivateTmp"):
        assert values(service, key) == [], key  # they would stop root's commands
    assert values(unit["Install"], "WantedBy") == ["multi-user.target"]
    env = parse_env_file(env_path.read_text())
    assert env == {
        "EASYTASK_AGENT_SERVER": "sched.example.com:8022,sched2.example.com:8022",
        "EASYTASK_AGENT_NAME": "web1",
        "EASYTASK_AGENT_STATE_DIR": "/var/lib/easytask/agent-web1",
        "EASYTASK_AGENT_GROUPS": "web",
        "EASYTASK_LOG_FORMAT": "json",
    }
    # printed instead of written: the same files, each under its path
    code, printed = run_cli(
        "agents",
        "install",
        "--systemd",
        "--server",
        "sched.example.com:8022,sched2.example.com:8022",
        "--name",
        "web1",
        "--group",
        "web",
        "--easytask",
        "/opt/easytask/bin/easytask",
    )
    assert code == 0
    assert (
        f"# ---- /etc/systemd/system/easytask-agent-web1.service (mode 0644)\n{unit_path.read_text()}"
        in printed
    )
    assert f"# ---- /etc/easytask/agent-web1.env (mode 0600)\n{env_path.read_text()}" in printed
    assert "install -m 0600 -o root -g root /dev/stdin /etc/easytask/agent-web1.enroll" in printed


def test_systemd_unit_verifies(agent_venv: Path, tmp_path: Path) -> None:
    """systemd-analyze verify finds nothing wrong with the generated unit (skipped without it)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit_path, _ = _write_systemd(tmp_path, agent_venv / "bin" / "easytask")
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(unit_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, SYSTEMD_LOG_LEVEL="warning"),
    )
    problems = [ln for ln in (result.stdout + result.stderr).splitlines() if unit_path.name in ln]
    assert result.returncode == 0 and problems == [], result.stdout + result.stderr


def test_the_unit_starts_the_agent_only_install(
    agent_venv: Path, tmp_path: Path, start_server: ServerFactory, procs: Procs
) -> None:
    """The agent of a clean `pip install easytask`, started as the generated unit starts it
    (its ExecStart, env file and Environment, the credential in place of `%d`), enrols with
    the token file, runs a command; restarted with the credential empty it is still itself."""
    server = start_server()
    out = tmp_path / "out"
    unit_path, env_path = _write_systemd(
        out,
        agent_venv / "bin" / "easytask",
        "--state-dir",
        str(tmp_path / "state"),
        "--token-file",
        str(tmp_path / "agent-web1.enroll"),
    )
    service = parse_unit(unit_path.read_text())["Service"]
    assert values(service, "StateDirectory") == []  # outside /var/lib: the agent makes it
    token = server.post("/api/agents/tokens", {"uses": 1, "ttl": "10m"})["token"]
    credentials = tmp_path / "credentials"  # what systemd makes of LoadCredential=
    credentials.mkdir(mode=0o700)
    source = values(service, "LoadCredential")[0].partition(":")[2]
    assert source == str(tmp_path / "agent-web1.enroll")

    def start() -> Proc:
        env = {**CLEAN_ENV, "HOME": str(tmp_path)}
        env.update(parse_env_file(env_path.read_text()))
        env["EASYTASK_AGENT_SERVER"] = server.agents_addr  # the test's server, not the example
        for item in values(service, "Environment"):
            key, _, value = item.partition("=")
            env[key] = value.replace("%d", str(credentials))
        argv = shlex.split(values(service, "ExecStart")[0])
        return procs.start(
            [*argv, "--keepalive", "1", "--backoff-max", "1"], tmp_path / "a.log", env=env
        )

    def online() -> bool:
        return any(
            a["name"] == "web1" and a["status"] == "online"
            for a in server.get("/api/agents")["agents"]
        )

    Path(source).write_text(token + "\n")
    os.chmod(source, 0o600)
    shutil.copyfile(source, credentials / "enroll")
    agent = start()
    wait_until(online, timeout=60, what="agent online")
    job = server.post("/api/jobs", {"pattern": "web1", "command": "echo from-the-unit"})["job"]
    done = wait_until(
        lambda: (d := server.get(f"/api/jobs/{job['id']}"))["job"]["state"] == "success" and d,
        timeout=60,
        what="job success",
    )
    lines = server.get(f"/api/runs/{done['runs'][0]['id']}/log")["lines"]
    assert [ln["text"] for ln in lines if ln["stream"] == "stdout"] == ["from-the-unit"]
    assert token not in (unit_path.read_text() + env_path.read_text())
    for name in ("cmdline", "environ"):  # what `ps` and /proc show of the agent
        assert token.encode() not in Path(f"/proc/{agent.pid}/{name}").read_bytes(), name
    # the token spent and its file removed: SetCredential= leaves an empty credential
    procs.stop(agent)
    wait_until(lambda: not online(), timeout=30, what="agent offline")
    Path(source).unlink()
    (credentials / "enroll").write_text("\n")  # SetCredential=enroll:\n
    start()
    wait_until(online, timeout=60, what="agent online again")
    assert [a["state"] for a in server.get("/api/agents")["agents"] if a["name"] == "web1"] == [
        "accepted"
    ]


def test_enroll_file_that_cannot_be_read_is_a_usage_error(agent_venv: Path, tmp_path: Path) -> None:
    """`--enroll-file` naming a missing file stops the agent with exit 2, naming the file."""
    result = _easytask(
        agent_venv,
        "agent",
        "--server",
        "127.0.0.1:1",
        "--name",
        "a1",
        "--state-dir",
        str(tmp_path / "s"),
        "--enroll-file",
        str(tmp_path / "missing"),
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert f"--enroll-file {tmp_path / 'missing'}: No such file or directory" in result.stderr


# -- podman -------------------------------------------------------------------------------------


def _podman(into: Path) -> tuple[dict[str, list[tuple[str, str]]], str, list[str]]:
    code, out = run_cli(
        "agents",
        "install",
        "--podman",
        "--server",
        "sched.example.com:8022",
        "--name",
        "web1",
        "--group",
        "web",
        "--write",
        str(into),
    )
    assert code == 0, out
    path = into / "easytask-agent-web1.container"
    assert path.stat().st_mode & 0o777 == 0o644
    lines = out.splitlines()
    run_line = lines[lines.index("# ---- podman run, the same container without systemd") + 1]
    return parse_unit(path.read_text()), path.read_text(), shlex.split(run_line)


def test_quadlet_unit_and_podman_run_line_match(tmp_path: Path) -> None:
    """The Quadlet unit runs the agent's image with its volume, its settings and the token as a
    podman secret mounted for the image's user only; the podman run line says the same."""
    unit, text, run = _podman(tmp_path)
    container = unit["Container"]
    assert values(container, "Image") == ["localhost/easytask-agent:latest"]
    assert values(container, "ContainerName") == ["easytask-agent-web1"]
    assert values(container, "Volume") == ["easytask-agent-web1:/var/lib/easytask"]
    env = dict(v.partition("=")[::2] for v in values(container, "Environment"))
    assert env == {
        "EASYTASK_AGENT_SERVER": "sched.example.com:8022",
        "EASYTASK_AGENT_NAME": "web1",
        "EASYTASK_AGENT_ENROLL_FILE": SECRET_TARGET,
        "EASYTASK_AGENT_GROUPS": "web",
    }
    (secret,) = values(container, "Secret")
    name, *options = secret.split(",")
    recipe = parse_containerfile(DEPLOY / "Containerfile.agent")
    uid = re.search(r"--uid (\d+)", (DEPLOY / "Containerfile.agent").read_text())
    assert uid is not None
    assert name == "easytask-agent-web1-enroll"
    assert dict(o.split("=") for o in options) == {
        "type": "mount",
        "target": SECRET_TARGET,
        "uid": uid.group(1),
        "gid": uid.group(1),
        "mode": "0400",
    }
    assert values(unit["Service"], "Restart") == ["always"]
    assert recipe.volume == "/var/lib/easytask"
    # the podman run line: the same image, name, volume, settings and secret
    assert run[:3] == ["podman", "run", "-d"] and run[-1] == "localhost/easytask-agent:latest"
    words = [w for w in run[3:-1] if w != "--restart=always"]
    assert len(words) + 1 == len(run[3:-1])
    opts: dict[str, list[str]] = {}
    for flag, value in zip(words[::2], words[1::2], strict=True):
        opts.setdefault(flag, []).append(value)
    assert opts["--name"] == ["easytask-agent-web1"]
    assert opts["-v"] == values(container, "Volume")
    assert opts["-e"] == values(container, "Environment")
    assert opts["--secret"] == [secret]
    assert "ENROLL=" not in text.replace("ENROLL_FILE=", "")


def test_the_agent_image_entrypoint_starts_from_an_agent_only_install(
    agent_venv: Path, tmp_path: Path, start_server: ServerFactory, procs: Procs
) -> None:
    """The agent image's ENTRYPOINT with its ENV and the Quadlet unit's Environment, the podman
    secret as a 0400 file at its target, from a clean `pip install easytask` (the image's own
    install), enrols and runs a command. (Podman itself cannot run here: the image is not built.)"""
    server = start_server()
    unit, _, _ = _podman(tmp_path / "out")
    recipe = parse_containerfile(DEPLOY / "Containerfile.agent")
    secret = tmp_path / "run-secrets" / "easytask-enroll"
    secret.parent.mkdir()
    secret.write_text(server.post("/api/agents/tokens", {"uses": 1, "ttl": "10m"})["token"])
    secret.chmod(0o400)
    overrides = dict(v.partition("=")[::2] for v in values(unit["Container"], "Environment"))
    assert overrides["EASYTASK_AGENT_ENROLL_FILE"] == SECRET_TARGET
    overrides["EASYTASK_AGENT_ENROLL_FILE"] = str(secret)  # where the secret is mounted
    overrides["EASYTASK_AGENT_SERVER"] = server.agents_addr
    argv, env, cwd = _container(recipe, agent_venv, tmp_path / "box", overrides)
    procs.start(argv, tmp_path / "agent.log", env=env, cwd=cwd)

    def online() -> bool:
        return any(
            a["name"] == "web1" and a["status"] == "online" and "web" in a["labels"]
            for a in server.get("/api/agents")["agents"]
        )

    wait_until(online, timeout=60, what="containerised agent online")
    job = server.post("/api/jobs", {"pattern": "web1", "command": "echo from-the-image"})["job"]
    done = wait_until(
        lambda: (d := server.get(f"/api/jobs/{job['id']}"))["job"]["state"] == "success" and d,
        timeout=60,
        what="job success",
    )
    lines = server.get(f"/api/runs/{done['runs'][0]['id']}/log")["lines"]
    assert [ln["text"] for ln in lines if ln["stream"] == "stdout"] == ["from-the-image"]


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--systemd", "--name", "bad name"], "agent name 'bad name' is not valid"),
        (["--systemd", "--server", "a b:1"], "--server: not HOST:PORT"),
        (["--systemd", "--server", "h:70000"], "--server: not HOST:PORT"),
        (["--systemd", "--group", "x;y"], "group 'x;y' is not valid"),
        (["--systemd", "--token-file", "rel/path"], "--token-file 'rel/path'"),
        (["--systemd", "--image", "x"], "--image is for --podman"),
        (["--podman", "--token-file", "/etc/x"], "--token-file is for --systemd"),
        (["--podman", "--image", "x y"], "--image 'x y' is not an image reference"),
        (["--server", "h:1"], "one of the arguments --systemd --podman is required"),
    ],
    ids=lambda a: " ".join(a) if isinstance(a, list) else "",
)
def test_bad_input_is_refused_and_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    base = {"--server": "h:8022", "--name": "web1", "--easytask": "/usr/bin/easytask"}
    for flag, value in base.items():
        if flag not in argv and not (flag == "--easytask" and "--podman" in argv):
            argv = [*argv, flag, value]
    code, _ = run_cli("agents", "install", *argv, "--write", str(tmp_path / "out"))
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
