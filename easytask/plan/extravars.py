"""Extra vars: `-e key=value ...`, `-e @file.yml` or `-e {"json": ...}` as variables (pure code)."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import Any

from easytask.errors import PlaybookError, SourceLocation, UsageError
from easytask.playbook import RESERVED_VARS, load_yaml

__all__ = ["parse_extra_vars"]


def parse_extra_vars(values: Sequence[str]) -> dict[str, Any]:
    """`-e` values merged in order: `key=value ...` (strings), `@file.yml`, or a JSON/YAML mapping."""
    merged: dict[str, Any] = {}
    for value in values:
        merged.update(_extra_vars(value))
    return merged


def _extra_vars(value: str) -> dict[str, Any]:
    text = value.strip()
    if text.startswith("@"):
        path = text[1:]
        try:
            with open(path, encoding="utf-8") as handle:
                body = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not valid UTF-8"
            raise UsageError(f"-e @{path}: cannot read the file: {reason}") from None
        return _vars_mapping(body, path, f"-e @{path}")
    if text.startswith(("{", "[")):
        return _vars_mapping(text, "-e", "-e")
    out: dict[str, Any] = {}
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise UsageError(f"-e {value!r}: {exc}") from None
    for word in words:
        key, eq, item = word.partition("=")
        if not eq or not key:
            raise UsageError(f"-e {value!r}: expected key=value, @file.yml or a JSON mapping")
        _check_var_name(key, f"-e {value!r}", None)
        out[key] = item
    return out


def _vars_mapping(text: str, path: str, what: str) -> dict[str, Any]:
    inline = path == "-e"  # positions in a command-line value are not worth a file:line
    try:
        data, problems, source = load_yaml(text, path)
    except PlaybookError as exc:
        raise UsageError(
            f"{what}: {exc.message}", location=None if inline else exc.location
        ) from None
    if problems:
        at = None if inline else problems[0].location
        raise UsageError(f"{what}: {problems[0].message}", location=at)
    if data is None:
        return {}
    if not isinstance(data, dict):
        at = None if inline else SourceLocation(path, 1, 1)
        raise UsageError(f"{what}: extra vars must be a mapping", location=at)
    for key in data:
        _check_var_name(key, what, None if inline else source.key(data, key))
    return dict(data)


def _check_var_name(key: Any, what: str, at: SourceLocation | None) -> None:
    if not isinstance(key, str) or not key.isidentifier():
        raise UsageError(f"{what}: invalid variable name {key!r}", location=at)
    if key in RESERVED_VARS:
        raise UsageError(f"{what}: the variable name {key!r} is reserved", location=at)
