"""Host scopes: a user with a scope may only run on the hosts that pattern selects."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from easytask.errors import APIError, EasyTaskError
from easytask.inventory import split_pattern
from easytask.service.context import Services
from easytask.store.models import User

log = logging.getLogger("easytask.server")

SHOWN = 20  # hosts named in a refusal; the audit record holds them all


def check_scope_pattern(scope: str) -> str:
    """A scope as stored: stripped, and a valid host pattern (or empty: every host)."""
    scope = scope.strip()
    if scope:
        try:
            split_pattern(scope)
        except EasyTaskError as exc:
            raise APIError(f"scope: {exc}") from exc
    return scope


async def scope_hosts(services: Services, user: User) -> frozenset[str] | None:
    """The hosts a user's scope selects now (None: the user has no scope, every host)."""
    if not user.scope:
        return None
    inventory = await services.merged_inventory()
    try:
        return frozenset(inventory.select(user.scope))
    except EasyTaskError as exc:  # a scope that matches nothing allows nothing
        log.info("scope %r of user %s selects no host: %s", user.scope, user.name, exc)
        return frozenset()


async def outside_scope(services: Services, user: User, hosts: Sequence[str]) -> list[str]:
    """The hosts a user may not run on (none when the user has no scope)."""
    allowed = await scope_hosts(services, user)
    if allowed is None:
        return []
    return [host for host in dict.fromkeys(hosts) if host not in allowed]


async def enforce_scope(
    services: Services, user: User, hosts: Sequence[str], source: str, what: dict[str, object]
) -> None:
    """Refuse the whole submission (403, audited) if any host is outside the user's scope."""
    outside = await outside_scope(services, user, hosts)
    if not outside:
        return
    store = services.store
    await store.call(
        store.audit,
        user.name,
        "job.refused",
        source,
        {**what, "scope": user.scope, "outside": outside},
    )
    named = ", ".join(outside[:SHOWN]) + (
        f" and {len(outside) - SHOWN} more" if len(outside) > SHOWN else ""
    )
    raise APIError(
        f"refused: {len(outside)} host(s) outside your scope {user.scope!r}: {named}", status=403
    )
