"""The environment an agent's commands get: login-like and documented, none of the agent's secrets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from easytask.agent.policy import Account
from easytask.agent.runner import DEFAULT_PATH, check_pass_env, command_env, supervisor_env
from tests.conftest import ServerFactory
from tests.support import Procs, children_of, cmdline, easytask_cmd, wait_until

# docs/agents.md, "The command's environment"; PWD, SHLVL, OLDPWD and _ are the shell's own
DOCUMENTED = {"PATH", "LANG", "LANGUAGE", "TZ", "TMPDIR", "HOME", "USER", "LOGNAME", "SHELL"}
DOCUMENTED |= {"EASYTASK_RUN_ID", "EASYTASK_ATTEMPT", "PWD", "SHLVL", "OLDPWD", "_"}


def test_commands_get_none_of_the_agents_settings_or_secrets(
    start_server: ServerFactory, procs: Procs, tmp_path: Path
) -> None:
    """An agent configured by EASYTASK_AGENT_* variables (an enrolment token among them) and
    holding other secrets in its environment runs `env`: none of them is in the output."""
    server = start_server(None)
    token = server.post("/api/agents/tokens", {"uses": 1, "ttl": "10m"})["token"]
    state = tmp_path / "agent-env1"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EASYTASK_")}
    secrets = {
        "EASYTASK_AGENT_SERVER": server.agents_addr,
        "EASYTASK_AGENT_NAME": "env1",
        "EASYTASK_AGENT_STATE_DIR": str(state),
        "EASYTASK_AGENT_ENROLL": token,
        "EASYTASK_AGENT_SLOTS": "3",
        "EASYTASK_AGENT_GROUPS": "envtest",
        "EASYTASK_LOG_FORMAT": "json",
        "VAULT_TOKEN": "s.agent-only-secret",
        "LC_TIME": "C",
        "EASYTASK_AGENT_PASS_ENV": "https_proxy",
    }
    env.update(secrets)
    env["https_proxy"] = "http://proxy.example:3128"  # passed on: --pass-env
    args = easytask_cmd("agent", "--keepalive", "1", "--backoff-max", "1")
    agent = procs.start(args, tmp_path / "agent-env1.log", env=env)
    wait_until(lambda: server.agent_status("env1") == "online", timeout=40, what="agent online")

    job = server.submit("env1", "env")
    data = server.wait_job(job["job"]["id"], timeout=60)
    (run,) = data["runs"]
    assert run["state"] == "success", run
    lines = [ln["text"] for ln in server.log_lines(run["id"])]
    seen = dict(line.split("=", 1) for line in lines if "=" in line)
    text = "\n".join(lines)
    for name in secrets:
        assert name == "LC_TIME" or name not in seen, f"{name} reached the command"
    for value in (token, "agent-only-secret", str(state), server.agents_addr):
        assert value not in text, f"{value} reached the command"
    assert not [n for n in seen if n.startswith("EASYTASK_") and n not in DOCUMENTED]
    assert seen["https_proxy"] == "http://proxy.example:3128"
    extra = {n for n in seen if n not in DOCUMENTED | {"https_proxy"} and not n.startswith("LC_")}
    assert not extra, f"undocumented variables: {sorted(extra)}"
    assert seen["EASYTASK_RUN_ID"] == str(run["id"]) and seen["EASYTASK_ATTEMPT"] == "1"
    assert seen["LC_TIME"] == "C"  # the locale is passed on
    assert seen["PATH"] == os.environ.get("PATH", DEFAULT_PATH)
    assert seen["HOME"] and seen["USER"] and seen["LOGNAME"] == seen["USER"]
    # the supervisor (it outlives the agent) does not hold the token either
    (supervisor,) = [
        pid for pid in children_of(agent.pid) if "easytask.agent.supervisor" in cmdline(pid)
    ]
    assert token.encode() not in Path(f"/proc/{supervisor}/environ").read_bytes()


def test_command_env_is_login_like() -> None:
    """Only PATH, locale, time zone and TMPDIR pass; the account decides HOME, USER, SHELL."""
    agent = {
        "PATH": "/opt/bin:/usr/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C",
        "TZ": "UTC",
        "HOME": "/root",
        "USER": "root",
        "EASYTASK_AGENT_ENROLL": "et_secret",
        "AWS_SECRET_ACCESS_KEY": "x",
        "PYTHONPATH": "/src",
    }
    own = command_env(None, agent)
    assert own == {
        "PATH": "/opt/bin:/usr/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C",
        "TZ": "UTC",
        "HOME": "/root",
        "USER": "root",
        "LOGNAME": "root",
        "SHELL": own["SHELL"],
    }
    account = Account("app", 1234, 1234, (1234,), "/home/app", "/bin/bash")
    other = command_env(account, {"EASYTASK_AGENT_ENROLL": "et_secret", "HOME": "/root"})
    assert other == {
        "PATH": DEFAULT_PATH,
        "HOME": "/home/app",
        "USER": "app",
        "LOGNAME": "app",
        "SHELL": "/bin/bash",
    }
    assert supervisor_env(agent) == {k: v for k, v in agent.items() if k != "EASYTASK_AGENT_ENROLL"}


def test_pass_env_names_variables_and_never_the_agents_own() -> None:
    """--pass-env adds named variables of the agent's environment; EASYTASK_* ones are refused."""
    assert check_pass_env(["https_proxy", " no_proxy ", "", "https_proxy"]) == (
        "https_proxy",
        "no_proxy",
    )
    for bad in ("EASYTASK_AGENT_ENROLL", "A-B", "1X"):
        with pytest.raises(ValueError, match="--pass-env"):
            check_pass_env([bad])
    env = command_env(None, {"https_proxy": "p", "other": "o", "HOME": "/h"}, ("https_proxy",))
    assert env["https_proxy"] == "p" and "other" not in env
