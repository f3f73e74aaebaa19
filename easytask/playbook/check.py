"""Playbook checks: the play (hosts, vars, secrets, defaults, serial, schedule, notify)."""

from __future__ import annotations

import os
import re
import zoneinfo
from pathlib import Path
from typing import Any

from easytask.cron import Cron
from easytask.errors import PlaybookError, SourceLocation
from easytask.playbook.model import (
    CATCH_UP,
    DEFAULTS_KEYS,
    NOTIFY_EVENTS,
    NOTIFY_KEYS,
    PLAY_KEYS,
    RESERVED_VARS,
    TASK_KEYS,
    Defaults,
    Notify,
    Playbook,
)
from easytask.playbook.tasks import TaskChecker
from easytask.playbook.values import NAME, got, suggest
from easytask.sourceyaml import Source, YamlError, parse_yaml, type_name
from easytask.vault import Vault

__all__ = ["PlaybookChecker"]

_PERCENT = re.compile(r"(\d+)%\Z")


class PlaybookChecker(TaskChecker):
    """Checks a whole playbook: the play's keys here, its tasks and values in the base classes.

    `vault` decrypts vaulted `vars_files` (none: no password).
    """

    def __init__(self, source: Source, path: str, vault: Vault | None = None) -> None:
        super().__init__(source, path)
        self.vault = vault if vault is not None else Vault()

    def play(self, data: Any, text: str) -> Playbook | None:
        top = SourceLocation(self.path, 1, 1)
        if data is None:
            self.fail("the playbook is empty (it needs at least 'hosts' and 'tasks')", top)
            return None
        if isinstance(data, list):
            message = "a playbook is one play: a mapping with 'hosts' and 'tasks', not a list"
            self.fail(f"{message} (for a single Ansible play, remove the leading '- ')", top)
            return None
        if not isinstance(data, dict):
            self.fail(
                f"a playbook must be a mapping with 'hosts' and 'tasks', got {type_name(data)}", top
            )
            return None
        self.unknown_keys(data, PLAY_KEYS, "the play", elsewhere=TASK_KEYS)
        name = self.string(data, "name", "the play") or Path(self.path).stem
        hosts = self.hosts(data, "the play", required=True)
        play_vars = self.variables(data)
        files = self.vars_files(data)
        for _, file_vars in files:
            play_vars.update(file_vars)
        secrets = self.secret_names(data)
        defaults = self.defaults(data)
        serial = self.serial(data)
        max_fail = self.number(data, "max_fail_percentage", "the play", low=0, high=100)
        forks = self.integer(data, "forks", "the play", low=1)
        schedule, tz, catch_up = self.schedule(data)
        notify = self.notify(data)
        become, become_user = self.become(data, "the play")
        tasks = self.tasks(data, defaults or Defaults())
        if hosts is None or tasks is None or defaults is None or self.errors:
            return None
        return Playbook(
            name=name,
            hosts=hosts,
            tasks=tasks,
            path=self.path,
            base_dir=self.base_dir,
            location=self.src.start(data),
            vars=play_vars,
            vars_files=tuple(path for path, _ in files),
            secrets=secrets,
            defaults=defaults,
            serial=serial,
            max_fail_percentage=max_fail,
            forks=forks,
            schedule=schedule,
            tz=tz,
            catch_up=catch_up,
            notify=notify,
            become=become,
            become_user=become_user,
            text=text,
            locations={k: self.src.key(data, k) for k in data},
        )

    def variables(self, data: dict[Any, Any]) -> dict[str, Any]:
        value = data.get("vars")
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.expect(data, "vars", "the play", "a mapping")
            return {}
        return self.checked_vars(value)

    def vars_files(self, data: dict[Any, Any]) -> list[tuple[str, dict[str, Any]]]:
        """`vars_files`: YAML mappings beside the playbook, read in order (later ones win)."""
        written = data.get("vars_files")
        if written is None:
            return []
        value = [written] if isinstance(written, str) else written
        if not isinstance(value, list):
            self.expect(data, "vars_files", "the play", "a list of file paths")
            return []
        out = []
        for index, item in enumerate(value):
            at = (
                self.src.value(value, index)
                if value is written
                else self.src.value(data, "vars_files")
            )
            if not isinstance(item, str):
                self.fail(f"vars_files: {got(item)} is not a file path", at)
                continue
            path = self.local_file(item, "vars file", "the play", at)
            if path is not None:
                out.append((path, self.vars_file(path, item, at)))
        return out

    def vars_file(self, path: str, shown: str, at: SourceLocation) -> dict[str, Any]:
        """One vars file's variables, checked as `vars` are, errors at its own file:line."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            self.fail(f"cannot read the vars file {shown!r}: {exc}", at)
            return {}
        name = os.path.join(os.path.dirname(self.path), shown)
        try:
            source = parse_yaml(text, name, nodes=True, vault=self.vault)
        except YamlError as exc:
            message = f"invalid YAML: {exc.detail}" if exc.detail and not exc.vault else exc.message
            self.errors.append(PlaybookError(message, location=exc.location))
            return {}
        inner = PlaybookChecker(source, name, self.vault)
        self.errors.extend(PlaybookError(m, location=a) for m, a in source.duplicates)
        if source.data is None:
            return {}
        if not isinstance(source.data, dict):
            self.fail(
                f"the vars file {shown!r} must be a mapping of variables, got {type_name(source.data)}",
                SourceLocation(name, 1, 1),
            )
            return {}
        found = inner.checked_vars(source.data)
        self.errors.extend(inner.errors)
        return found

    def checked_vars(self, value: dict[Any, Any]) -> dict[str, Any]:
        """A mapping of variables: names checked, templates in the values checked."""
        for name in value:
            at = self.src.key(value, name)
            if not isinstance(name, str) or not NAME.match(name):
                self.fail(
                    f"invalid variable name {name!r} (use letters, digits and _, not starting with a digit)",
                    at,
                )
            elif name in RESERVED_VARS:
                self.fail(
                    f"variable name {name!r} is reserved (results.<task> holds task output)", at
                )
            else:
                self.nested_templates(value, name, f"variable {name!r}")
        return dict(value)

    def secret_names(self, data: dict[Any, Any]) -> tuple[str, ...]:
        value = data.get("secrets")
        if value is None:
            return ()
        if not isinstance(value, list):
            self.expect(data, "secrets", "the play", "a list of variable names")
            return ()
        names = []
        for index, name in enumerate(value):
            if not isinstance(name, str) or not NAME.match(name) or name in RESERVED_VARS:
                self.bad(value, index, f"secrets: {name!r} is not a variable name")
            else:
                names.append(name)
        return tuple(dict.fromkeys(names))

    def defaults(self, data: dict[Any, Any]) -> Defaults | None:
        value = data.get("defaults")
        if value is None:
            return Defaults()
        if not isinstance(value, dict):
            self.expect(data, "defaults", "the play", "a mapping")
            return None
        self.unknown_keys(value, DEFAULTS_KEYS, "'defaults'")
        return self.settings(value, "'defaults'", Defaults())

    def serial(self, data: dict[Any, Any]) -> tuple[int | str, ...]:
        value = data.get("serial")
        if value is None:
            return ()
        if value == []:
            self.bad(data, "serial", "'serial' is an empty list")
        container, items = (
            (value, list(enumerate(value)))
            if isinstance(value, list)
            else (data, [("serial", value)])
        )
        out: list[int | str] = []
        for where, item in items:
            size = _serial_size(item)
            if size is None:
                self.bad(
                    container,
                    where,
                    f"invalid 'serial' value {item!r}: expected a number of hosts,"
                    " a percentage such as '25%', or a list of those",
                )
            else:
                out.append(size)
        return tuple(out)

    def schedule(self, data: dict[Any, Any]) -> tuple[Cron | None, str | None, str]:
        cron, tz, catch_up = None, None, "none"
        if data.get("schedule") is not None:
            if not isinstance(data["schedule"], str):
                self.expect(data, "schedule", "the play", "a cron expression (a string)")
            else:
                try:
                    cron = Cron.parse(data["schedule"])
                except ValueError as exc:
                    self.bad(data, "schedule", f"invalid 'schedule': {exc}")
        for key in ("tz", "catch_up"):
            if data.get(key) is not None and "schedule" not in data:
                self.fail(f"{key!r} needs a 'schedule'", self.src.key(data, key))
        value = data.get("tz")
        if value is not None and "schedule" in data:
            if not isinstance(value, str):
                self.expect(data, "tz", "the play", "a time zone name such as Europe/Berlin")
            elif not _zone_exists(value):
                self.bad(
                    data,
                    "tz",
                    f"unknown time zone {value!r}{suggest(value, sorted(zoneinfo.available_timezones()))}",
                )
            else:
                tz = value
        value = data.get("catch_up")
        if value is not None and "schedule" in data:
            if value not in CATCH_UP:
                self.expect(data, "catch_up", "the play", "'none' or 'one'")
            else:
                catch_up = value
        return cron, tz, catch_up

    def notify(self, data: dict[Any, Any]) -> tuple[Notify, ...]:
        value = data.get("notify")
        if value is None:
            return ()
        if value == []:
            self.bad(data, "notify", "'notify' is an empty list")
            return ()
        container, items = (
            (value, list(enumerate(value)))
            if isinstance(value, list)
            else (data, [("notify", value)])
        )
        out: list[Notify] = []
        for where, item in items:
            if not isinstance(item, dict):
                self.bad(
                    container,
                    where,
                    f"'notify' must be a mapping with 'url' (and 'events'), or a list of those, "
                    f"got {got(item)}",
                )
                continue
            self.unknown_keys(item, NOTIFY_KEYS, "'notify'")
            url = item.get("url")
            if url is None:
                self.fail("'notify' needs a 'url'", self.src.start(item))
                continue
            if not isinstance(url, str) or not re.match(r"https?://[^\s/]+", url):
                self.bad(
                    item,
                    "url",
                    f"'url' in 'notify' must be an http:// or https:// URL, got {got(url)}",
                )
                continue
            events = item.get("events", "all")
            if events not in NOTIFY_EVENTS:
                self.expect(item, "events", "'notify'", "'all' or 'failed'")
                continue
            out.append(Notify(url=str(url), events=str(events)))
        return tuple(out)


def _serial_size(item: Any) -> int | str | None:
    if isinstance(item, bool):
        return None
    if isinstance(item, int):
        return item if item >= 0 else None
    if isinstance(item, str):
        text = item.strip()
        m = _PERCENT.match(text)
        if m:
            return f"{int(m[1])}%" if 0 <= int(m[1]) <= 100 else None
        if text.isdigit():
            return int(text)
    return None


def _zone_exists(name: str) -> bool:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True
