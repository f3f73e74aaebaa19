"""`easytask agents install`: the files that run a pip-installed agent under systemd, or the agent's
image under Podman (a Quadlet `.container` unit and the matching `podman run` line).

Nothing here talks to a server or needs more than an agent's own install (`pip install easytask`).
The enrolment token never appears in what is generated: systemd hands a root-only file to the
agent as a credential (`LoadCredential=`), Podman mounts a secret; the agent reads either with
`--enroll-file` (`EASYTASK_AGENT_ENROLL_FILE`).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, TextIO

from easytask import __version__
from easytask.agentfiles import CONFIG_DIR, AgentFile, systemd_files
from easytask.config import Settings
from easytask.errors import UsageError

__all__ = ["AgentFile", "add_parser", "podman_files", "systemd_files"]

# as the agent checks its own name (easytask/agent/main.py NAME_RE); groups follow the same rule
_WORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# a server address: HOST:PORT, [V6]:PORT, comma-separated; nothing a unit or a shell would read
_SERVER_PART = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(:[0-9]{1,5})?$")
_PLAIN_PATH = re.compile(r"^/[A-Za-z0-9._/@+-]*$")

QUADLET_DIR = Path("/etc/containers/systemd")

# what deploy/Containerfile.agent sets up: its user, its volume and its state dir on it
IMAGE = "localhost/easytask-agent:latest"
IMAGE_UID = 10001
IMAGE_VOLUME = "/var/lib/easytask"
SECRET_TARGET = "/run/secrets/easytask-enroll"


def add_parser(agsub: Any) -> None:
    """Register `agents install` under `agents`."""
    i = agsub.add_parser(
        "install",
        help="print (or write) what runs an agent on this host: a systemd unit and env file, or "
        "a Podman Quadlet unit and podman run line",
    )
    kind = i.add_mutually_exclusive_group(required=True)
    kind.add_argument(
        "--systemd",
        action="store_true",
        help="a unit and env file for the agent installed here with pip, run as root",
    )
    kind.add_argument(
        "--podman",
        action="store_true",
        help="a Quadlet .container unit and the podman run line for the agent's image",
    )
    i.add_argument("--server", required=True, help="the server's agent port, HOST:PORT[,...]")
    i.add_argument("--name", required=True, help="the agent's name")
    i.add_argument(
        "--group", action="append", default=[], help="a group label for the agent (repeatable)"
    )
    i.add_argument(
        "--write",
        nargs="?",
        const="",
        metavar="DIR",
        help="write the files instead of printing them: into DIR, or without DIR to the "
        "standard paths (/etc/systemd/system, /etc/containers/systemd, /etc/easytask)",
    )
    i.add_argument(
        "--token-file",
        metavar="PATH",
        help="systemd: the root-only file holding the enrolment token (default "
        "/etc/easytask/agent-NAME.enroll)",
    )
    i.add_argument(
        "--state-dir",
        metavar="DIR",
        help="systemd: the agent's state dir (default /var/lib/easytask/agent-NAME)",
    )
    i.add_argument(
        "--easytask",
        metavar="PATH",
        help="systemd: the easytask program the unit starts (default: the one running now)",
    )
    i.add_argument("--image", help=f"podman: the agent's image (default {IMAGE})")
    i.add_argument(
        "--secret",
        metavar="NAME",
        help="podman: the secret holding the enrolment token (default easytask-agent-NAME-enroll)",
    )
    i.set_defaults(func=cmd_install)


# -- checks ------------------------------------------------------------------------------------


def _check_name(name: str, what: str) -> str:
    if not _WORD.match(name):
        raise UsageError(
            f"agents install: {what} {name!r} is not valid: use letters, digits, '.', '_' and '-'"
        )
    return name


def _check_server(server: str) -> str:
    parts = [p.strip() for p in server.split(",")]
    for part in parts:
        match = _SERVER_PART.match(part)
        port = (match.group(2) or ":8022")[1:] if match else ""
        if not match or not 0 < int(port) < 65536:
            raise UsageError(f"agents install: --server: not HOST:PORT[,HOST:PORT...]: {server!r}")
    return ",".join(parts)


def _check_path(path: str, what: str) -> Path:
    if not _PLAIN_PATH.match(path) or "/../" in path + "/":
        raise UsageError(
            f"agents install: {what} {path!r}: give an absolute path of letters, digits and "
            "'._/@+-' (it goes into a unit file)"
        )
    return Path(path)


def _easytask_program(given: str | None) -> Path:
    """The console script the unit starts: the one beside this interpreter by default."""
    if given:
        return _check_path(given, "--easytask")
    beside = Path(sys.executable).parent / "easytask"
    found = str(beside) if os.access(beside, os.X_OK) else shutil.which("easytask")
    if not found:
        raise UsageError("agents install: no easytask program found: name it with --easytask PATH")
    return _check_path(os.path.abspath(found), "--easytask")


# -- podman ------------------------------------------------------------------------------------


def podman_settings(server: str, name: str, groups: list[str] | None = None) -> dict[str, str]:
    """The container's environment: the image sets the state dir and the log format."""
    env = {
        "EASYTASK_AGENT_SERVER": server,
        "EASYTASK_AGENT_NAME": name,
        "EASYTASK_AGENT_ENROLL_FILE": SECRET_TARGET,
    }
    if groups:
        env["EASYTASK_AGENT_GROUPS"] = ",".join(groups)
    return env


