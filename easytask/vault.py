"""Ansible Vault: decrypt `$ANSIBLE_VAULT;1.1;AES256` and `1.2` texts (inline `!vault` values and
encrypted files) with the passwords at hand, and mark what came out of a vault as secret."""

from __future__ import annotations

import binascii
import hmac
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

__all__ = [
    "HEADER",
    "Vault",
    "VaultError",
    "VaultText",
    "is_encrypted",
    "mark_secret",
    "vault_values",
]

HEADER = "$ANSIBLE_VAULT"
DEFAULT_ID = "default"
_ITERATIONS = 10000
_KEY_LENGTH = 32
_IV_LENGTH = 16


class VaultError(ValueError):
    """A vault text that cannot be read or decrypted; the message says why (no file:line)."""


class VaultText(str):
    """A string that came out of a vault: its value is a secret, masked in every job output.

    `ciphertext` is the `!vault` envelope it was written as (None for a value of an encrypted
    file): `ansible-inventory --list` shows that envelope, never the value.
    """

    ciphertext: str | None

    def __new__(cls, value: str, ciphertext: str | None = None) -> VaultText:
        self = super().__new__(cls, value)
        self.ciphertext = ciphertext
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (VaultText, (str(self), self.ciphertext))

    def __deepcopy__(self, memo: dict[int, Any]) -> VaultText:
        return self


def is_encrypted(text: str) -> bool:
    """Whether a text is a vault envelope (`$ANSIBLE_VAULT;...` on its first line)."""
    return text.lstrip().startswith(HEADER + ";")


def parse_envelope(text: str) -> tuple[str, str | None, bytes, bytes, bytes]:
    """(version, vault id or None, salt, hmac, ciphertext) of a vault text; VaultError if malformed."""
    lines = text.strip().splitlines()
    header = [part.strip() for part in lines[0].strip().split(";")] if lines else []
    if len(header) < 3 or header[0] != HEADER:
        raise VaultError("not an Ansible Vault text (it must start with $ANSIBLE_VAULT;1.1;AES256)")
    version, cipher = header[1], header[2]
    if version not in ("1.1", "1.2"):
        raise VaultError(f"unsupported vault format version {version!r} (1.1 and 1.2 are)")
    if cipher != "AES256":
        raise VaultError(f"unsupported vault cipher {cipher!r} (AES256 is)")
    vault_id = header[3] if len(header) >= 4 and header[3] else None
    try:
        inner = binascii.unhexlify("".join(line.strip() for line in lines[1:]))
        salt_hex, mac_hex, data_hex = inner.split(b"\n", 2)
        salt = binascii.unhexlify(salt_hex)
        mac = binascii.unhexlify(mac_hex)
        data = binascii.unhexlify(data_hex)
    except (binascii.Error, ValueError):
        raise VaultError("the vault text is damaged (not the hex Ansible Vault writes)") from None
    return version, vault_id, salt, mac, data


def _keys(password: bytes, salt: bytes) -> tuple[bytes, bytes, bytes]:
    from cryptography.hazmat.primitives import hashes  # only when a vault is opened
    from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

    kdf = PBKDF2HMAC(
        algorithm=hashes.SHA256(),
        length=2 * _KEY_LENGTH + _IV_LENGTH,
        salt=salt,
        iterations=_ITERATIONS,
    )
    derived = kdf.derive(password)
    return derived[:_KEY_LENGTH], derived[_KEY_LENGTH : 2 * _KEY_LENGTH], derived[2 * _KEY_LENGTH :]


def _decrypt(password: bytes, salt: bytes, mac: bytes, data: bytes) -> bytes | None:
    """The plaintext, or None when the password is not the one (the HMAC differs)."""
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key, mac_key, iv = _keys(password, salt)
    expected = hmac.new(mac_key, data, "sha256").digest()
    if not hmac.compare_digest(expected, mac):
        return None
    decryptor = Cipher(algorithms.AES(key), modes.CTR(iv)).decryptor()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        return unpadder.update(decryptor.update(data) + decryptor.finalize()) + unpadder.finalize()
    except ValueError:
        return None


class Vault:
    """The vault passwords at hand, as (vault id, password) pairs in the order given.

    With `locked`, nothing is decrypted: `!vault` values read as empty strings and an encrypted
    file as empty (for a playbook read only to send it to the server, which decrypts it).
    As in Ansible, a 1.2 text is tried first with the passwords of its own vault id, then with
    the others; a 1.1 text (no id) with every password in turn.
    """

    def __init__(self, secrets: Sequence[tuple[str, bytes]] = (), *, locked: bool = False) -> None:
        self.secrets = list(secrets)
        self.locked = locked  # decrypt nothing: values read as "" (a text read only to be sent on)

    def __bool__(self) -> bool:
        return bool(self.secrets)

    def decrypt(self, text: str, what: str = "value") -> bytes:
        """The plaintext of a vault text; VaultError naming the vault id when no password fits
        (`what`: "value" or "file", for the message)."""
        _, vault_id, salt, mac, data = parse_envelope(text)
        shown = f" (vault id {vault_id!r})" if vault_id else ""
        if not self.secrets:
            wanted = f" for vault id {vault_id!r}" if vault_id else ""
            raise VaultError(
                f"cannot decrypt the vault {what}: no vault password given{wanted}"
                " (use --vault-password-file or --vault-id)"
            )
        ordered = [s for s in self.secrets if s[0] == vault_id] + [
            s for s in self.secrets if s[0] != vault_id
        ]
        for _, password in ordered:
            plain = _decrypt(password, salt, mac, data)
            if plain is not None:
                return plain
        raise VaultError(f"cannot decrypt the vault {what} with the given password{shown}")

    def decrypt_text(self, text: str, what: str = "value") -> str:
        """The plaintext as UTF-8 text ("" when the vault is `locked`)."""
        if self.locked:
            return ""
        plain = self.decrypt(text, what)
        try:
            return plain.decode("utf-8")
        except UnicodeDecodeError:
            raise VaultError(f"the decrypted vault {what} is not UTF-8 text") from None


def mark_secret(value: Any) -> Any:
    """Every plain string inside a value (a decrypted file's data) marked as a vault value; lists
    and mappings are changed in place (their positions stay known)."""
    if type(value) is str:
        return VaultText(value)
    if isinstance(value, list):
        value[:] = [mark_secret(v) for v in value]
    elif isinstance(value, dict):
        for key, item in value.items():
            value[key] = mark_secret(item)
    return value


MIN_MASKED = 4  # shorter vault strings ("yes", "80") are not masked: they would hide too much


def vault_values(*layers: Mapping[str, Any]) -> list[str]:
    """The vault values found in some variables, nested ones too: the strings to mask (those of
    MIN_MASKED characters or more)."""
    return sorted(
        {str(v) for layer in layers for v in _walk(layer) if len(v.strip()) >= MIN_MASKED}
    )


def _walk(value: Any) -> Iterator[VaultText]:
    if isinstance(value, VaultText):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _walk(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _walk(item)
