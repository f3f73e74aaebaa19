"""Agent use cases: accept or revoke an agent, issue enrolment tokens."""

from __future__ import annotations

from easytask.errors import APIError
from easytask.service.context import Services
from easytask.store.audit import AuditNote
from easytask.store.models import Agent, AgentState

ACTIONS = {"accept": AgentState.ACCEPTED, "revoke": AgentState.REVOKED}


async def set_agent_state(
    services: Services, actor: str, source: str, name: str, action: str
) -> Agent:
    """Accept or revoke an agent (`action` is accept or revoke); its row after the change."""
    state = ACTIONS.get(action)
    if state is None:
        raise APIError(f"unknown action {action!r}", status=404)
    note = AuditNote(actor, f"agent.{action}", source, {"agent": name})
    row = await services.registry.set_state(name, state, note)  # its fingerprint added
    if row is None:
        raise APIError(f"no agent {name!r}", status=404)
    return row


async def create_enroll_token(
    services: Services, actor: str, source: str, uses: int, ttl: float | None
) -> str:
    """A new enrolment token for `uses` agents, valid `ttl` seconds (None: no end)."""
    if uses < 1:
        raise APIError("uses must be at least 1")
    store = services.store
    note = AuditNote(actor, "agent.token", source, {"uses": uses, "ttl": ttl})
    return await store.call(store.create_enroll_token, uses, ttl, actor, note)
