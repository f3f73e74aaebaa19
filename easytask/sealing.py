"""Credential values sealed at rest: AES-256-GCM under the server's credential key.

Each sealed value is `nonce (12 random bytes) + ciphertext + tag`, base64, stored beside the id
of the key that sealed it. The associated data binds it to its credential's name and kind, so a
value copied onto another row is refused like a tampered one. The key is 32 random bytes: the
`secret_key` setting (`EASYTASK_SECRET_KEY`, 64 hex digits), else `STATE_DIR/credentials.key`
(mode 0600, made on first start). Servers on one database need the same key.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from easytask.errors import EasyTaskError
from easytask.statefiles import load_or_create_secret

KEY_FILE = "credentials.key"
NEW_SUFFIX = ".new"  # a rotation's new key until the database holds values sealed with it
OLD_SUFFIX = ".old"  # the key before a rotation, kept until the rotation is done
NONCE = 12


class SealError(EasyTaskError):
    """A stored credential cannot be opened."""

    exit_code = 3


class WrongKey(SealError):
    """A stored credential was sealed with another key than this server's."""


class Tampered(SealError):
    """A stored credential does not open under its key: it was changed or damaged."""


def key_id(key: bytes) -> str:
    """A key's public id (16 hex digits), stored beside each value it seals."""
    return hashlib.sha256(b"easytask-credential-key\x00" + key).hexdigest()[:16]


def parse_key(text: str) -> bytes:
    """A key as written in `secret_key` or the key file: 64 hex digits (32 bytes)."""
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        key = b""
    if len(key) != 32:
        raise SealError(
            "secret_key must be 64 hex digits (32 random bytes, e.g. `openssl rand -hex 32`)"
        )
    return key


def associated(name: str, kind: str) -> bytes:
    """What a sealed value is bound to: its credential's name and kind."""
    return f"easytask-credential\x00{name}\x00{kind}".encode()


class Keyring:
    """The key that seals new values, and the keys that may still open older ones."""

    def __init__(self, key: bytes, *older: bytes, source: str = "") -> None:
        self.key = key
        self.key_id = key_id(key)
        self.source = source  # where the key came from, for messages
        self._keys = {key_id(k): k for k in (*older, key)}

    def opens(self, kid: str) -> bool:
        """This keyring holds the key of that id."""
        return kid in self._keys

    def seal(self, value: str, aad: bytes) -> tuple[str, str]:
        """(key id, sealed value) of a value: a fresh random nonce each time."""
        nonce = secrets.token_bytes(NONCE)
        sealed = nonce + AESGCM(self.key).encrypt(nonce, value.encode(), aad)
        return self.key_id, base64.b64encode(sealed).decode()

    def open(self, kid: str, sealed: str, aad: bytes, what: str = "a credential") -> str:
        """The value of a sealed one; WrongKey or Tampered (naming `what`) if it cannot be."""
        key = self._keys.get(kid)
        if key is None:
            raise WrongKey(
                f"{what} was sealed with key {kid}, and this server's key is {self.key_id} "
                f"({self.source or 'its credential key'}): every server on one database needs "
                "the same credential key (STATE_DIR/credentials.key or EASYTASK_SECRET_KEY)"
            )
        try:
            raw = base64.b64decode(sealed.encode(), validate=True)
            if len(raw) <= NONCE:
                raise ValueError("too short")
            return AESGCM(key).decrypt(raw[:NONCE], raw[NONCE:], aad).decode()
        except (InvalidTag, ValueError, UnicodeDecodeError) as exc:
            raise Tampered(
                f"{what} does not open under key {kid}: it was changed or damaged"
            ) from exc


def load_keyring(state_dir: Path, configured: str | None) -> Keyring:
    """This server's keyring: the configured key, else the state dir's key file (made on first
    use). A rotation left unfinished (its `.new` and `.old` files) adds their keys for opening."""
    path = state_dir / KEY_FILE
    older = [
        parse_key(p.read_text())
        for p in (path.with_name(path.name + OLD_SUFFIX), path.with_name(path.name + NEW_SUFFIX))
        if p.is_file()
    ]
    if configured:
        return Keyring(parse_key(configured), *older, source="EASYTASK_SECRET_KEY")
    return Keyring(load_or_create_secret(path), *older, source=str(path))


def write_key(path: Path, key: bytes) -> None:
    """Write a key file (hex, mode 0600), replacing none: the caller renames it into place."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key.hex() + "\n")


def begin_rotation(state_dir: Path, ring: Keyring) -> Keyring:
    """A new key for a rotation: the old one kept as `credentials.key.old`, the new one written
    as `credentials.key.new`; the keyring that seals with the new and still opens the old."""
    path = state_dir / KEY_FILE
    if path.with_name(path.name + NEW_SUFFIX).exists():
        raise SealError(f"a key rotation is under way ({path}{NEW_SUFFIX} exists)")
    write_key(path.with_name(path.name + OLD_SUFFIX), ring.key)
    new = secrets.token_bytes(32)
    write_key(path.with_name(path.name + NEW_SUFFIX), new)
    return Keyring(new, ring.key, source=str(path))


def finish_rotation(state_dir: Path) -> None:
    """The database holds every value sealed with the new key: it becomes the key file, and the
    old key's backup goes."""
    path = state_dir / KEY_FILE
    os.replace(path.with_name(path.name + NEW_SUFFIX), path)
    path.with_name(path.name + OLD_SUFFIX).unlink(missing_ok=True)


def abandon_rotation(state_dir: Path) -> None:
    """The database kept the old key's values: the new key goes, the old stays the key file."""
    path = state_dir / KEY_FILE
    path.with_name(path.name + NEW_SUFFIX).unlink(missing_ok=True)
    path.with_name(path.name + OLD_SUFFIX).unlink(missing_ok=True)


def settle_rotation(state_dir: Path, used: set[str]) -> str | None:
    """At start, end a rotation a stopped server left (its `.new` file there): finished when
    the database's values (key ids `used`) are all sealed with the new key, abandoned when none
    is; what was done, or None."""
    path = state_dir / KEY_FILE
    new_path = path.with_name(path.name + NEW_SUFFIX)
    if not new_path.is_file():
        return None
    new_id = key_id(parse_key(new_path.read_text()))
    if used and used == {new_id}:
        finish_rotation(state_dir)
        return "finished"
    if new_id not in used:
        abandon_rotation(state_dir)
        return "abandoned"
    return None
