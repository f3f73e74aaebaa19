"""A real OpenSSH sshd on a loopback port, with its own host key, client key and known_hosts."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import textwrap
from pathlib import Path

from tests.support.procs import Proc, Procs, free_port, wait_until

SSHD_BIN = shutil.which("sshd") or "/usr/sbin/sshd"


class SSHD:
    """A real OpenSSH sshd on a loopback port, with a client key and a known_hosts file."""

    def __init__(self, root: Path, port: int, proc: Proc) -> None:
        self.root = root
        self.port = port
        self.proc = proc
        self.client_key = root / "client_key"
        self.known_hosts = root / "known_hosts"
        self.user = pwd.getpwuid(os.getuid()).pw_name

    def host_vars(self) -> str:
        """INI host-line variables that reach this sshd."""
        return (
            f"ansible_host=127.0.0.1 ansible_port={self.port} ansible_user={self.user} "
            f"ansible_ssh_private_key_file={self.client_key} easytask_connection=ssh "
            f"easytask_known_hosts={self.known_hosts}"
        )


def start_sshd(root: Path, procs: Procs, sessions: int = 200, log_level: str = "ERROR") -> SSHD:
    """Start sshd with its own config, host key and authorized key; UsePAM no, StrictModes no.

    `sessions` is MaxSessions, and the start of MaxStartups (SESSIONS:30:2*SESSIONS);
    `log_level` its LogLevel (DEBUG1 logs each forwarded connection to `sshd.log`)."""
    if not Path(SSHD_BIN).exists():
        raise FileNotFoundError("sshd is missing (Debian: apt-get install openssh-server)")
    root.mkdir(parents=True, exist_ok=True)
    home = root / "home"
    home.mkdir(exist_ok=True)
    for name in ("host_key", "client_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)], check=True
        )
    (root / "authorized_keys").write_text((root / "client_key.pub").read_text())
    port = free_port()
    config = root / "sshd_config"
    config.write_text(
        textwrap.dedent(f"""\
        Port {port}
        ListenAddress 127.0.0.1
        HostKey {root / "host_key"}
        AuthorizedKeysFile {root / "authorized_keys"}
        PidFile {root / "sshd.pid"}
        UsePAM no
        StrictModes no
        PasswordAuthentication no
        KbdInteractiveAuthentication no
        PubkeyAuthentication yes
        PermitRootLogin yes
        SetEnv HOME={home}
        MaxStartups {sessions}:30:{2 * sessions}
        MaxSessions {sessions}
        LogLevel {log_level}
        Subsystem sftp internal-sftp
        """)
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = procs.start([SSHD_BIN, "-D", "-e", "-f", str(config)], root / "sshd.log")
    host_pub = (root / "host_key.pub").read_text().split()
    (root / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")

    def listening() -> bool:
        if not proc.alive():
            raise RuntimeError(f"sshd exited: {proc.tail()}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_until(listening, timeout=10, what="sshd listening")
    return SSHD(root, port, proc)
