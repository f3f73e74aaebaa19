"""The credential store's use cases: set, list, remove, rotate the key; open for a job's use.

Admins manage credentials; admins and operators use them in jobs (never read them back);
viewers and auditors do neither. A credential with a `scope` (a host pattern) is used only on
the hosts that pattern selects, by anyone. Kinds:

- `value`: a plain value (a token, a password), for playbooks (`secrets: [name]`) and ad hoc
  commands (`run --secret NAME`, exported as `NAME` upper-cased, other characters `_`);
- `ssh-key`: an SSH private key, for agentless hosts (`easytask_credential: NAME` in the
  inventory), or as a value;
- `become-password`: a password for `sudo -S` on agentless hosts, sent on stdin only: never a
  variable or an environment value. The inventory names it like an SSH key
  (`easytask_credential: [deploy-key, deploy-sudo]`); `host_credentials` hands it to the job as
  `JobOptions.become_passwords` (host -> password, masked in every output) for become to use.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from easytask.errors import APIError, EasyTaskError
from easytask.masking import MAX_VALUE
from easytask.sealing import (
    SealError,
    abandon_rotation,
    associated,
    begin_rotation,
    finish_rotation,
)
from easytask.service.context import Services
from easytask.service.scope import check_scope_pattern
from easytask.store.audit import AuditNote
from easytask.store.models import Credential, User
from easytask.transport.keys import check_private_key

log = logging.getLogger("easytask.server")

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
KINDS = ("value", "ssh-key", "become-password")
AS_VALUE = ("value", "ssh-key")  # the kinds a command or a template may be given
USERS = ("admin", "operator")  # the roles that may use a credential in a job
HOST_VAR = "easytask_credential"


def env_name(name: str) -> str:
    """The environment variable a credential is exported as: `deploy-token` -> `DEPLOY_TOKEN`."""
    return re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def check_name(name: object) -> str:
    """A credential name: a letter, then letters, digits, `_`, `.` or `-` (64 at most)."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise APIError(
            f"credential name {name!r}: a letter, then letters, digits, '_', '.' or '-' "
            "(64 characters at most)"
        )
    return name


def check_value(kind: object, value: object) -> tuple[str, str]:
    """A credential's kind and value as stored (400 naming what is wrong otherwise)."""
    if kind not in KINDS:
        raise APIError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not isinstance(value, str) or not value.strip() or len(value.encode()) > MAX_VALUE:
        raise APIError("value must be a non-empty string (at most 64 KiB)")
    if "\x00" in value:
        raise APIError("value must not hold a NUL character")
    if kind == "ssh-key":
        try:
            check_private_key(value)
        except ValueError as exc:
            raise APIError(f"value: {exc}") from exc
    if kind == "become-password":
        value = value.rstrip("\r\n")
        if "\n" in value:
            raise APIError("a become password is one line")
    return str(kind), value


# -- management (admin) ---------------------------------------------------------------------


async def set_credential(
    services: Services, actor: str, source: str, data: Mapping[str, Any]
) -> tuple[Credential, bool]:
    """Create or replace a credential from {name, kind, value, scope}; the row, and whether it
    was created. Audited (name, kind, scope: never the value) in the same transaction."""
    name = check_name(data.get("name"))
    kind, value = check_value(data.get("kind") or "value", data.get("value"))
    scope = check_scope_pattern(str(data.get("scope") or ""))
    key_id, sealed = services.keyring.seal(value, associated(name, kind))
    note = AuditNote(
        actor, "credential.set", source, {"credential": name, "kind": kind, "scope": scope}
    )
    store = services.store
    return await store.call(store.put_credential, name, kind, scope, key_id, sealed, actor, note)


async def remove_credential(services: Services, actor: str, source: str, name: str) -> None:
    """Delete a credential (404 if there is none), audited in the same transaction."""
    store = services.store
    note = AuditNote(actor, "credential.remove", source, {"credential": name})
    if await store.call(store.delete_credential, name, note) is None:
        raise APIError(f"no credential {name!r}", status=404)


async def rotate_key(services: Services, actor: str, source: str) -> dict[str, Any]:
    """Seal every credential again under a new key, in one transaction with its audit event.

    The old key is kept as `credentials.key.old` and the new one written as
    `credentials.key.new` first; once the database holds the new values the new key becomes
    `credentials.key` and the old one goes. A failure leaves the old key and values as they were.
    """
    if services.settings.secret_key:
        raise APIError(
            "the credential key is set by secret_key (EASYTASK_SECRET_KEY): rotate it by "
            "moving to a key file (see docs/operations.md, Credential key)",
            status=409,
        )
    old = services.keyring
    try:
        new = begin_rotation(services.state_dir, old)
    except SealError as exc:
        raise APIError(str(exc), status=409) from exc

    def reseal(row: Credential) -> tuple[str, str]:
        aad = associated(row.name, row.kind)
        return new.seal(old.open(row.key_id, row.sealed, aad, f"credential {row.name!r}"), aad)

    note = AuditNote(
        actor, "credential.rotate-key", source, {"old_key": old.key_id, "new_key": new.key_id}
    )
    store = services.store
    try:
        count = await store.call(store.reseal_credentials, reseal, note)
    except SealError as exc:
        abandon_rotation(services.state_dir)
        raise APIError(f"nothing changed: {exc}", status=409) from exc
    except BaseException:
        abandon_rotation(services.state_dir)
        raise
    finish_rotation(services.state_dir)
    services.keyring = new
    return {"count": count, "old_key": old.key_id, "new_key": new.key_id}


