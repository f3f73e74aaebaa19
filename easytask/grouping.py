"""Hosts with the same output folded into one group, and host lists written compactly as
inventory ranges (`web[01:40], db1`), as `dshbak -c` and `clush -b` show a fleet (pure code)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Group", "HostOutput", "compact_hosts", "fold", "host_sort_key"]

# The last run of digits in a name: what a range can stand for.
_NUMBERED = re.compile(r"^(.*?)([0-9]+)([^0-9]*)$")
# Names with these are written as they are: a range next to them would not read back the same.
_PLAIN_ONLY = re.compile(r"[\[\]:,\s]")


@dataclass
class HostOutput:
    """One host's run as grouping sees it: its end and its output lines by stream."""

    host: str
    exit_code: int | None
    state: str
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    # the lines compared were cut at a cap (the console's bounded view)
    cut: bool = False
    # a playbook's task: runs of different tasks never fold together
    task: str = ""


@dataclass
class Group:
    """Hosts whose runs ended the same way with the same output."""

    hosts: list[str]
    exit_code: int | None
    state: str
    stdout: list[str]
    stderr: list[str]
    cut: bool = False
    task: str = ""

    @property
    def hosts_text(self) -> str:
        return compact_hosts(self.hosts)

    def as_dict(self) -> dict[str, Any]:
        return {
            **({"task": self.task} if self.task else {}),
            "hosts": self.hosts,
            "hosts_text": self.hosts_text,
            "exit_code": self.exit_code,
            "state": self.state,
            "stdout": self.stdout,
            "stderr": self.stderr,
        }


def _digest(out: HostOutput) -> bytes:
    h = hashlib.blake2b(digest_size=20)
    for lines in (out.stdout, out.stderr):
        # the count first, so a line moved from one stream to the other changes the digest
        h.update(f"{len(lines)}\0".encode())
        for line in lines:
            h.update(line.encode("utf-8", "surrogatepass"))
            h.update(b"\0")
    return h.digest()


def fold(outputs: Iterable[HostOutput]) -> list[Group]:
    """Hosts folded by (task, exit code, state, output): tasks in the order they first come,
    within one the biggest group first, then by first host. Each group's hosts are in natural
    order (web2 before web10). When all runs are of one task, no group names it."""
    groups: dict[tuple[str, int | None, str, bytes], Group] = {}
    tasks: dict[str, int] = {}
    for out in outputs:
        tasks.setdefault(out.task, len(tasks))
        key = (out.task, out.exit_code, out.state, _digest(out))
        group = groups.get(key)
        if group is None:
            groups[key] = Group(
                [out.host], out.exit_code, out.state, out.stdout, out.stderr, out.cut, out.task
            )
        else:
            group.hosts.append(out.host)
            group.cut = group.cut or out.cut
    result = list(groups.values())
    for group in result:
        group.hosts.sort(key=host_sort_key)
    result.sort(key=lambda g: (tasks[g.task], -len(g.hosts), host_sort_key(g.hosts[0])))
    if len(tasks) == 1:  # one task (an ad hoc command): nothing to tell apart
        for group in result:
            group.task = ""
    return result


def host_sort_key(name: str) -> tuple[Any, ...]:
    """Natural order: the digit runs of a name compare as numbers (web2 < web10 < web010)."""
    parts = re.split(r"([0-9]+)", name)
    return tuple((0, int(p), len(p)) if p.isdigit() else (1, p, 0) for p in parts)


def compact_hosts(hosts: Sequence[str]) -> str:
    """Host names as `, `-separated inventory patterns: names that differ only in their last
    number become a range (`web01`..`web40` -> `web[01:40]`, zero padding kept; a gap splits it:
    `web[1:3], web5`). Each part read by the inventory's range expansion gives back its names."""
    # (prefix, suffix, width) -> numbers; width 0 for numbers written without padding
    numbered: dict[tuple[str, str, int], set[int]] = {}
    plain: list[str] = []
    padded_widths: dict[tuple[str, str], set[int]] = {}
    parsed: list[tuple[str, str, str]] = []
    for name in dict.fromkeys(hosts):
        m = _NUMBERED.match(name)
        if m is None or _PLAIN_ONLY.search(name):
            plain.append(name)
            continue
        prefix, digits, suffix = m.groups()
        parsed.append((prefix, digits, suffix))
        if len(digits) > 1 and digits[0] == "0":
            padded_widths.setdefault((prefix, suffix), set()).add(len(digits))
    for prefix, digits, suffix in parsed:
        widths = padded_widths.get((prefix, suffix), set())
        # an unpadded number as wide as a padded one reads back the same inside the padded range
        width = len(digits) if len(digits) in widths else 0
        numbered.setdefault((prefix, suffix, width), set()).add(int(digits))
    parts: list[tuple[tuple[Any, ...], str]] = [(host_sort_key(n), n) for n in plain]
    for (prefix, suffix, width), numbers in numbered.items():
        for first, last in _runs(sorted(numbers)):
            a, b = str(first).zfill(width), str(last).zfill(width)
            text = f"{prefix}{a}{suffix}" if first == last else f"{prefix}[{a}:{b}]{suffix}"
            parts.append((host_sort_key(f"{prefix}{a}{suffix}"), text))
    parts.sort()
    return ", ".join(text for _, text in parts)


def _runs(numbers: list[int]) -> list[tuple[int, int]]:
    """Sorted numbers as (first, last) runs of consecutive ones."""
    runs: list[tuple[int, int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], n)
        else:
            runs.append((n, n))
    return runs
