"""Host names in inventories: an address with an optional port, and `[begin:end:step]` ranges."""

from __future__ import annotations

import re
import string

__all__ = ["AddressError", "RangeError", "expand_host_pattern", "expand_ranges", "parse_address"]


class AddressError(ValueError):
    """The text is not a host name, IPv4 or IPv6 address (with an optional port)."""


class RangeError(ValueError):
    """A `[begin:end:step]` range in a host name is not valid."""


# A range inside square brackets; what may stand for begin and end depends on where it is used.
_STEP = r"(?::[0-9]+)?"
_NUMERIC_RANGE = rf"\[[0-9]+:[0-9]+{_STEP}\]"
_HEX_RANGE = rf"\[[0-9a-f]+:[0-9a-f]+{_STEP}\]"
_ALNUM_RANGE = rf"\[(?:[a-z]:[a-z]|[0-9]+:[0-9]+){_STEP}\]"

_IPV4_PART = rf"(?:[01]?[0-9]{{1,2}}|2[0-4][0-9]|25[0-5]|{_NUMERIC_RANGE})"
_IPV6_PART = rf"(?:[0-9a-f]{{1,4}}|{_HEX_RANGE})"
# A label starts with a word character or a range, may contain '-', and does not end in '-' or '_'.
_LABEL = rf"(?:\w|{_ALNUM_RANGE})(?:[\w-]|{_ALNUM_RANGE})*(?<![_-])"


def _ipv6() -> str:
    h = _IPV6_PART
    v4 = rf"(?:{h}\.){{3}}{h}"
    forms = [
        rf"(?:{h}:){{7}}{h}",  # 1:2:3:4:5:6:7:8
        rf"(?:{h}:){{1,6}}:",  # 1::, 1:2:3:4:5:6::
        *(rf"(?:{h}:){{{n}}}(?::{h}){{1,{7 - n}}}" for n in range(1, 7)),  # 1::8, 1:2::7:8, ...
        rf":(?::{h}){{1,6}}",  # ::8, ::2:3:4:5:6:7:8
        rf"{h}?::",  # ::
        rf"(?:0:){{6}}{v4}",  # IPv4 inside IPv6
        rf"::(?:ffff:)?{v4}",
        rf"(?:0:){{5}}ffff:{v4}",
    ]
    return "|".join(f"(?:{form})" for form in forms)


_IPV4 = re.compile(rf"(?:{_IPV4_PART}\.){{3}}{_IPV4_PART}", re.I)
_IPV6 = re.compile(_ipv6(), re.I)
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*", re.I)
_BRACKETED_WITH_PORT = re.compile(r"\[(.+)\]:([0-9]+)")
_WITH_PORT = re.compile(r"((?:[^:\[\]]|\[[^\]]*\])*):([0-9]+)")


def is_ip_address(name: str) -> bool:
    """Whether the name is an IPv4 or IPv6 address (ranges allowed)."""
    return bool(_IPV4.fullmatch(name) or _IPV6.fullmatch(name))


def parse_address(address: str, *, allow_ranges: bool = False) -> tuple[str, int | None]:
    """Split `host:port`, `[v6addr]:port` or a bare host/address into (host, port or None)."""
    port: int | None = None
    # Both forms are tried in turn, so "[host:22]:33" ends up as host "host", port 22.
    for form in (_BRACKETED_WITH_PORT, _WITH_PORT):
        m = form.fullmatch(address)
        if m:
            address, port = m.group(1), int(m.group(2))
    if not (_IPV4.fullmatch(address) or _IPV6.fullmatch(address) or _HOSTNAME.fullmatch(address)):
        raise AddressError(f"not a valid host name or address: {address}")
    if not allow_ranges and "[" in address:
        raise AddressError(f"ranges are not allowed here: {address}")
    return address, port


def expand_host_pattern(pattern: str) -> tuple[list[str], int | None]:
    """Expand an inventory host entry such as `web[01:03].example.com:2222` into names and a port."""
    try:
        name, port = parse_address(pattern, allow_ranges=True)
    except AddressError:
        name, port = pattern, None
    if "[" in name:
        return expand_ranges(name), port
    return [name], port


def expand_ranges(name: str) -> list[str]:
    """Expand every `[begin:end]` or `[begin:end:step]` range in a name, leftmost first."""
    if "[" not in name:
        return [name]
    start = name.index("[")
    end = name.find("]")
    if end == -1:
        raise RangeError(f"unterminated range in host pattern {name!r}")
    if end < start:
        raise RangeError(f"bad range in host pattern {name!r}: ']' before '['")
    head, spec, tail = name[:start], name[start + 1 : end], name[end + 1 :]
    out: list[str] = []
    for item in _range_items(spec, name):
        out.extend(expand_ranges(head + item + tail))
    return out


def _range_items(spec: str, name: str) -> list[str]:
    def bad(why: str) -> RangeError:
        return RangeError(f"bad range [{spec}] in host pattern {name!r}: {why}")

    bounds = spec.split(":")
    if len(bounds) not in (2, 3):
        raise bad("expected [begin:end] or [begin:end:step]")
    begin, end = bounds[0] or "0", bounds[1]
    step_text = bounds[2] if len(bounds) == 3 else "1"
    if not end:
        raise bad("missing end")
    width = 0
    if begin[0] == "0" and len(begin) > 1:
        width = len(begin)
        if len(end) != width:
            raise bad("a zero-padded begin and its end must have the same width")
    try:
        step = int(step_text)
    except ValueError:
        raise bad(f"step {step_text!r} is not a number") from None
    if step == 0:
        raise bad("step cannot be zero")
    letters = string.ascii_letters
    # str.index finds substrings, so "[ab:cd]" counts as the letters a to c, as Ansible has it.
    if begin in letters and end in letters:
        first, last = letters.index(begin), letters.index(end)
        if first > last:
            raise bad("begin is after end")
        return list(letters[first : last + 1 : step])
    try:
        numbers = range(int(begin), int(end) + 1, step)
    except ValueError:
        raise bad("begin and end must both be numbers or both be letters") from None
    return [str(n).zfill(width) for n in numbers]