# -- use in jobs ----------------------------------------------------------------------------


@dataclass
class Opened:
    """The credentials a job uses: their values by name (never stored, never shown)."""

    values: dict[str, str] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        """The credentials' names, sorted (what the audit event says)."""
        return sorted(self.values)


async def open_credentials(
    services: Services,
    user: User | None,
    source: str,
    uses: Mapping[str, Sequence[str]],
    what: Mapping[str, object],
    kinds: Sequence[str] = KINDS,
) -> Opened:
    """Open the credentials a job uses (name -> the hosts it is used on) for `user` (None: the
    server's own authority, a schedule). Refused, and audited as `job.refused`: a viewer or an
    auditor (403), a host outside a credential's scope (403). 404 for a name the store does
    not hold, 400 for a kind not allowed here, 409 when a value cannot be opened."""
    if not uses:
        return Opened()
    store = services.store
    actor = user.name if user is not None else "schedule"
    if user is not None and user.role not in USERS:
        await services.audit(
            actor, "job.refused", source, {**what, "credentials": sorted(uses), "role": user.role}
        )
        raise APIError(f"refused: a {user.role} may not use credentials", status=403)
    rows = await store.call(store.get_credentials, uses)
    missing = sorted(set(uses) - set(rows))
    if missing:
        raise APIError(f"no credential {', '.join(map(repr, missing))}", status=404)
    opened = Opened()
    for name, row in sorted(rows.items()):
        if row.kind not in kinds:
            raise APIError(
                f"credential {name!r} is a {row.kind}: here only {' or '.join(kinds)} may be used"
            )
        outside = await _outside(services, row, uses[name])
        if outside:
            await services.audit(
                actor,
                "job.refused",
                source,
                {**what, "credential": name, "scope": row.scope, "outside": outside},
            )
            raise APIError(
                f"refused: credential {name!r} may only be used on {row.scope!r}, not on "
                f"{', '.join(outside[:20])}",
                status=403,
            )
        try:
            value = services.keyring.open(
                row.key_id, row.sealed, associated(name, row.kind), f"credential {name!r}"
            )
        except SealError as exc:
            raise APIError(str(exc), status=409) from exc
        opened.values[name], opened.kinds[name] = value, row.kind
    return opened


async def _outside(services: Services, row: Credential, hosts: Sequence[str]) -> list[str]:
    """The hosts a credential's scope leaves out (none without a scope)."""
    if not row.scope:
        return []
    inventory = await services.merged_inventory()
    try:
        allowed = set(inventory.select(row.scope))
    except EasyTaskError:
        allowed = set()
    return [h for h in dict.fromkeys(hosts) if h not in allowed]


def inventory_uses(host_vars: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
    """The credentials the inventory names for these (agentless) hosts (`easytask_credential`:
    a name or a list of names): name -> hosts."""
    uses: dict[str, list[str]] = {}
    for host, hv in host_vars.items():
        named = hv.get(HOST_VAR)
        if not named:
            continue
        for name in [named] if isinstance(named, str) else list(named or ()):
            uses.setdefault(check_name(name), []).append(host)
    return uses


@dataclass
class HostCredentials:
    """What the inventory's credentials give each agentless host."""

    ssh_keys: dict[str, str] = field(default_factory=dict)  # host -> private key
    become_passwords: dict[str, str] = field(default_factory=dict)  # host -> password
    names: list[str] = field(default_factory=list)


async def host_credentials(
    services: Services,
    user: User | None,
    source: str,
    host_vars: Mapping[str, Mapping[str, Any]],
    what: Mapping[str, object],
) -> HostCredentials:
    """Open the credentials the inventory names for these hosts (see `open_credentials`): an
    `ssh-key` is the host's SSH key, a `become-password` its password for `sudo -S`."""
    uses = inventory_uses(host_vars)
    opened = await open_credentials(
        services, user, source, uses, what, kinds=("ssh-key", "become-password")
    )
    found = HostCredentials(names=opened.names)
    for name, hosts in uses.items():
        target = found.ssh_keys if opened.kinds[name] == "ssh-key" else found.become_passwords
        for host in hosts:
            if host in target:
                raise APIError(f"host {host}: more than one {opened.kinds[name]} credential")
            target[host] = opened.values[name]
    return found


async def note_use(services: Services, names: Iterable[str], user: str) -> None:
    """Record when and by whom credentials were last used (their job's audit event names them)."""
    store = services.store
    await store.call(store.touch_credentials, list(names), user)
