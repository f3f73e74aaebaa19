"""Agent names and group labels: the one character rule both the agent and the server apply."""

from __future__ import annotations

import re

MAX_NAME = 128
# Letters, digits, '.', '_' and '-', not starting with '.' or '-': every Ansible group name that
# Ansible itself does not warn about, plus the dotted and dashed host-like names fleets use.
# Nothing a shell, a host pattern (`:`, `,`, `&`, `!`, `*`, `~`, `[`) or a list could read.
_NAME = re.compile(rf"[A-Za-z0-9_][A-Za-z0-9._-]{{0,{MAX_NAME - 1}}}")
RULE = f"use 1 to {MAX_NAME} letters, digits, '.', '_' or '-', not starting with '.' or '-'"


class BadName(ValueError):
    """An agent name or group label breaks the character rule; the message names the value."""


def check_name(value: object, what: str = "agent name") -> str:
    """`value` if it follows the rule (see RULE), else `BadName` naming it and `what` it is."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        shown = repr(value) if isinstance(value, str) else type(value).__name__
        if isinstance(value, str) and len(value) > 2 * MAX_NAME:
            shown = repr(value[: 2 * MAX_NAME]) + "..."
        raise BadName(f"{what} {shown} is not valid: {RULE}")
    return value


def check_labels(values: list[str]) -> list[str]:
    """Group labels, each checked (`BadName` for the first bad one), without repeats."""
    return list(dict.fromkeys(check_name(v, "group label") for v in values))
