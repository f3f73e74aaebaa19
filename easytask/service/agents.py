"""Agent use cases: accept or revoke an agent, approve its group labels, issue enrolment tokens."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from easytask.errors import APIError
from easytask.names import BadName, check_labels
from easytask.scheduler.hello import stored_facts
from easytask.service.context import Services
from easytask.store.audit import AuditNote
from easytask.store.models import Agent, AgentState

ACTIONS = {"accept": AgentState.ACCEPTED, "revoke": AgentState.REVOKED}
MAX_TOKEN_USES = 1_000_000
LABEL_ACTIONS = {"approve": True, "withdraw": False}


@dataclass
class AgentView:
    """An agent as stored, with what this server knows of it now."""

    row: Agent
    status: str  # online, busy, unreachable, pending or revoked
    running: int  # runs it executes for this server
    facts: dict[str, Any]  # as last reported (its heartbeats, when this server holds it)
    labels: list[str]  # the group labels it reports
    approved: list[str]  # the labels an admin approved (reported now or not)
    groups: list[str]  # the labels that place it in groups: approved, or the inventory's
    pending: list[str]  # the labels that place it nowhere until an admin approves them
    busy: str = ""  # why it takes no new work (status busy), e.g. "load 3.1/CPU > 2.0"


async def list_agents(services: Services) -> list[AgentView]:
    """Every agent, by name, with its live status (any server of the database holding it)."""
    store = services.store
    registry = services.registry
    rows = await store.call(store.list_agents)
    live = await services.live_servers()
    inventory = await asyncio.to_thread(services.inventory.now)
    out = []
    for row in rows:
        info = registry.agents.get(row.name)
        labels = [g for g in row.groups.split(",") if g]
        approved = [g for g in row.approved_groups.split(",") if g]
        placed = set(inventory.host_groups(row.name)) if row.name in inventory.hosts else set()
        held = info is not None and info.online  # its heartbeats come here: fresher than stored
        facts = dict(info.facts) if info is not None and held else stored_facts(row.facts)
        status = registry.row_status(row, live)
        out.append(
            AgentView(
                row=row,
                status=status,
                running=info.running if info else 0,
                facts=facts,
                labels=labels,
                approved=approved,
                groups=[g for g in labels if g in approved or g in placed],
                pending=[g for g in labels if g not in approved and g not in placed],
                busy=str(facts.get("busy") or "") if status == "busy" else "",
            )
        )
    return out


def parse_labels(value: Any) -> list[str]:
    """Group labels as a request gives them (a list, or one comma-separated text), each under
    the one name rule; 400 naming the first bad one."""
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",")]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise APIError("groups must be a list of group labels")
    try:
        labels = check_labels([v for v in value if v])
    except BadName as exc:
        raise APIError(str(exc)) from exc
    if not labels:
        raise APIError("groups: name at least one group label")
    return labels


async def set_agent_labels(
    services: Services,
    actor: str,
    source: str,
    name: str,
    action: str,
    groups: Any,
    fingerprint: str | None = None,
) -> Agent:
    """Approve group labels the agent reports (`action` approve), or withdraw approved ones
    (withdraw); its row after the change. Audited as agent.approve or agent.withdraw with the
    labels, the key and the approved labels after, in the same transaction. With
    `fingerprint`, only if the agent holds that key (409 otherwise)."""
    approve = LABEL_ACTIONS.get(action)
    if approve is None:
        raise APIError(f"unknown action {action!r}", status=404)
    labels = parse_labels(groups)
    note = AuditNote(actor, f"agent.{action}", source, {"agent": name, "groups": labels})
    row = await services.registry.set_groups(name, labels, approve, note, fingerprint or None)
    if row is None:
        raise APIError(f"no agent {name!r}", status=404)
    return row


async def set_agent_state(
    services: Services,
    actor: str,
    source: str,
    name: str,
    action: str,
    fingerprint: str | None = None,
) -> Agent:
    """Accept or revoke an agent (`action` is accept or revoke); its row after the change.
    With `fingerprint`, only if the agent holds that key (409 otherwise); the audit event
    records the key decided on either way."""
    state = ACTIONS.get(action)
    if state is None:
        raise APIError(f"unknown action {action!r}", status=404)
    note = AuditNote(actor, f"agent.{action}", source, {"agent": name})
    # its fingerprint is added to the event in the same transaction
    row = await services.registry.set_state(name, state, note, fingerprint or None)
    if row is None:
        raise APIError(f"no agent {name!r}", status=404)
    return row


async def delete_agent(services: Services, actor: str, source: str, name: str) -> Agent:
    """Delete an agent's record (pending, revoked, or accepted and offline), audited; the
    name is then free for the next key that claims it."""
    row = await services.registry.delete(
        name, AuditNote(actor, "agent.delete", source, {"agent": name})
    )
    if row is None:
        raise APIError(f"no agent {name!r}", status=404)
    return row


async def create_enroll_token(
    services: Services, actor: str, source: str, uses: int, ttl: float | None
) -> str:
    """A new enrolment token for `uses` agents, valid `ttl` seconds (None: no end)."""
    if not 1 <= uses <= MAX_TOKEN_USES:
        raise APIError(f"uses must be from 1 to {MAX_TOKEN_USES}")
    if ttl is not None and ttl <= 0:
        raise APIError("ttl must be positive")
    store = services.store
    note = AuditNote(actor, "agent.token", source, {"uses": uses, "ttl": ttl})
    return await store.call(store.create_enroll_token, uses, ttl, actor, note)
