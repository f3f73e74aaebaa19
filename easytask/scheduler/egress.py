"""Where the server may send a webhook: the allowlist (`notify_allow`) a playbook's `notify:` URL
is checked against when it is submitted and again when it is sent, and the address check made
as it is sent (the name is resolved, every address checked, and the connection made to the
address that was checked, so a name that changes its answer cannot point it elsewhere).

An entry is a URL prefix (`https://hooks.example.com/services/`: that scheme, host and port,
paths under that one) or a host (`hooks.example.com`, `hooks.example.com:8443`,
`*.example.com` for its subdomains, `10.0.0.5:9000`, `[fd00::5]:9000`: any path, http or
https, on the port given or the scheme's own). The server's own `notify_url` is always allowed,
that URL exactly.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from easytask.errors import ConfigError, EasyTaskError

DEFAULT_PORTS = {"http": 80, "https": 443}
SETTING = "notify_allow (--notify-allow, EASYTASK_NOTIFY_ALLOW)"
_HOST = re.compile(
    r"(?:\*\.)?[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*"
)
_HOST_PORT = re.compile(r"(?P<host>\[[0-9a-f:.]+\]|[^:\[\]]+)(?::(?P<port>[0-9]{1,5}))?")
_NUMERIC = re.compile(r"(?:0x[0-9a-f]*|[0-9.]+)(?:\.[0-9a-fx.]*)?")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class WebhookRefused(EasyTaskError):
    """The server does not send webhooks there."""


def _ip(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def address_kind(address: IPAddress) -> str:
    """`public`, `private` (RFC 1918, unique local, shared) or `local` (loopback, link-local
    such as 169.254.169.254, unspecified, multicast, reserved)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if (
        address.is_loopback
        or address.is_link_local
        or address.is_unspecified
        or address.is_multicast
        or address.is_reserved
    ):
        return "local"
    return "public" if address.is_global else "private"


def parse_url(text: str, *, credentials: bool = False) -> httpx.URL:
    """A webhook URL as the client reads it; WebhookRefused for anything ambiguous, and for a
    user or password unless `credentials` (the admin's own URLs may carry them)."""
    if not isinstance(text, str) or any(c.isspace() or ord(c) < 32 or c == "\\" for c in text):
        raise WebhookRefused(f"not a plain http(s) URL: {text!r}")
    try:
        url = httpx.URL(text)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise WebhookRefused(f"not a valid URL: {text!r} ({exc})") from exc
    if url.scheme not in DEFAULT_PORTS or not url.host:
        raise WebhookRefused(f"not an http:// or https:// URL: {text!r}")
    if url.userinfo and not credentials:
        raise WebhookRefused(f"a webhook URL may not carry a user or password: {text!r}")
    if _ip(url.host) is None and _NUMERIC.fullmatch(url.host):
        raise WebhookRefused(f"{url.host!r} is neither a host name nor an IP address")
    if any(part in (".", "..") for part in url.path.split("/")):
        raise WebhookRefused(f"a webhook URL's path may not hold '.' or '..': {text!r}")
    return url


def _port(url: httpx.URL) -> int:
    return url.port or DEFAULT_PORTS[url.scheme]


@dataclass(frozen=True)
class Target:
    """One allowed target: a URL prefix, a host (maybe `*.` a domain), or the exact notify_url."""

    text: str
    host: str
    scheme: str | None = None  # None: http or https
    port: int | None = None  # None: the scheme's own
    path: str | None = None  # a URL prefix's path
    exact: str | None = None  # the notify_url: this URL only

    @property
    def ip(self) -> IPAddress | None:
        """The address the entry names, if it names one."""
        return _ip(self.host)

    @property
    def wildcard(self) -> bool:
        """Whether the entry stands for the subdomains of a domain."""
        return self.host.startswith("*.")

    def matches(self, url: httpx.URL) -> bool:
        """Whether a parsed webhook URL is one this entry allows."""
        if self.exact is not None:
            return str(url) == self.exact
        if self.scheme is not None and url.scheme != self.scheme:
            return False
        if _port(url) != (self.port if self.port is not None else DEFAULT_PORTS[url.scheme]):
            return False
        host = url.host.lower().rstrip(".")
        if self.wildcard:
            if not host.endswith(self.host[1:]) or host == self.host[2:]:
                return False
        elif self.ip is not None:
            if _ip(host) != self.ip:
                return False
        elif host != self.host:
            return False
        if self.path is None:
            return True
        path = url.path or "/"
        if self.path.endswith("/"):
            return path.startswith(self.path)
        return path == self.path or path.startswith(self.path + "/")

    def may_reach(self, address: IPAddress) -> bool:
        """Whether a name this entry allowed may resolve to this address: the notify_url's
        name to any; a named host to a public or private one; a wildcard to public ones only
        (an address the entry names itself is reached as named, without resolving)."""
        kind = address_kind(address)
        if self.exact is not None:
            return True
        if self.wildcard:
            return kind == "public"
        return kind != "local"


