"""SSH keys kept in a state dir: generated once, private part mode 0600."""

from __future__ import annotations

import os
from pathlib import Path

import asyncssh


def load_or_create_key(path: Path) -> asyncssh.SSHKey:
    """Read an ed25519 private key, generating it (and its .pub) on first use."""
    if path.exists():
        return asyncssh.read_private_key(str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    key = asyncssh.generate_private_key("ssh-ed25519")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.export_private_key())
    (path.parent / (path.name + ".pub")).write_bytes(key.export_public_key())
    return key


def check_private_key(text: str) -> str:
    """An SSH private key as given (OpenSSH or PEM, without a passphrase); ValueError naming
    what is wrong otherwise. Returns its algorithm."""
    try:
        key = asyncssh.import_private_key(text)
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise ValueError(f"not an SSH private key without a passphrase: {exc}") from exc
    return key.get_algorithm()
