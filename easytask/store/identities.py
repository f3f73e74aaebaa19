"""Agents, enrolment tokens, users, API tokens and console sessions; a part of `Store`."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from itertools import groupby
from operator import itemgetter
from typing import Any, TypeVar

from sqlalchemy import bindparam
from sqlalchemy import select as sa_select
from sqlmodel import SQLModel, col, func, select

from easytask.errors import Conflict
from easytask.store import audit as audit_chain
from easytask.store.audit import AuditNote
from easytask.store.base import Queries
from easytask.store.models import (
    Agent,
    AgentState,
    ApiToken,
    EnrollToken,
    RevokedSession,
    User,
    as_utc,
    utcnow,
)
from easytask.store.statements import update_by_id

M = TypeVar("M", bound=SQLModel)

AGENT: Any = Agent.__table__  # type: ignore[attr-defined]
# locked in one order (by id), so two servers' batches never wait on each other in a circle
AGENTS_BY_NAMES = (
    sa_select(AGENT)
    .where(AGENT.c.name.in_(bindparam("names", expanding=True)))
    .order_by(AGENT.c.id)
    .with_for_update()
)
# a change's condition, not a field: its fields are written only while the record says this
# server holds the agent's link (a link lost here after the agent moved on leaves it alone)
HELD_BY = "held_by"
# (name, audit event or events or None, fields): one change of `IdentityQueries.update_agents`
AgentChange = tuple[str, AuditNote | Sequence[AuditNote] | None, dict[str, Any]]


def _update_agent(names: tuple[str, ...]) -> Any:
    """UPDATE agent SET each of `names` WHERE id = :agent_id; values bound as `new_NAME`."""
    return update_by_id(AGENT, "agent_id", names)


def hash_secret(secret: str) -> str:
    """The at-rest form of a token: its SHA-256 (tokens are long and random)."""
    return hashlib.sha256(secret.encode()).hexdigest()


class InvalidToken(ValueError):
    """An enrolment token that is unknown, spent or expired (nothing was changed)."""


class IdentityQueries(Queries):
    """The Store's queries on who may connect and act (mixed into `Store`; database thread)."""

    def list_agents(self) -> list[Agent]:
        """All agents, by name."""
        with self.session() as s:
            return list(s.exec(select(Agent).order_by(col(Agent.name))))

    def get_agent(self, name: str) -> Agent | None:
        """One agent by name."""
        with self.session() as s:
            return s.exec(select(Agent).where(Agent.name == name)).first()

    def get_agents(self, names: list[str]) -> dict[str, Agent]:
        """The agents of these names that exist, by name (a few hundred per query)."""
        found: dict[str, Agent] = {}
        with self.engine.connect() as conn:
            for i in range(0, len(names), 500):
                rows = conn.execute(AGENTS_BY_NAMES, {"names": names[i : i + 500]}).mappings()
                found.update((str(row["name"]), Agent(**row)) for row in rows)
        return found

    def count_pending(self, address: str) -> int:
        """How many pending agent requests came last from `address`."""
        with self.session() as s:
            query = select(func.count()).where(
                Agent.state == AgentState.PENDING, Agent.address == address
            )
            return int(s.exec(query).one())

    def register_agent(
        self,
        name: str,
        fingerprint: str,
        public_key: str,
        state: str,
        *,
        replace_revoked: bool = False,
        create: bool = True,
        token: str | None = None,
        audit: Sequence[AuditNote] = (),
        **fields: Any,
    ) -> Agent | None:
        """Create an agent's identity, or update the one its key already holds. A name stays
        bound to the key that first claimed it: another key gets None (refused), except on a
        revoked name with `replace_revoked` (a re-enrolment, checked here in one transaction).
        An admin's decision is never undone by a hello read before it: a key's own record,
        if accepted, stays accepted; if revoked, the hello gets None and nothing changes.
        Without `create`, only an existing record is updated: None when there is none (it was
        deleted since the caller read it, and a delete wins over a hello in progress).

        With `token`, one use of that enrolment token is spent in the same transaction
        (`InvalidToken` if it is unknown, spent or expired: nothing changes), unless the key
        is already accepted under this name; `audit`: the
        events of the change, in order, also in it (the agent's fingerprint added to each)."""
        with self.session() as s:
            agent = s.exec(select(Agent).where(Agent.name == name)).first()
            # a key already accepted under this name spends no token (another server enrolled
            # it a moment ago)
            enrolled = (
                agent is not None
                and agent.fingerprint == fingerprint
                and agent.state == AgentState.ACCEPTED
            )
            if token is not None and not enrolled and not self._spend_token(s, token):
                raise InvalidToken("the enrolment token is unknown, spent or expired")
            if agent is None and not create:
                return None
            if agent is None:
                agent = Agent(name=name, fingerprint=fingerprint, public_key=public_key)
            elif agent.fingerprint != fingerprint:
                if not (replace_revoked and agent.state == AgentState.REVOKED):
                    return None
                agent.fingerprint = fingerprint
                agent.public_key = public_key
                agent.approved_groups = ""  # approvals were given to the old key
            elif agent.state == AgentState.REVOKED:  # revoked since the hello was read
                return None
            elif agent.state == AgentState.ACCEPTED:  # accepted since: a hello never undoes it
                state = agent.state
            if agent.state != state:
                agent.state = state
                agent.state_since = utcnow()
            for key, value in fields.items():
                setattr(agent, key, value)
            s.add(agent)
            for note in audit:
                audit_chain.append_note(s.connection(), note, fingerprint=agent.fingerprint)
            s.commit()
            s.refresh(agent)
            return agent

    def set_agent_state(
        self, name: str, state: str, audit: AuditNote | None, fingerprint: str | None = None
    ) -> Agent | None:
        """Accept or revoke an agent, its audit event (with the fingerprint decided on) in the
        same transaction; None when there is no such agent. With `fingerprint`, the stored key
        must be that one, else `Conflict` and nothing changes."""
        with self.session() as s:
            agent = s.exec(select(Agent).where(Agent.name == name)).first()
            if agent is None:
                return None
            if fingerprint is not None and fingerprint != agent.fingerprint:
                raise Conflict(f"agent {name!r} holds key {agent.fingerprint}, not {fingerprint}")
            if state != agent.state:
                agent.state = state
                agent.state_since = utcnow()
            s.add(agent)
            notes = [audit] if audit is None or isinstance(audit, AuditNote) else audit
            for note in notes:
                audit_chain.append_note(s.connection(), note, fingerprint=agent.fingerprint)
            s.commit()
            s.refresh(agent)
            return agent

    def set_agent_groups(
        self,
        name: str,
        groups: list[str],
        approve: bool,
        audit: AuditNote | None,
        fingerprint: str | None = None,
    ) -> Agent | None:
        """Approve group labels of an agent (`approve`), or withdraw approved ones, its audit
        event (with the key and the approved labels after) in the same transaction; None when
        there is no such agent. Only labels the agent reports may be approved and only
        approved ones withdrawn, else `Conflict`; with `fingerprint` the stored key must be
        that one. Nothing changes on a `Conflict`."""
        with self.session() as s:
            # the row is locked (PostgreSQL) so two admins' changes both count
            agent = s.exec(select(Agent).where(Agent.name == name).with_for_update()).first()
            if agent is None:
                return None
            if fingerprint is not None and fingerprint != agent.fingerprint:
                raise Conflict(f"agent {name!r} holds key {agent.fingerprint}, not {fingerprint}")
            reported = [g for g in agent.groups.split(",") if g]
            approved = [g for g in agent.approved_groups.split(",") if g]
            if approve:
                unknown = [g for g in groups if g not in reported]
                if unknown:
                    raise Conflict(
                        f"agent {name!r} does not report label(s) {', '.join(unknown)} "
                        f"(it reports: {', '.join(reported) or 'none'})"
                    )
                approved = sorted({*approved, *groups})
            else:
                unknown = [g for g in groups if g not in approved]
                if unknown:
                    raise Conflict(
                        f"label(s) {', '.join(unknown)} of agent {name!r} are not approved "
                        f"(approved: {', '.join(approved) or 'none'})"
                    )
                approved = [g for g in approved if g not in groups]
            agent.approved_groups = ",".join(approved)
            s.add(agent)
            audit_chain.append_note(
                s.connection(), audit, fingerprint=agent.fingerprint, approved=approved
            )
            s.commit()
            s.refresh(agent)
            return agent

    def delete_agent(self, name: str, audit: AuditNote | None = None) -> Agent | None:
        """Delete an agent's record with its audit event in the same transaction; the deleted
        row, or None when there is none."""
        with self.session() as s:
            agent = s.exec(select(Agent).where(Agent.name == name)).first()
            if agent is None:
                return None
            if agent.state == AgentState.ACCEPTED and agent.connected:
                raise Conflict(f"agent {name!r} is connected: revoke it first")
            s.delete(agent)
            audit_chain.append_note(s.connection(), audit, fingerprint=agent.fingerprint)
            s.commit()
            return agent

    def update_agent(
        self, name: str, audit: AuditNote | Sequence[AuditNote] | None = None, **fields: Any
    ) -> Agent | None:
        """Change some fields of an agent; with `audit`, its audit event (or events, in order) in
        the same transaction (the agent's fingerprint added to each detail)."""
        return self.update_agents([(name, audit, fields)])[0]

    def update_agents(self, changes: Sequence[AgentChange]) -> list[Agent | None]:
        """`update_agent` for many changes (name, audit, fields) in one transaction, in order:
        each agent as stored after its change (None: no such record, nothing written). Every
        change's audit events are in that transaction, the audit chain's lock and tail taken
        once for them all.

        Plain statements, no ORM unit of work: every agent coming online or going away makes
        one, and a fleet reconnecting after a restart makes thousands within a minute (its
        admissions go together, see `AgentRegistry.admit`). A change with `HELD_BY: server`
        writes its fields only while the record says that server holds the agent's link (its
        audit events are written either way: they say what happened there)."""
        out: list[Agent | None] = []
        with self.engine.begin() as conn:
            names = sorted({name for name, _, _ in changes})
            rows = {
                str(r["name"]): dict(r)
                for r in conn.execute(AGENTS_BY_NAMES, {"names": names}).mappings()
            }
            updates: list[tuple[tuple[str, ...], dict[str, Any]]] = []
            notes: list[tuple[AuditNote, dict[str, Any]]] = []
            for name, audit, fields in changes:
                row = rows.get(name)
                if row is None:
                    out.append(None)
                    continue
                values = dict(fields)
                if values.pop(HELD_BY, row["server"]) != row["server"]:
                    values = {}  # another server holds its link now: the record is theirs
                changed = any(
                    key in values and values[key] != row[key] for key in ("state", "connected")
                )
                if changed and "state_since" not in values:
                    values["state_since"] = utcnow()
                if values:
                    bound = {f"new_{key}": value for key, value in values.items()}
                    updates.append((tuple(sorted(values)), {"agent_id": row["id"], **bound}))
                row.update(values)  # a later change of the same agent in this batch sees it
                out.append(Agent(**row))
                listed = [audit] if audit is None or isinstance(audit, AuditNote) else audit
                notes += [(n, {"fingerprint": row["fingerprint"]}) for n in listed if n]
            # the same fields changed, one statement for many rows (in order)
            for keys, same in groupby(updates, key=itemgetter(0)):
                conn.execute(_update_agent(keys), [params for _, params in same])
            audit_chain.append_notes(conn, notes)
        return out

    def disconnect_all_agents(self, server: str) -> None:
        """Mark every agent held by this server as not connected (used at start and stop).

        One statement: after a crash every agent of the fleet is still marked connected here."""
        with self.engine.begin() as conn:
            conn.execute(
                AGENT.update()
                .where(AGENT.c.server == server, AGENT.c.connected)
                .values(connected=False, state_since=utcnow())
            )

    def create_enroll_token(
        self, uses: int, ttl: float | None, created_by: str, audit: AuditNote | None = None
    ) -> str:
        """Create an enrolment token and return it (only its hash is kept); with `audit`, its
        audit event in the same transaction."""
        token = "et_enroll_" + secrets.token_urlsafe(24)
        expires = utcnow() + timedelta(seconds=ttl) if ttl else None
        with self.session() as s:
            s.add(
                EnrollToken(
                    token_hash=hash_secret(token),
                    uses_left=uses,
                    expires_at=expires,
                    created_by=created_by,
                )
            )
            audit_chain.append_note(s.connection(), audit)
            s.commit()
        return token

    def consume_enroll_token(self, token: str) -> bool:
        """Use up one use of an enrolment token; False if unknown, spent or expired."""
        with self.session() as s:
            if not self._spend_token(s, token):
                return False
            s.commit()
            return True

    @staticmethod
    def _spend_token(s: Any, token: str) -> bool:
        """Take one use of an enrolment token in the session's transaction (not committed)."""
        row = s.exec(
            select(EnrollToken).where(EnrollToken.token_hash == hash_secret(token))
        ).first()
        if row is None or row.uses_left <= 0:
            return False
        expires = as_utc(row.expires_at)
        if expires is not None and expires < utcnow():
            return False
        row.uses_left -= 1
        s.add(row)
        return True

    def ensure_user(self, name: str, role: str) -> User:
        """Return the user, creating it if needed."""
        with self.session() as s:
            user = s.exec(select(User).where(User.name == name)).first()
            if user is None:
                user = User(name=name, role=role)
                s.add(user)
                s.commit()
                s.refresh(user)
            return user

    def set_password_hash(self, name: str, password_hash: str) -> None:
        """Store a user's password hash."""
        with self.session() as s:
            user = s.exec(select(User).where(User.name == name)).one()
            user.password_hash = password_hash
            s.add(user)
            s.commit()

    def create_api_token(self, user_name: str, name: str, ttl: float | None = None) -> str:
        """Create an API token for a user and return it (only its hash is kept)."""
        return self.issue_api_token(user_name, name, ttl)[0]

    def issue_api_token(
        self, user_name: str, name: str, ttl: float | None = None, audit: AuditNote | None = None
    ) -> tuple[str, ApiToken]:
        """Create an API token for a user: the secret (shown once) and its stored row; with
        `audit`, its audit event in the same transaction (the token's id added to its detail)."""
        token = "et_" + secrets.token_urlsafe(32)
        with self.session() as s:
            user = s.exec(select(User).where(User.name == user_name)).one()
            assert user.id is not None
            expires = utcnow() + timedelta(seconds=ttl) if ttl else None
            row = ApiToken(
                name=name, token_hash=hash_secret(token), user_id=user.id, expires_at=expires
            )
            s.add(row)
            if audit is not None:
                s.flush()
                audit_chain.append_note(s.connection(), audit, token=row.id)
            s.commit()
            s.refresh(row)
        return token, row

    def list_api_tokens(self, user_name: str | None = None) -> list[tuple[ApiToken, str]]:
        """API tokens with their owner's name, oldest first; one user's only when named."""
        with self.session() as s:
            q = select(ApiToken, User.name).join(User, col(User.id) == col(ApiToken.user_id))
            if user_name is not None:
                q = q.where(User.name == user_name)
            return [(row, owner) for row, owner in s.exec(q.order_by(col(ApiToken.id)))]

    def revoke_api_token(
        self, token_id: int, audit: AuditNote | None = None
    ) -> tuple[ApiToken, str] | None:
        """Mark a token revoked; its row and owner, or None if there is no such token. With
        `audit`, its audit event in the same transaction (the token's id, name and owner added
        to its detail)."""
        with self.session() as s:
            row = s.get(ApiToken, token_id)
            if row is None:
                return None
            row.revoked = True
            s.add(row)
            user = s.get(User, row.user_id)
            owner = user.name if user else ""
            audit_chain.append_note(
                s.connection(), audit, token=token_id, name=row.name, user=owner
            )
            s.commit()
            s.refresh(row)
            return row, owner

    def update_user(self, name: str, audit: AuditNote | None = None, **fields: Any) -> User | None:
        """Change a user's role, scope, disabled flag or password hash; None if unknown. A new
        password hash revokes every API token of the user in the same transaction. With `audit`,
        its audit event in the same transaction too (with a new password, how many tokens
        were revoked)."""
        if "password_hash" not in fields:
            return self.update_named(User, name, fields, audit)
        with self.session() as s:
            user = s.exec(select(User).where(User.name == name)).first()
            if user is None:
                return None
            for key, value in fields.items():
                setattr(user, key, value)
            s.add(user)
            live = select(ApiToken).where(
                ApiToken.user_id == user.id, col(ApiToken.revoked).is_(False)
            )
            ended = 0
            for row in s.exec(live):
                row.revoked = True
                s.add(row)
                ended += 1
            audit_chain.append_note(s.connection(), audit, tokens_revoked=ended)
            s.commit()
            s.refresh(user)
            return user

    def user_for_token(self, token: str) -> User | None:
        """The user a valid API token belongs to, recording its use."""
        with self.session() as s:
            row = s.exec(select(ApiToken).where(ApiToken.token_hash == hash_secret(token))).first()
            if row is None or row.revoked:
                return None
            expires = as_utc(row.expires_at)
            if expires is not None and expires < utcnow():
                return None
            user = s.get(User, row.user_id)
            if user is None or user.disabled:
                return None
            now = utcnow()
            last = as_utc(row.last_used)
            if last is None or (now - last).total_seconds() > 60:
                row.last_used = now
                s.add(row)
                s.commit()
            return user

    def revoke_session(self, sid: str, expires_at: datetime) -> None:
        """Refuse a console session id from now on (every server, after restarts too)."""
        from sqlalchemy import delete

        with self.session() as s:
            s.connection().execute(
                delete(RevokedSession).where(col(RevokedSession.expires_at) < utcnow())
            )
            sid_hash = hash_secret(sid)
            if s.exec(select(RevokedSession).where(RevokedSession.sid_hash == sid_hash)).first():
                s.commit()
                return
            s.add(RevokedSession(sid_hash=sid_hash, expires_at=expires_at))
            s.commit()

    def session_revoked(self, sid: str) -> bool:
        """True if a console session id was ended by logout."""
        with self.session() as s:
            row = s.exec(
                select(RevokedSession.id).where(RevokedSession.sid_hash == hash_secret(sid))
            ).first()
            return row is not None

    def get_user(self, name: str) -> User | None:
        """One user by name."""
        with self.session() as s:
            return s.exec(select(User).where(User.name == name)).first()

    def get_user_by_id(self, user_id: int) -> User | None:
        """One user by id."""
        with self.session() as s:
            return s.get(User, user_id)

    def create_user(
        self,
        name: str,
        role: str,
        password_hash: str,
        scope: str = "",
        audit: AuditNote | None = None,
    ) -> User | None:
        """Create a user; None if the name is taken. With `audit`, its audit event in the same
        transaction."""
        with self.session() as s:
            if s.exec(select(User).where(User.name == name)).first() is not None:
                return None
            user = User(name=name, role=role, password_hash=password_hash, scope=scope)
            s.add(user)
            audit_chain.append_note(s.connection(), audit)
            s.commit()
            s.refresh(user)
            return user

    def list_users(self) -> list[User]:
        """All users, by name."""
        with self.session() as s:
            return list(s.exec(select(User).order_by(col(User.name))))
