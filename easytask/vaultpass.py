"""Ansible Vault passwords from `--vault-password-file` and `--vault-id LABEL@FILE`, as Ansible
reads them: a file's content, or what an executable file prints (a `*-client` script is asked
for its vault id with `--vault-id LABEL`)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from easytask.errors import ConfigError
from easytask.vault import DEFAULT_ID, Vault

__all__ = ["load_vault", "read_password"]

SCRIPT_TIMEOUT = 30.0


def load_vault(password_file: str | None, vault_ids: Sequence[str] | None = ()) -> Vault:
    """The passwords of `--vault-password-file FILE` (vault id `default`) and each `--vault-id`
    (`LABEL@FILE`, or `FILE` for the `default` id); ConfigError naming the one that fails."""
    secrets: list[tuple[str, bytes]] = []
    specs = [(DEFAULT_ID, password_file, "--vault-password-file")] if password_file else []
    for spec in vault_ids or ():
        label, at, source = spec.rpartition("@")
        if not at:
            label, source = DEFAULT_ID, spec
        if not label or not source:
            raise ConfigError(f"--vault-id {spec!r}: expected LABEL@FILE")
        specs.append((label, source, f"--vault-id {spec}"))
    for label, source, flag in specs:
        if source == "prompt":
            raise ConfigError(f"{flag}: asking for a vault password is not supported; use a file")
        secrets.append((label, read_password(source, label, flag)))
    return Vault(secrets)


def read_password(source: str, label: str, flag: str = "--vault-password-file") -> bytes:
    """A file's content without surrounding white space, or an executable's output line."""
    path = Path(os.path.expanduser(source))
    if not path.is_file():
        raise ConfigError(f"{flag}: the vault password file {source} was not found")
    if os.access(path, os.X_OK):
        command = [str(path)]
        if path.stem.endswith("-client"):
            command += ["--vault-id", label]
        try:
            done = subprocess.run(
                command, stdout=subprocess.PIPE, timeout=SCRIPT_TIMEOUT, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConfigError(
                f"{flag}: cannot run the vault password script {source}: {exc}"
            ) from None
        if done.returncode != 0:
            raise ConfigError(
                f"{flag}: the vault password script {source} failed (exit code {done.returncode})"
            )
        password = done.stdout.strip(b"\r\n")
    else:
        try:
            password = path.read_bytes().strip()
        except OSError as exc:
            raise ConfigError(f"{flag}: cannot read {source}: {exc.strerror}") from None
    if not password:
        raise ConfigError(f"{flag}: the vault password from {source} is empty")
    return password
