"""The files that run a pip-installed agent under systemd: its unit and its env file.

Pure text, shared by `easytask agents install --systemd` (easytask/cli/agentinstall.py) and
`easytask agents bootstrap` (easytask/service/bootstrap.py), which writes them on a host over SSH.
The enrolment token never appears in them: systemd hands a root-only file to the agent as a
credential (`LoadCredential=`), read with `--enroll-file`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from easytask import __version__

__all__ = ["AgentFile", "systemd_files"]

UNIT_DIR = Path("/etc/systemd/system")
CONFIG_DIR = Path("/etc/easytask")
STATE_ROOT = Path("/var/lib")
CREDENTIAL = "enroll"  # the credential's name in the unit: $CREDENTIALS_DIRECTORY/enroll


@dataclass(frozen=True)
class AgentFile:
    """One generated file: where it goes on the agent host, its mode and its text."""

    path: Path
    mode: int
    text: str


def systemd_files(
    server: str,
    name: str,
    program: Path,
    groups: list[str] | None = None,
    state_dir: Path | None = None,
    token_file: Path | None = None,
) -> list[AgentFile]:
    """The unit and the env file of an agent installed with pip, running as root."""
    unit_name = f"easytask-agent-{name}"
    state_dir = state_dir or STATE_ROOT / "easytask" / f"agent-{name}"
    token_file = token_file or CONFIG_DIR / f"agent-{name}.enroll"
    env_path = CONFIG_DIR / f"agent-{name}.env"
    env = [
        f"# EasyTask agent {name}: its settings (docs/agents.md). No secret here: the enrolment",
        f"# token is read from {token_file} (root only), handed over by systemd.",
        f"EASYTASK_AGENT_SERVER={server}",
        f"EASYTASK_AGENT_NAME={name}",
        f"EASYTASK_AGENT_STATE_DIR={state_dir}",
    ]
    if groups:
        env.append(f"EASYTASK_AGENT_GROUPS={','.join(groups)}")
    env.append("EASYTASK_LOG_FORMAT=json")
    state_lines = []
    if state_dir.is_relative_to(STATE_ROOT) and state_dir != STATE_ROOT:
        state_lines = [
            f"StateDirectory={state_dir.relative_to(STATE_ROOT)}",
            "StateDirectoryMode=0700",
        ]
    unit = [
        f"# EasyTask agent {name}, installed with pip; made by `easytask agents install --systemd`",
        f"# (easytask {__version__}). It runs as root, so the commands it is sent run as root:",
        "# whoever may run commands on it through the server controls this host.",
        "",
        "[Unit]",
        f"Description=EasyTask agent {name}",
        "After=network-online.target",
        "Wants=network-online.target",
        "# never give up restarting",
        "StartLimitIntervalSec=0",
        "",
        "[Service]",
        "Type=simple",
        f"EnvironmentFile={env_path}",
        "# The enrolment token: a root-only file, copied by systemd into this unit's own",
        "# credentials directory and read from there by the agent; never in argv or the",
        "# environment. Once used the token is spent; with the file gone the agent gets a",
        "# blank credential (SetCredential=, a newline) and starts as the enrolled agent it is.",
        f"LoadCredential={CREDENTIAL}:{token_file}",
        f"SetCredential={CREDENTIAL}:\\n",
        f"Environment=EASYTASK_AGENT_ENROLL_FILE=%d/{CREDENTIAL}",
        f"ExecStart={program} agent",
        *state_lines,
        "# Stopping the unit ends the agent and every command it started (all in its cgroup).",
        "KillMode=control-group",
        "TimeoutStopSec=30s",
        "Restart=always",
        "RestartSec=2s",
        "LimitNOFILE=65536",
        "UMask=0022",
        "# Hardening that leaves root's commands able to administer the host (docs/agents.md):",
        "# no ProtectSystem, PrivateTmp, NoNewPrivileges, system call or capability limits,",
        "# which would stop package installs, sudo and the tools a root shell uses. Refused to",
        "# the agent and its commands: another execution domain (personality) and realtime",
        "# scheduling, which no administration task needs and a runaway command could abuse.",
        "LockPersonality=yes",
        "RestrictRealtime=yes",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return [
        AgentFile(UNIT_DIR / f"{unit_name}.service", 0o644, "\n".join(unit) + "\n"),
        AgentFile(env_path, 0o600, "\n".join(env) + "\n"),
    ]