def _secret_option(secret: str) -> str:
    return f"{secret},type=mount,target={SECRET_TARGET},uid={IMAGE_UID},gid={IMAGE_UID},mode=0400"


def podman_run_line(
    server: str, name: str, groups: list[str] | None = None, image: str = IMAGE, secret: str = ""
) -> str:
    """The `podman run` command that starts the container the Quadlet unit describes."""
    secret = secret or f"easytask-agent-{name}-enroll"
    words = ["podman", "run", "-d", "--name", f"easytask-agent-{name}", "--restart=always"]
    words += ["-v", f"easytask-agent-{name}:{IMAGE_VOLUME}"]
    for key, value in podman_settings(server, name, groups).items():
        words += ["-e", f"{key}={value}"]
    words += ["--secret", _secret_option(secret), image]
    return " ".join(shlex.quote(w) for w in words)


def podman_files(
    server: str, name: str, groups: list[str] | None = None, image: str = IMAGE, secret: str = ""
) -> list[AgentFile]:
    """The Quadlet unit (rootful: /etc/containers/systemd) for the agent's container."""
    secret = secret or f"easytask-agent-{name}-enroll"
    env = podman_settings(server, name, groups)
    text = [
        f"# EasyTask agent {name} in a container; made by `easytask agents install --podman`",
        f"# (easytask {__version__}). The image is deploy/Containerfile.agent's; the enrolment",
        f"# token is the podman secret {secret}, mounted for the image's user only.",
        "# The same container by hand:",
        f"#   {podman_run_line(server, name, groups, image, secret)}",
        "",
        "[Unit]",
        f"Description=EasyTask agent {name} (container)",
        "After=network-online.target",
        "Wants=network-online.target",
        "StartLimitIntervalSec=0",
        "",
        "[Container]",
        f"Image={image}",
        f"ContainerName=easytask-agent-{name}",
        f"Volume=easytask-agent-{name}:{IMAGE_VOLUME}",
        *(f"Environment={key}={value}" for key, value in env.items()),
        f"Secret={_secret_option(secret)}",
        "",
        "[Service]",
        "Restart=always",
        "RestartSec=2s",
        "# the first start may pull the image",
        "TimeoutStartSec=900",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return [
        AgentFile(QUADLET_DIR / f"easytask-agent-{name}.container", 0o644, "\n".join(text) + "\n")
    ]


# -- the command -------------------------------------------------------------------------------


def _write(file: AgentFile, into: Path | None) -> Path:
    """Write `file` atomically with its mode: to its own path, or by its name into `into`."""
    path = into / file.path.name if into is not None else file.path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, file.mode)
        with os.fdopen(fd, "w") as fh:
            fh.write(file.text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _next_steps(args: argparse.Namespace, files: list[AgentFile], token_file: Path) -> list[str]:
    if args.systemd:
        unit = files[0].path.stem
        return [
            "Then, as root on the agent host (the token from `easytask agents token`, pasted,",
            "then Ctrl-D; it never goes on a command line):",
            f"  install -m 0600 -o root -g root /dev/stdin {token_file}",
            f"  systemctl daemon-reload && systemctl enable --now {unit}",
        ]
    secret = args.secret or f"easytask-agent-{args.name}-enroll"
    return [
        "Then, as root on the agent host, with the image built (podman build -f",
        "deploy/Containerfile.agent -t easytask-agent .) and the token from `easytask agents",
        "token` in a root-only file:",
        f"  podman secret create {secret} /etc/easytask/agent-{args.name}.enroll",
        f"  systemctl daemon-reload && systemctl start easytask-agent-{args.name}",
        "or, without systemd, the podman run line above.",
    ]


def cmd_install(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    """`easytask agents install --systemd|--podman`."""
    name = _check_name(args.name, "agent name")
    server = _check_server(args.server)
    groups = [_check_name(g, "group") for g in args.group]
    token_file = _check_path(
        args.token_file or str(CONFIG_DIR / f"agent-{name}.enroll"), "--token-file"
    )
    if args.systemd:
        for flag in ("image", "secret"):
            if getattr(args, flag):
                raise UsageError(f"agents install: --{flag} is for --podman")
        state_dir = _check_path(args.state_dir, "--state-dir") if args.state_dir else None
        files = systemd_files(
            server, name, _easytask_program(args.easytask), groups, state_dir, token_file
        )
    else:
        for flag in ("token_file", "state_dir", "easytask"):
            if getattr(args, flag):
                raise UsageError(f"agents install: --{flag.replace('_', '-')} is for --systemd")
        image = args.image or IMAGE
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$", image):
            raise UsageError(f"agents install: --image {image!r} is not an image reference")
        secret = _check_name(args.secret, "secret") if args.secret else ""
        files = podman_files(server, name, groups, image, secret)
    if args.write is not None:
        into = Path(args.write) if args.write else None
        for file in files:
            try:
                path = _write(file, into)
            except OSError as exc:
                raise UsageError(
                    f"agents install: cannot write {exc.filename or file.path}: "
                    f"{exc.strerror or exc}"
                ) from exc
            out.write(f"wrote {path} (mode {file.mode:04o})\n")
    else:
        for file in files:
            out.write(f"# ---- {file.path} (mode {file.mode:04o})\n{file.text}\n")
    if args.podman:
        line = podman_run_line(server, name, groups, args.image or IMAGE, args.secret or "")
        out.write(f"# ---- podman run, the same container without systemd\n{line}\n\n")
    out.write("".join(f"# {line}\n" for line in _next_steps(args, files, token_file)))
    return 0
