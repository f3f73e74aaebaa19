"""The server's playbooks directory: its files, their problems and their schedules."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from easytask.cron import Cron
from easytask.errors import APIError, EasyTaskError, PlaybookError
from easytask.playbook import PlaybookErrors, load_playbook
from easytask.scheduler.egress import WebhookRefused, WebhookTargets
from easytask.service.context import Services
from easytask.store.serialize import schedule_dict
from easytask.vault import Vault

PLAYBOOK_SUFFIXES = (".yml", ".yaml")


def playbooks_dir(services: Services) -> Path | None:
    """The server's playbooks directory (`--playbooks`), made absolute; None without one."""
    configured = services.settings.playbooks
    return Path(configured).resolve() if configured else None


def playbook_path(services: Services, name: str) -> Path:
    """The file `name` of the playbooks directory; only a plain file name is accepted.

    400 for anything that is not a plain name (`..`, `a/b`, a leading dot), 404 for a name the
    directory does not hold: no request can name a file outside the directory.
    """
    if (
        not name
        or name != Path(name).name
        or name.startswith(".")
        or any(c in name for c in "/\\\x00")
    ):
        raise APIError(f"not a playbook file name: {name!r} (a plain name such as deploy.yml)")
    root = playbooks_dir(services)
    path = root / name if root is not None else None
    if path is None or path.suffix not in PLAYBOOK_SUFFIXES or not path.is_file():
        raise APIError(f"no playbook {name!r} in the server's playbooks directory", status=404)
    return path


def _playbook_files(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(
        p
        for p in root.iterdir()
        if p.suffix in PLAYBOOK_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )


def _playbook_entry(path: Path, webhooks: WebhookTargets, vault: Vault) -> dict[str, Any]:
    """What the listing says about one file: name, hosts, task count, or its errors (a
    `notify:` URL the server's webhook allowlist refuses is one)."""
    entry: dict[str, Any] = {
        "file": path.name,
        "name": None,
        "hosts": None,
        "tasks": None,
        "errors": [],
        "schedule": None,
    }
    try:
        book = load_playbook(path, vault)
    except EasyTaskError as exc:
        problems = exc.errors if isinstance(exc, PlaybookErrors) else (exc,)
        entry["errors"] = [_problem(path, e) for e in problems]
        return entry
    entry.update(name=book.name, hosts=book.hosts, tasks=len(book.tasks))
    for notify in book.notify:
        try:
            webhooks.check(notify.url)
        except WebhookRefused as exc:
            refused = PlaybookError(exc.message, location=book.at("notify"))
            entry["errors"].append(_problem(path, refused))
    return entry


def _problem(path: Path, exc: EasyTaskError) -> dict[str, Any]:
    """One error of a playbook as `file:line:col: message`, with the offending line."""
    at = exc.location
    where = Path(at.path).name if at is not None else path.name
    line = at.line if at is not None else None
    col = at.col if at is not None and line is not None else None
    if line is not None:
        where += f":{line}" + (f":{col}" if col is not None else "")
    return {
        "line": line,
        "col": col,
        "message": exc.message,
        "text": f"{where}: {exc.message}",
        "source": at.source_line() if at is not None else None,
    }


def listed_schedule(row: Any, now: datetime) -> dict[str, Any]:
    """A schedule as listed; an enabled one not yet timed by the scheduler gets its next fire."""
    data = schedule_dict(row)
    if row.enabled and row.next_fire is None:
        try:
            tz = ZoneInfo(row.tz)
            nxt = Cron.parse(row.cron).next_after(now.astimezone(tz), tz)
            data["next_fire"] = nxt.astimezone(UTC).isoformat()
        except (ValueError, KeyError):
            pass  # the scheduler logs what is wrong with it
    return data


async def playbook_listing(services: Services) -> dict[str, Any]:
    """Every playbook of the playbooks directory with its schedule (shared with the console)."""
    root = playbooks_dir(services)
    if root is None:
        return {"dir": None, "playbooks": []}
    await services.scheduler.sync()
    store = services.store
    schedules = {row.path: row for row in await store.call(store.list_schedules)}

    def read() -> list[tuple[dict[str, Any], str]]:
        return [
            (_playbook_entry(p, services.webhooks, services.vault), str(p.resolve()))
            for p in _playbook_files(root)
        ]

    now = datetime.now(UTC)
    out = []
    for entry, resolved in await asyncio.to_thread(read):
        row = schedules.get(resolved)
        if row is not None:
            entry["schedule"] = listed_schedule(row, now)
        out.append(entry)
    return {"dir": str(root), "playbooks": out}
