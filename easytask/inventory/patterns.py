"""Host patterns (`web:&prod:!web3`, `db[0]`, `~web\\d+`) resolved exactly as Ansible resolves them."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from typing import Any, Protocol

from easytask.errors import NoHostsMatched, PatternError
from easytask.inventory.hostnames import AddressError, parse_address

__all__ = [
    "IMPLICIT_LOCALHOST",
    "HostSource",
    "order_parts",
    "select",
    "split_pattern",
    "split_subscript",
]

# A pattern naming one of these, when the inventory has no such host or group, selects the
# implicit localhost of that name (not in `all`), as in Ansible.
IMPLICIT_LOCALHOST = ("localhost", "127.0.0.1", "::1")

# A name followed by [n], [-n], [a:b], [a:] (or the old [a-b]).
_SUBSCRIPT = re.compile(r"(.+)\[(?:(-?[0-9]+)|([0-9]+)([:-])([0-9]*))\]")
# Without commas, parts are separated by ':' or spaces, except inside [...].
_COLON_PART = re.compile(r"(?:[^\s:\[\]]|\[[^\]]*\])+")
_GLOB_CHARS = (".", "?", "*", "[")


class HostSource(Protocol):
    """What patterns are matched against: hosts and groups in inventory order."""

    @property
    def hosts(self) -> Mapping[str, Any]: ...

    @property
    def groups(self) -> Mapping[str, Any]: ...

    def group_hosts(self, name: str) -> list[str]: ...


def split_pattern(pattern: str) -> list[str]:
    """Split a pattern into its parts: on ',' if it has one, else on ':' outside [...] ranges."""
    if not pattern.strip():
        raise PatternError("the host pattern is empty")
    if "," in pattern:
        parts = pattern.split(",")
    else:
        try:
            parse_address(pattern, allow_ranges=True)
            parts = [pattern]  # one host, IPv6 address or host range: its ':' do not separate
        except AddressError:
            parts = []
            end = 0
            for m in _COLON_PART.finditer(pattern):
                _check_gap(pattern, pattern[end : m.start()])
                parts.append(m.group())
                end = m.end()
            _check_gap(pattern, pattern[end:])
    parts = [p.strip() for p in parts if p.strip()]
    if not parts:
        raise PatternError(f"the host pattern {pattern!r} has no host or group in it")
    return parts


def _check_gap(pattern: str, gap: str) -> None:
    for bracket in "[]":
        if bracket in gap:
            raise PatternError(f"unbalanced {bracket!r} in host pattern {pattern!r}")


def order_parts(parts: list[str]) -> list[str]:
    """Unions first, then intersections (&), then exclusions (!); `all` if there is no union."""
    union = [p for p in parts if p[0] not in "&!"]
    intersect = [p for p in parts if p[0] == "&"]
    exclude = [p for p in parts if p[0] == "!"]
    return (union or ["all"]) + intersect + exclude


def split_subscript(part: str) -> tuple[str, tuple[int, int | None] | None]:
    """Split `name[i]` or `name[a:b]` into the name and (start, end); end -1 means "to the last"."""
    if part.startswith("~"):
        return part, None
    m = _SUBSCRIPT.fullmatch(part)
    if not m:
        return part, None
    name, index, start, _, end = m.groups()
    if index is not None:
        return name, (int(index), None)
    return name, (int(start), int(end) if end else -1)


def select(source: HostSource, pattern: str) -> list[str]:
    """The names of the hosts a pattern selects, in Ansible's order, each once."""
    result: list[str] = []
    for part in order_parts(split_pattern(pattern)):
        if part in source.hosts:
            result.append(part)
            continue
        matched = _match_part(source, part, pattern)
        if part[0] == "!":
            drop = set(matched)
            result = [h for h in result if h not in drop]
        elif part[0] == "&":
            keep = set(matched)
            result = [h for h in result if h in keep]
        else:
            seen = set(result)
            result.extend(h for h in matched if h not in seen)
    result = list(dict.fromkeys(result))
    if not result:
        raise NoHostsMatched(f"host pattern {pattern!r} matched no hosts")
    return result


def _match_part(source: HostSource, part: str, pattern: str) -> list[str]:
    """Hosts of one part (without & or !); duplicates kept, as subscripts count them."""
    body = part[1:] if part[0] in "&!" else part
    if not body:
        raise PatternError(f"{_where(part, pattern)} needs a host or group name after it")
    name, subscript = split_subscript(body)
    hosts = _enumerate(source, name, part, pattern)
    if subscript is None or not hosts:
        return hosts
    start, end = subscript
    if end:
        if end == -1:
            end = len(hosts) - 1
        picked = hosts[start : end + 1]
    else:
        picked = [hosts[start]] if -len(hosts) <= start < len(hosts) else []
    if not picked:
        count = f"{len(hosts)} host{'s' if len(hosts) != 1 else ''}"
        raise NoHostsMatched(f"{_where(part, pattern)} is out of range: {name!r} matches {count}")
    return picked


def _enumerate(source: HostSource, name: str, part: str, pattern: str) -> list[str]:
    if name.startswith("~"):
        try:
            regex = re.compile(name[1:])
        except re.error as exc:
            raise PatternError(
                f"bad regular expression in {_where(part, pattern)}: {exc}"
            ) from None
    else:
        regex = re.compile(fnmatch.translate(name))
    groups = [g for g in source.groups if regex.match(g)]
    hosts: list[str] = []
    for group in groups:
        hosts.extend(source.group_hosts(group))
    if not groups or name.startswith("~") or any(c in name for c in _GLOB_CHARS):
        hosts.extend(h for h in source.hosts if regex.match(h))
    if not hosts and not groups:
        if name in IMPLICIT_LOCALHOST:
            return [name]
        hint = ""
        if ":" in part and "," in pattern:
            hint = " (a pattern with ',' is split at ',' only, not at ':')"
        raise NoHostsMatched(f"{_where(part, pattern)} matches no host or group{hint}")
    return hosts


def _where(part: str, pattern: str) -> str:
    return repr(part) if part == pattern else f"{part!r} in host pattern {pattern!r}"
