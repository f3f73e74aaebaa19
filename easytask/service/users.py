"""User and API token use cases: create and change users, issue and revoke tokens."""

from __future__ import annotations

from typing import Any

from easytask.errors import APIError
from easytask.service.context import Services
from easytask.store.audit import AuditNote
from easytask.store.models import ApiToken, User


async def create_user(
    services: Services,
    actor: str,
    source: str,
    name: str,
    role: str,
    password_hash: str,
    scope: str,
) -> User:
    """A new user (409 if the name is taken)."""
    store = services.store
    note = AuditNote(actor, "user.create", source, {"user": name, "role": role, "scope": scope})
    created = await store.call(store.create_user, name, role, password_hash, scope, note)
    if created is None:
        raise APIError(f"user {name!r} exists", status=409)
    return created


async def update_user(
    services: Services,
    actor: str,
    source: str,
    name: str,
    fields: dict[str, Any],
    detail: dict[str, Any],
) -> User:
    """Change a user's fields; `detail` is what the audit record says changed."""
    store = services.store
    note = AuditNote(actor, "user.update", source, detail)
    changed = await store.call(store.update_user, name, note, **fields)
    if changed is None:
        raise APIError(f"no user {name!r}", status=404)
    return changed


async def issue_token(
    services: Services,
    actor: str,
    source: str,
    owner: str,
    name: str,
    ttl: float | None,
    login: bool = False,
) -> tuple[str, ApiToken]:
    """A new API token of `owner` (for a sign-in with a password when `login`): its secret
    (shown once) and its row."""
    store = services.store
    ttl = token_lifetime(services, ttl)
    if not login:
        target = await store.call(store.get_user, owner)
        if target is None:
            raise APIError(f"no user {owner!r}", status=404)
        if target.disabled:
            raise APIError(f"user {owner!r} is disabled", status=409)
    detail: dict[str, Any] = {"name": name, "user": owner, "ttl": ttl}
    if login:
        detail["login"] = True
    note = AuditNote(actor, "token.create", source, detail)  # the token's id added
    return await store.call(store.issue_api_token, owner, name, ttl, note)


def _span(seconds: float) -> str:
    """A lifetime as it would be written: 90d, 12h, 30m or 45s."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def token_lifetime(services: Services, ttl: float | None) -> float | None:
    """A token's lifetime: the one asked for, or the server's maximum when none is asked; a
    request beyond the maximum is refused (400)."""
    longest = services.settings.token_max_ttl
    if longest is None:
        return ttl
    if ttl is None:
        return longest
    if ttl > longest:
        raise APIError(
            f"ttl: at most {_span(longest)} (the server's token_max_ttl), got {_span(ttl)}"
        )
    return ttl


async def revoke_token(
    services: Services, user: User, source: str, token_id: int
) -> tuple[ApiToken, str]:
    """Revoke an API token (its owner or an admin): its row and owner."""
    store = services.store
    owned = {row.id for row, _ in await store.call(store.list_api_tokens, user.name)}
    if user.role != "admin" and token_id not in owned:
        raise APIError(f"no token {token_id} of yours", status=404)
    note = AuditNote(user.name, "token.revoke", source, {})  # the token, its name and owner added
    result = await store.call(store.revoke_api_token, token_id, note)
    if result is None:
        raise APIError(f"no token {token_id}", status=404)
    return result
