"""Playbook checks: the base of the checker, and the checks of single values and keys."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Sequence
from typing import Any

from easytask.durations import parse_duration
from easytask.errors import PatternError, PlaybookError, SourceLocation
from easytask.inventory import split_pattern
from easytask.playbook.model import BECOME_USER_RE, Defaults
from easytask.sourceyaml import Source, type_name
from easytask.templating import is_template, syntax_problem

__all__ = ["NAME", "ValueChecker", "got", "suggest"]

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_HINTS = {
    "register": "every task's output is results.<task name>; 'register' is not needed",
    "depends_on": "did you mean 'needs'?",
    "requires": "did you mean 'needs'?",
    "after": "did you mean 'needs'?",
    "delay": "did you mean 'retry_delay'?",
    "become_method": "set ansible_become_method in the inventory (agents use their own way)",
    "loop_var": "put it in 'loop_control'",
    "index_var": "not supported: loop_control takes 'label' and 'loop_var'",
    "roles": "roles are not supported",
    "gather_facts": "facts are there when the playbook names one (ansible_facts, "
    "ansible_hostname, ...): agents report them, agentless hosts gather them; remove it",
}


def suggest(word: str, known: Sequence[str]) -> str:
    """` (did you mean 'x'?)` for a near miss, else ''."""
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def got(value: Any) -> str:
    """A wrong value for a message: its text when it is a string or a number, else its type."""
    if isinstance(value, str):
        return "an empty string" if not value.strip() else repr(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(value)
    return type_name(value)


class ValueChecker:
    """Walks the document and collects errors; a part that is wrong comes back as None."""

    def __init__(self, source: Source, path: str) -> None:
        self.src = source
        self.path = path
        self.base_dir = os.path.realpath(os.path.dirname(os.path.abspath(path)))
        self.errors: list[PlaybookError] = []
        self.needs_at: dict[str, list[SourceLocation]] = {}
        self.results_at: dict[str, dict[str, SourceLocation]] = {}

    def fail(self, message: str, at: SourceLocation) -> None:
        self.errors.append(PlaybookError(message, location=at))

    def bad(self, container: Any, where: Any, message: str) -> None:
        """An error about a value (a mapping's value by key, a list's item by index)."""
        self.fail(message, self.src.value(container, where))

    def expect(self, data: dict[Any, Any], key: str, where: str, expected: str) -> None:
        self.bad(data, key, f"{key!r} in {where} must be {expected}, got {got(data[key])}")

    def unknown_keys(
        self,
        data: dict[Any, Any],
        known: Sequence[str],
        where: str,
        *,
        elsewhere: Sequence[str] = (),
    ) -> None:
        for key in data:
            at = self.src.key(data, key)
            if not isinstance(key, str):
                self.fail(f"keys in {where} must be strings, got {type_name(key)} {key!r}", at)
            elif key not in known:
                if key in _HINTS:
                    hint = f" ({_HINTS[key]})"
                elif key.startswith("with_") and "loop" in known:
                    hint = f" ({key} lookups are not supported: write 'loop' with a list or a template giving one)"
                elif key in elsewhere:
                    hint = (
                        " (it belongs in a task)"
                        if where == "the play"
                        else " (it belongs in the play)"
                    )
                else:
                    hint = suggest(key, known)
                self.fail(f"unknown key {key!r} in {where}{hint}", at)

    def hosts(self, data: dict[Any, Any], where: str, *, required: bool = False) -> str | None:
        value = data.get("hosts")
        if value is None:
            if required:
                self.fail(
                    f"{where} has no 'hosts' (a host pattern such as all or web:&prod)",
                    self.src.start(data),
                )
            return None
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            value = ",".join(value)
        if not isinstance(value, str):
            self.expect(data, "hosts", where, "a host pattern (a string)")
            return None
        if is_template(value):
            self.bad(
                data,
                "hosts",
                f"'hosts' in {where} cannot be a template (narrow it with --limit instead)",
            )
            return None
        try:
            split_pattern(value)
        except PatternError as exc:
            self.bad(data, "hosts", f"invalid 'hosts' in {where}: {exc.message}")
            return None
        return value.strip()

    def nested_templates(self, container: Any, where: Any, what: str) -> None:
        value = container[where]
        if isinstance(value, str):
            self.template(container, where, what)
        elif isinstance(value, dict | list):
            for key in value if isinstance(value, dict) else range(len(value)):
                self.nested_templates(value, key, what)

    def settings(self, data: dict[Any, Any], where: str, base: Defaults) -> Defaults:
        """timeout, retries, retry_delay, retry_backoff of a task or of the play's defaults."""
        return Defaults(
            timeout=self.duration(data, "timeout", where, base.timeout, zero_is_none=True),
            retries=self.integer(data, "retries", where, low=0, default=base.retries),
            retry_delay=self.duration(data, "retry_delay", where, base.retry_delay) or 0.0,
            retry_backoff=self.number(
                data, "retry_backoff", where, low=1, default=base.retry_backoff
            ),
        )

    # -- scalars ----------------------------------------------------------------------------

    def template(self, container: Any, where: Any, what: str) -> bool:
        """Check the template syntax of one string value; False (and an error) if it is wrong."""
        problem = syntax_problem(container[where]) if is_template(container[where]) else None
        if problem is None:
            return True
        at = self.src.template_at(container, where, problem[0])
        self.fail(f"invalid template in {what}: {problem[1]}", at)
        return False

    def string(self, data: dict[Any, Any], key: str, where: str) -> str | None:
        value = data.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            self.expect(data, key, where, "a non-empty string")
            return None
        return value

    def boolean(self, data: dict[Any, Any], key: str, where: str) -> bool:
        value = data.get(key)
        if value is not None and not isinstance(value, bool):
            self.expect(data, key, where, "true or false")
            return False
        return bool(value)

    def become(self, data: dict[Any, Any], where: str) -> tuple[bool | None, str | None]:
        """`become` (true or false) and `become_user` (a user name; implies nothing by itself,
        as in Ansible): None where absent."""
        become = data.get("become")
        if become is not None and not isinstance(become, bool):
            self.expect(data, "become", where, "true or false")
            become = None
        user = data.get("become_user")
        if user is not None and (not isinstance(user, str) or not BECOME_USER_RE.match(user)):
            self.expect(data, "become_user", where, "a user name")
            user = None
        return become, user

    def integer(
        self, data: dict[Any, Any], key: str, where: str, *, low: int, default: Any = None
    ) -> Any:
        value = data.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            self.expect(
                data, key, where, "a positive integer" if low == 1 else "a non-negative integer"
            )
            return default
        return value

    def number(
        self,
        data: dict[Any, Any],
        key: str,
        where: str,
        *,
        low: float,
        high: float | None = None,
        default: Any = None,
    ) -> Any:
        value = data.get(key)
        if value is None:
            return default
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or value < low or (high is not None and value > high):
            span = f"from {low:g} to {high:g}" if high is not None else f"of at least {low:g}"
            self.expect(data, key, where, f"a number {span}")
            return default
        return float(value)

    def duration(
        self,
        data: dict[Any, Any],
        key: str,
        where: str,
        default: float | None,
        *,
        zero_is_none: bool = False,
    ) -> float | None:
        value = data.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.bad(
                data,
                key,
                f"{key!r} in {where} must be a duration such as 30s or 5m, got {type_name(value)}",
            )
            return default
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            self.bad(data, key, f"invalid {key!r} in {where}: {exc}")
            return default
        return None if zero_is_none and seconds == 0 else seconds
