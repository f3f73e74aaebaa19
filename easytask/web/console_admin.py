"""The console's admin and auditor pages: users, API tokens, approval rules and the audit log.

Every change goes through the same service functions as the API (audited in the same
transaction); the forms carry the session's CSRF token like every console form."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from easytask.errors import APIError, EasyTaskError
from easytask.inventory import Inventory
from easytask.masking import MASK, Masker
from easytask.service import approvalrules, users
from easytask.service.context import Services
from easytask.service.scope import check_scope_pattern
from easytask.store.models import AuditEvent, Run, User, as_utc
from easytask.vault import VaultText
from easytask.web.api_admin import event_dict
from easytask.web.auth import ROLES, hash_password
from easytask.web.console import Console
from easytask.web.errors import PageError
from easytask.web.requests import ApiRequests, id_number
from easytask.web.runfilter import parse_time
from easytask.web.users import NAME_RE, checked_password, checked_token_name, checked_ttl

ADMIN = ("admin",)
AUDIT = ("admin", "auditor")
AUDIT_PAGE = 50
AUDIT_BATCH = 500
AUDIT_SCAN = 20_000  # rows read at most for one page of a text or "until" filter
EXPORT_MAX = 5000


SECRET_NAME = re.compile(r"pass|secret|token|private_key", re.IGNORECASE)
INVENTORY_HOSTS = 2000  # hosts listed at most on the inventory page


def vault_strings(value: Any) -> list[str]:
    """Every vault value inside a variable's value."""
    if isinstance(value, VaultText):
        return [str(value)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in vault_strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in vault_strings(v)]
    return []


def shown_value(name: str, value: Any, masker: Masker) -> tuple[str, bool]:
    """A variable's value as the inventory page shows it, and whether it was masked: a vault
    value, or a variable named like a password, secret or token, is `****`; any vault value's
    text inside another value is masked too."""
    if isinstance(value, VaultText) or (SECRET_NAME.search(name) and value not in (None, "")):
        return MASK, True
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    masked = masker(text)
    return masked, masked != text


def var_rows(values: dict[str, Any], origins: dict[str, str]) -> list[dict[str, Any]]:
    """Variables as rows: name, shown value, masked or not, origin."""
    masker = Masker(s for v in values.values() for s in vault_strings(v))
    rows = []
    for key in sorted(values):
        text, masked = shown_value(str(key), values[key], masker)
        rows.append({"name": key, "value": text, "masked": masked, "origin": origins.get(key, "")})
    return rows


def connection_of(values: dict[str, Any]) -> str:
    """How a host without an agent is reached, as its variables say."""
    return str(values.get("easytask_connection") or values.get("ansible_connection") or "ssh")


def reach_text(run: Run | None) -> str:
    """An agentless host's last contact, from its newest run made without an agent."""
    if run is None:
        return "no run yet"
    at = as_utc(run.finished_at or run.started_at or run.created_at)
    when = at.strftime("%Y-%m-%d %H:%M:%S") if at else ""
    if run.state == "unreachable":
        word = "unreachable"
    elif run.state in ("queued", "dispatched"):
        word = f"not tried yet ({run.state})"
    else:
        word = f"reached ({run.state})"
    return f"{word} {when} (run {run.id})"


def one_time_password() -> str:
    """A password for a new or reset account, shown once to the admin."""
    return secrets.token_urlsafe(12)


def _source(request: Request) -> str:
    return f"console {request.client.host if request.client else '?'}"


class AuditFilter:
    """The audit page's filters from its query string (a bad one: 400 naming it)."""

    def __init__(self, request: Request) -> None:
        q = request.query_params
        self.actor = (q.get("actor") or "").strip()
        self.action = (q.get("action") or "").strip()
        self.since_text = (q.get("since") or "").strip()
        self.until_text = (q.get("until") or "").strip()
        self.text = (q.get("q") or "").strip()
        try:
            self.since = parse_time(self.since_text)
            self.until = parse_time(self.until_text)
            self.before = id_number(q["before"], "before") if q.get("before") else None
        except (APIError, ValueError) as exc:
            raise PageError(str(exc), status=400) from exc

    def query(self, **extra: Any) -> str:
        """The filters as a query string (empty ones left out), with `extra` added."""
        fields = {
            "actor": self.actor,
            "action": self.action,
            "since": self.since_text,
            "until": self.until_text,
            "q": self.text,
            **extra,
        }
        return urlencode({k: v for k, v in fields.items() if v not in ("", None)})

    def keeps(self, event: AuditEvent) -> bool:
        """The filters the store does not apply: before a time, text anywhere in the event."""
        if self.until is not None and as_utc(event.at) > self.until:
            return False
        if self.text:
            haystack = " ".join((event.actor, event.action, event.source, event.detail)).lower()
            return self.text.lower() in haystack
        return True


