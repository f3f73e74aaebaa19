"""Credential sealing: AES-GCM round trip, a fresh nonce each time, the wrong key and a changed
value refused with a clear error, key files and rotation files."""

from __future__ import annotations

import base64
import secrets
import stat
from pathlib import Path

import pytest

from easytask.sealing import (
    KEY_FILE,
    Keyring,
    SealError,
    Tampered,
    WrongKey,
    associated,
    begin_rotation,
    finish_rotation,
    key_id,
    load_keyring,
    parse_key,
    settle_rotation,
)

AAD = associated("db_password", "value")


def test_round_trip() -> None:
    """A sealed value opens to itself under the key that sealed it; the sealed form hides it."""
    ring = Keyring(secrets.token_bytes(32))
    value = "s3cr3t-\u00e9-value\nsecond line"
    kid, sealed = ring.seal(value, AAD)
    assert kid == ring.key_id and len(kid) == 16
    assert "s3cr3t" not in sealed and "s3cr3t" not in base64.b64decode(sealed).decode("latin-1")
    assert ring.open(kid, sealed, AAD) == value


def test_nonce_is_fresh_each_time() -> None:
    """The same value sealed twice gives two different sealed forms (a new 12-byte nonce each)."""
    ring = Keyring(secrets.token_bytes(32))
    sealed = [base64.b64decode(ring.seal("same", AAD)[1]) for _ in range(200)]
    assert len({s[:12] for s in sealed}) == 200
    assert len(set(sealed)) == 200


def test_wrong_key_is_a_clear_error() -> None:
    """A value sealed under another key is refused naming both key ids and the shared key rule."""
    one, two = Keyring(secrets.token_bytes(32)), Keyring(secrets.token_bytes(32), source="x")
    kid, sealed = one.seal("v", AAD)
    with pytest.raises(WrongKey) as caught:
        two.open(kid, sealed, AAD, "credential 'db'")
    message = str(caught.value)
    assert one.key_id in message and two.key_id in message and "credential 'db'" in message
    assert "every server on one database needs the same credential key" in message


@pytest.mark.parametrize(
    "change",
    [
        "flip a ciphertext bit",
        "flip a nonce bit",
        "cut the tag",
        "other name",
        "other kind",
        "junk",
    ],
)
def test_tampered_value_is_refused(change: str) -> None:
    """A changed sealed value, or one moved onto another name or kind, does not open."""
    ring = Keyring(secrets.token_bytes(32))
    kid, sealed = ring.seal("the value", AAD)
    raw = bytearray(base64.b64decode(sealed))
    aad = AAD
    if change == "flip a ciphertext bit":
        raw[14] ^= 1
    elif change == "flip a nonce bit":
        raw[0] ^= 1
    elif change == "cut the tag":
        raw = raw[:-1]
    elif change == "other name":
        aad = associated("other", "value")
    elif change == "other kind":
        aad = associated("db_password", "ssh-key")
    text = base64.b64encode(bytes(raw)).decode() if change != "junk" else "not base64!"
    with pytest.raises(Tampered, match="changed or damaged"):
        ring.open(kid, text, aad)


def test_key_file_made_once_owner_only(tmp_path: Path) -> None:
    """Without a configured key, STATE_DIR/credentials.key is made once, mode 0600, and reused."""
    first = load_keyring(tmp_path, None)
    path = tmp_path / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_keyring(tmp_path, None).key_id == first.key_id == key_id(first.key)


def test_configured_key_wins_and_is_checked(tmp_path: Path) -> None:
    """secret_key (64 hex) is used instead of the file; anything else is a clear error."""
    key = secrets.token_bytes(32)
    ring = load_keyring(tmp_path, key.hex())
    assert ring.key == key and not (tmp_path / KEY_FILE).exists()
    for bad in ("short", "zz" * 32, key.hex()[:-2]):
        with pytest.raises(SealError, match="64 hex digits"):
            parse_key(bad)


def test_rotation_files(tmp_path: Path) -> None:
    """A rotation keeps the old key as .old and the new as .new until it is done; a keyring
    loaded in between opens values of both; once done only the new key file is left."""
    old = load_keyring(tmp_path, None)
    kid, sealed = old.seal("v", AAD)
    new = begin_rotation(tmp_path, old)
    assert new.key != old.key and new.open(kid, sealed, AAD) == "v"
    between = load_keyring(tmp_path, None)
    nkid, nsealed = new.seal("w", AAD)
    assert between.open(kid, sealed, AAD) == "v" and between.open(nkid, nsealed, AAD) == "w"
    finish_rotation(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [KEY_FILE]
    assert load_keyring(tmp_path, None).key_id == new.key_id


def test_an_interrupted_rotation_is_settled_at_start(tmp_path: Path) -> None:
    """A rotation left half done is finished when the database holds the new key's values,
    undone when it holds the old key's; a second rotation is refused while one is under way."""
    old = load_keyring(tmp_path, None)
    new = begin_rotation(tmp_path, old)
    with pytest.raises(SealError, match="under way"):
        begin_rotation(tmp_path, old)
    assert settle_rotation(tmp_path, {old.key_id}) == "abandoned"
    assert load_keyring(tmp_path, None).key_id == old.key_id
    assert sorted(p.name for p in tmp_path.iterdir()) == [KEY_FILE]
    new = begin_rotation(tmp_path, old)
    assert settle_rotation(tmp_path, {new.key_id}) == "finished"
    assert load_keyring(tmp_path, None).key_id == new.key_id
    assert sorted(p.name for p in tmp_path.iterdir()) == [KEY_FILE]
    assert settle_rotation(tmp_path, {new.key_id}) is None