def parse_entry(text: str) -> Target:
    """One allowlist entry; ConfigError naming it if it is not one."""
    raw = text.strip()
    bad = f"notify_allow: {raw!r} is not a URL prefix (https://host[:port]/path) or a host[:port]"
    if "://" in raw:
        try:
            url = parse_url(raw)
        except WebhookRefused as exc:
            raise ConfigError(f"{bad}: {exc.message}") from exc
        if url.query or url.fragment or "*" in url.host:
            raise ConfigError(f"{bad}: a URL entry takes no query, fragment or wildcard")
        host = url.host.lower().rstrip(".")
        return Target(raw, host, scheme=url.scheme, port=_port(url), path=url.path or "/")
    match = _HOST_PORT.fullmatch(raw.lower())
    if not match:
        raise ConfigError(bad)
    host, port = match["host"].rstrip("."), match["port"]
    if _ip(host) is None and (not _HOST.fullmatch(host) or _NUMERIC.fullmatch(host)):
        raise ConfigError(bad)
    if port is not None and not 0 < int(port) < 65536:
        raise ConfigError(f"{bad}: port {port} out of range")
    if _ip(host) is not None:
        host = str(_ip(host))
    return Target(raw, host, port=int(port) if port else None)


def url_origin(url: str) -> str:
    """What a log line says of a URL: scheme, host and port, never its path, query or user
    (they may hold a token)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        return "(an invalid URL)"
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{parsed.host}{port}"


class WebhookTargets:
    """The allowlist of one server: its `notify_allow` entries and its `notify_url`."""

    def __init__(self, entries: Sequence[str] = (), notify_url: str | None = None) -> None:
        self.targets = [parse_entry(e) for e in entries if e.strip()]
        self.notify_url = notify_url
        if notify_url:
            try:
                url = parse_url(notify_url, credentials=True)
            except WebhookRefused as exc:
                raise ConfigError(f"notify_url: {exc.message}") from exc
            self.targets.append(Target(notify_url, url.host, exact=str(url)))

    def check(self, text: str) -> tuple[httpx.URL, Target]:
        """The parsed URL and the entry allowing it; WebhookRefused naming the URL and the
        setting if none does."""
        url = parse_url(text, credentials=bool(self.notify_url) and text == self.notify_url)
        for target in self.targets:
            if target.matches(url):
                return url, target
        raise WebhookRefused(
            f"webhook URL {text!r} is not allowed: the server sends webhooks only to its "
            f"notify_url and the targets of {SETTING}; ask an admin to add it"
        )

    async def pin(self, text: str) -> tuple[httpx.URL, dict[str, str], dict[str, Any]]:
        """Check a URL, resolve its host and check every address; the URL to connect to (the
        address itself), the Host header and the request extensions (TLS server name) that keep
        the request the one for the name. WebhookRefused when any check fails."""
        url, target = self.check(text)
        if _ip(url.host) is not None:
            return url, {}, {}
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(
                url.host, _port(url), type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
        except OSError as exc:
            raise httpx.ConnectError(f"cannot resolve {url.host}: {exc}") from exc
        addresses = []
        for info in infos:
            address = _ip(str(info[4][0]).split("%", 1)[0])
            if address is not None and address not in addresses:
                addresses.append(address)
        if not addresses:
            raise httpx.ConnectError(f"cannot resolve {url.host}")
        for address in addresses:
            if not target.may_reach(address):
                raise WebhookRefused(
                    f"{url.host} resolves to {address}, a {address_kind(address)} address, "
                    f"which {target.text!r} in {SETTING} does not reach; name the address "
                    f"itself there to allow it"
                )
        chosen = addresses[0]
        netloc = url.host if url.port is None else f"{url.host}:{url.port}"
        pinned = url.copy_with(host=str(chosen))
        extensions: dict[str, Any] = {"sni_hostname": url.host} if url.scheme == "https" else {}
        return pinned, {"host": netloc}, extensions