class AdminPages:
    """/admin/users, /admin/tokens (admin) and /audit (admin, auditor)."""

    def __init__(self, services: Services, console: Console, api: ApiRequests) -> None:
        self.services = services
        self.console = console
        self.api = api

    def _changed(self, user: User | None) -> None:
        """A user or token changed: cached sign-ins must look again."""
        self.api.forget_tokens()
        if user is not None:
            self.console.auth.forget_user(user.id)

    # -- users ------------------------------------------------------------------------------

    async def users_page(
        self, request: Request, user: User, status: int = 200, **extra: Any
    ) -> Response:
        """GET /admin/users: every user, the add form and each user's change forms."""
        store = self.services.store
        rows = await store.call(store.list_users)
        context: dict[str, Any] = {"error": "", "shown": None, "form": {}}
        context.update(extra)
        return self.console.render(
            request,
            user,
            "admin_users.html",
            status=status,
            section="admin-users",
            users=rows,
            roles=ROLES,
            **context,
        )

    async def user_create(self, request: Request, user: User) -> Response:
        """POST /admin/users: name, role, scope, password (blank: a one-time one, shown once)."""
        form = await self.console.form(request)
        name = (form.get("name") or "").strip()
        role = form.get("role") or "viewer"
        try:
            if not NAME_RE.match(name):
                raise APIError(
                    "name must be 1-64 letters, digits or . _ @ - (starting with a letter or digit)"
                )
            if role not in ROLES:
                raise APIError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
            scope = check_scope_pattern(form.get("scope") or "")
            given = form.get("password") or ""
            password = checked_password(given) if given else one_time_password()
            password_hash = await asyncio.to_thread(hash_password, password)
            await users.create_user(
                self.services, user.name, _source(request), name, role, password_hash, scope
            )
        except APIError as exc:
            return await self.users_page(
                request, user, status=exc.status, error=str(exc), form=dict(form)
            )
        shown = {"user": name, "password": "" if given else password, "reset": False}
        return await self.users_page(request, user, shown=shown)

    async def user_update(self, request: Request, user: User) -> Response:
        """POST /admin/users/{name}: role and scope."""
        name = request.path_params["name"]
        form = await self.console.form(request)
        role = form.get("role") or ""
        if role not in ROLES:
            raise PageError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
        scope = check_scope_pattern(form.get("scope") or "")
        fields = {"role": role, "scope": scope}
        changed = await users.update_user(
            self.services, user.name, _source(request), name, fields, {"user": name, **fields}
        )
        self._changed(changed)
        return RedirectResponse("/admin/users", status_code=303)

    async def user_switch(self, request: Request, user: User) -> Response:
        """POST /admin/users/{name}/disable|enable."""
        name = request.path_params["name"]
        action = request.path_params["action"]
        if action not in ("disable", "enable"):
            raise PageError("not found", status=404)
        disabled = action == "disable"
        if disabled and name == user.name:
            raise PageError("you cannot disable your own account", status=409)
        changed = await users.update_user(
            self.services,
            user.name,
            _source(request),
            name,
            {"disabled": disabled},
            {"user": name, "disabled": disabled},
        )
        self._changed(changed)
        return RedirectResponse("/admin/users", status_code=303)

    async def user_password(self, request: Request, user: User) -> Response:
        """POST /admin/users/{name}/password: set the given one, or a one-time one shown once."""
        name = request.path_params["name"]
        if name == user.name:
            raise PageError(
                "set your own password with `easytask passwd` (it asks for the current one)",
                status=409,
            )
        form = await self.console.form(request)
        given = form.get("password") or ""
        password = checked_password(given) if given else one_time_password()
        password_hash = await asyncio.to_thread(hash_password, password)
        changed = await users.update_user(
            self.services,
            user.name,
            _source(request),
            name,
            {"password_hash": password_hash},
            {"user": name, "password": "reset"},
        )
        self._changed(changed)
        shown = {"user": name, "password": "" if given else password, "reset": True}
        return await self.users_page(request, user, shown=shown)

    # -- tokens -----------------------------------------------------------------------------

    async def tokens_page(
        self, request: Request, user: User, status: int = 200, **extra: Any
    ) -> Response:
        """GET /admin/tokens: every API token (never its secret) and the create form."""
        store = self.services.store
        rows = await store.call(store.list_api_tokens, None)
        names = [u.name for u in await store.call(store.list_users) if not u.disabled]
        context: dict[str, Any] = {"error": "", "secret": None, "form": {}}
        context.update(extra)
        return self.console.render(
            request,
            user,
            "admin_tokens.html",
            status=status,
            section="admin-tokens",
            tokens=[
                {
                    "id": row.id,
                    "name": row.name,
                    "owner": owner,
                    "created": row.created_at,
                    "expires": row.expires_at,
                    "last_used": row.last_used,
                    "revoked": row.revoked,
                }
                for row, owner in rows
            ],
            owners=names,
            **context,
        )

    async def token_create(self, request: Request, user: User) -> Response:
        """POST /admin/tokens: owner, name, ttl; the token is shown once."""
        form = await self.console.form(request)
        try:
            owner = (form.get("user") or user.name).strip()
            name = checked_token_name(form.get("name"), "console")
            ttl = checked_ttl(form.get("ttl"))
            secret, row = await users.issue_token(
                self.services, user.name, _source(request), owner, name, ttl
            )
        except APIError as exc:
            return await self.tokens_page(
                request, user, status=exc.status, error=str(exc), form=dict(form)
            )
        shown = {"secret": secret, "id": row.id, "name": row.name, "owner": owner}
        return await self.tokens_page(request, user, secret=shown)

    async def token_revoke(self, request: Request, user: User) -> Response:
        """POST /admin/tokens/{token_id}/revoke."""
        token_id = self.console.int_param(request, "token_id")
        await users.revoke_token(self.services, user, _source(request), token_id)
        self._changed(None)
        return RedirectResponse("/admin/tokens", status_code=303)

    # -- approval rules -----------------------------------------------------------------------

    async def rules_page(
        self, request: Request, user: User, status: int = 200, **extra: Any
    ) -> Response:
        """GET /admin/approval-rules: the rules (the server's setting read-only) and the add
        form."""
        context: dict[str, Any] = {"error": "", "form": {}}
        context.update(extra)
        return self.console.render(
            request,
            user,
            "admin_rules.html",
            status=status,
            section="admin-rules",
            rules=await approvalrules.list_rules(self.services),
            **context,
        )

    async def rule_create(self, request: Request, user: User) -> Response:
        """POST /admin/approval-rules: pattern, note (a bad pattern: shown on the form, 400)."""
        form = await self.console.form(request)
        data = {"pattern": form.get("pattern") or "", "note": form.get("note") or ""}
        try:
            await approvalrules.add_rule(self.services, user, _source(request), data)
        except APIError as exc:
            return await self.rules_page(
                request, user, status=exc.status, error=str(exc), form=dict(form)
            )
        return RedirectResponse("/admin/approval-rules", status_code=303)

    async def rule_action(self, request: Request, user: User) -> Response:
        """POST /admin/approval-rules/{rule_id}/pause|resume|delete."""
        rule_id = request.path_params["rule_id"]
        action = request.path_params["action"]
        try:
            if action == "delete":
                await approvalrules.remove_rule(self.services, user, _source(request), rule_id)
            elif action in ("pause", "resume"):
                await approvalrules.pause_rule(
                    self.services, user, _source(request), rule_id, {"paused": action == "pause"}
                )
            else:
                raise PageError("not found", status=404)
        except APIError as exc:
            raise PageError(str(exc), status=exc.status) from exc
        return RedirectResponse("/admin/approval-rules", status_code=303)

    # -- audit log ----------------------------------------------------------------------------

    async def _events(self, flt: AuditFilter, want: int) -> tuple[list[AuditEvent], bool]:
        """Up to `want` events matching the filters, newest first, and whether more may follow."""
        store = self.services.store
        found: list[AuditEvent] = []
        before = flt.before
        scanned = 0
        while len(found) <= want and scanned < AUDIT_SCAN:
            batch = await store.call(
                store.audit_events,
                since=flt.since,
                action=flt.action or None,
                actor=flt.actor or None,
                before_id=before,
                limit=AUDIT_BATCH,
            )
            scanned += len(batch)
            found.extend(e for e in batch if flt.keeps(e))
            if len(batch) < AUDIT_BATCH:
                return found[:want], len(found) > want
            before = batch[-1].id
        return found[:want], len(found) > want or scanned >= AUDIT_SCAN

    async def audit_page(self, request: Request, user: User) -> Response:
        """GET /audit: filtered events (paged by id), the chain's verify status, export link."""
        flt = AuditFilter(request)
        events, more = await self._events(flt, AUDIT_PAGE)
        verified = await self.services.audit_anchor.status()
        rows = [
            {
                "id": e.id,
                "at": as_utc(e.at),
                "actor": e.actor,
                "action": e.action,
                "source": e.source,
                "detail": json.dumps(json.loads(e.detail), sort_keys=True),
            }
            for e in events
        ]
        older = flt.query(before=events[-1].id) if more and events else ""
        return self.console.render(
            request,
            user,
            "audit.html",
            section="audit",
            flt=flt,
            rows=rows,
            older=older,
            newest=flt.query() if flt.before else None,
            export=flt.query(),
            verified=verified,
        )

    async def audit_verify(self, request: Request, user: User) -> Response:
        """POST /audit/verify: walk the whole chain now (as `GET /api/audit/verify`), then show
        the audit page with what it found."""
        await self.services.audit_anchor.verify()
        return RedirectResponse("/audit", status_code=303)

    async def audit_export(self, request: Request, user: User) -> Response:
        """GET /audit/export: the filtered events as `/api/audit` gives them (a JSON download)."""
        flt = AuditFilter(request)
        events, _ = await self._events(flt, EXPORT_MAX)
        stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
        return Response(
            json.dumps({"events": [event_dict(e) for e in events]}, indent=1),
            media_type="application/json",
            headers={
                "content-disposition": f'attachment; filename="easytask-audit-{stamp}.json"',
                "cache-control": "no-store",
            },
        )

    # -- inventory ----------------------------------------------------------------------------

    async def inventory_page(self, request: Request, user: User) -> Response:
        """GET /admin/inventory: groups and hosts; `?host=` a host's variables with where each
        comes from, `?group=` a group's own; secret values masked."""
        try:
            inventory: Inventory = await asyncio.to_thread(self.services.inventory.now)
        except EasyTaskError as exc:
            raise PageError(f"the inventory does not load: {exc}", status=500) from exc
        store = self.services.store
        agents = {row.name for row in await store.call(store.list_agents)}
        names = list(inventory.hosts)[:INVENTORY_HOSTS]
        agentless = [n for n in names if n not in agents]
        last = await store.call(store.agentless_last_runs, agentless)
        hosts = [
            {
                "name": n,
                "groups": [g for g in inventory.host_groups(n) if g != "all"],
                "agent": n in agents,
                "connection": "agent" if n in agents else connection_of(inventory.host_vars(n)),
                "reach": "" if n in agents else reach_text(last.get(n)),
            }
            for n in names
        ]
        groups = [
            {
                "name": g.name,
                "parents": g.parents,
                "children": g.children,
                "hosts": len(inventory.group_hosts(g.name)),
                "vars": len(inventory.group_vars(g.name)),
            }
            for g in inventory.groups.values()
        ]
        q = request.query_params
        host_name = (q.get("host") or "").strip()
        group_name = (q.get("group") or "").strip()
        detail: dict[str, Any] | None = None
        if host_name:
            if host_name not in inventory.hosts:
                raise PageError(f"no host {host_name!r} in the inventory", status=404)
            detail = {
                "kind": "host",
                "name": host_name,
                "vars": var_rows(
                    inventory.host_vars(host_name), inventory.host_var_origins(host_name)
                ),
            }
        elif group_name:
            if group_name not in inventory.groups:
                raise PageError(f"no group {group_name!r} in the inventory", status=404)
            values = inventory.group_vars(group_name)
            detail = {
                "kind": "group",
                "name": group_name,
                "vars": var_rows(values, {k: f"group {group_name}" for k in values}),
            }
        return self.console.render(
            request,
            user,
            "admin_inventory.html",
            section="admin-inventory",
            hosts=hosts,
            more=max(0, len(inventory.hosts) - len(names)),
            groups=groups,
            detail=detail,
            sources=inventory.sources,
        )

    def routes(self) -> list[Route]:
        """The admin and audit routes."""
        page = self.console.page
        return [
            Route("/admin/users", page(self.users_page, ADMIN), methods=["GET"]),
            Route("/admin/users", page(self.user_create, ADMIN), methods=["POST"]),
            Route("/admin/users/{name}", page(self.user_update, ADMIN), methods=["POST"]),
            Route(
                "/admin/users/{name}/password",
                page(self.user_password, ADMIN),
                methods=["POST"],
            ),
            Route(
                "/admin/users/{name}/{action}",
                page(self.user_switch, ADMIN),
                methods=["POST"],
            ),
            Route("/admin/tokens", page(self.tokens_page, ADMIN), methods=["GET"]),
            Route("/admin/tokens", page(self.token_create, ADMIN), methods=["POST"]),
            Route(
                "/admin/tokens/{token_id}/revoke",
                page(self.token_revoke, ADMIN),
                methods=["POST"],
            ),
            Route("/admin/inventory", page(self.inventory_page, ADMIN)),
            Route("/admin/approval-rules", page(self.rules_page, ADMIN), methods=["GET"]),
            Route("/admin/approval-rules", page(self.rule_create, ADMIN), methods=["POST"]),
            Route(
                "/admin/approval-rules/{rule_id}/{action}",
                page(self.rule_action, ADMIN),
                methods=["POST"],
            ),
            Route("/audit", page(self.audit_page, AUDIT)),
            Route("/audit/export", page(self.audit_export, AUDIT)),
            Route("/audit/verify", page(self.audit_verify, AUDIT), methods=["POST"]),
        ]
