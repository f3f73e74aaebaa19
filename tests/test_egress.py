"""The webhook allowlist: which URLs each kind of entry allows, what is refused outright, and
which addresses a name may resolve to as a webhook is sent."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

import pytest

from easytask.config import load_settings
from easytask.errors import ConfigError
from easytask.scheduler.egress import WebhookRefused, WebhookTargets, address_kind, parse_entry

TARGETS = WebhookTargets(
    [
        "https://hooks.example.com/services/",
        "https://hooks.example.com/hook",
        "api.example.org:8443",
        "plain.example.org",
        "*.corp.example",
        "127.0.0.1:9000",
        "[::1]:9001",
        "localhost:9002",
    ],
    "http://10.1.2.3:8080/easytask?k=1",
)


@pytest.mark.parametrize(
    ("url", "entry"),
    [
        ("https://hooks.example.com/services/T1/B2", "https://hooks.example.com/services/"),
        ("https://hooks.example.com:443/services/x", "https://hooks.example.com/services/"),
        ("https://HOOKS.example.com/services/x", "https://hooks.example.com/services/"),
        ("https://hooks.example.com/hook", "https://hooks.example.com/hook"),
        ("https://hooks.example.com/hook/sub", "https://hooks.example.com/hook"),
        ("https://api.example.org:8443/x", "api.example.org:8443"),
        ("http://api.example.org:8443/", "api.example.org:8443"),
        ("http://plain.example.org/a", "plain.example.org"),
        ("https://plain.example.org/a", "plain.example.org"),
        ("https://a.b.corp.example/", "*.corp.example"),
        ("http://127.0.0.1:9000/h", "127.0.0.1:9000"),
        ("http://[::ffff:127.0.0.1]:9000/h", "127.0.0.1:9000"),
        ("http://[::1]:9001/", "[::1]:9001"),
        ("http://10.1.2.3:8080/easytask?k=1", "http://10.1.2.3:8080/easytask?k=1"),
    ],
)
def test_allowed(url: str, entry: str) -> None:
    """Each URL is allowed, by the entry named."""
    assert TARGETS.check(url)[1].text == entry


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/servicesX",  # a path prefix ends at a segment
        "https://hooks.example.com/hooks",
        "https://hooks.example.com/services/../admin",  # normalised to /admin
        "http://hooks.example.com/services/x",  # another scheme
        "https://hooks.example.com:8443/services/x",  # another port
        "https://hooks.example.com.evil.net/services/x",
        "https://api.example.org/",  # a host entry's port is the one given
        "http://plain.example.org:8080/",  # ... or the scheme's own
        "https://corp.example/",  # a wildcard is for subdomains only
        "https://evilcorp.example/",
        "http://127.0.0.2:9000/",
        "http://10.1.2.3:8080/easytask",  # notify_url: that URL exactly
        "http://10.1.2.3:8080/",
        "http://169.254.169.254/latest/meta-data/",
    ],
)
def test_not_allowed_names_the_url_and_the_setting(url: str) -> None:
    with pytest.raises(WebhookRefused) as caught:
        TARGETS.check(url)
    assert caught.value.message == (
        f"webhook URL {url!r} is not allowed: the server sends webhooks only to its notify_url "
        "and the targets of notify_allow (--notify-allow, EASYTASK_NOTIFY_ALLOW); ask an admin "
        "to add it"
    )


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://u:p@127.0.0.1:9000/", "may not carry a user or password"),
        ("http://127.0.0.1:9000@evil.example/", "may not carry a user or password"),
        ("http://evil.example\\@127.0.0.1:9000/", "not a plain http(s) URL"),
        ("http://2130706433:9000/", "neither a host name nor an IP address"),
        ("http://127.1:9000/", "neither a host name nor an IP address"),
        ("http://0x7f.0.0.1:9000/", "neither a host name nor an IP address"),
        ("https://hooks.example.com/services/%2e%2e/admin", "may not hold '.' or '..'"),
        ("ftp://hooks.example.com/services/", "not an http:// or https:// URL"),
        ("http://hooks.example.com/ x", "not a plain http(s) URL"),
    ],
)
def test_ambiguous_urls_are_refused(url: str, why: str) -> None:
    with pytest.raises(WebhookRefused, match=why.replace("(", r"\(").replace(")", r"\)")):
        TARGETS.check(url)


@pytest.mark.parametrize(
    "entry",
    [
        "ftp://x.example/",
        "http://x.example/?q=1",
        "http://*.x.example/",
        "1",
        "a b",
        "*.",
        "x:99999",
    ],
)
def test_a_bad_entry_is_a_config_error_naming_it(entry: str) -> None:
    with pytest.raises(ConfigError, match="notify_allow: "):
        parse_entry(entry)


def test_the_setting_takes_a_list_from_flags_variables_and_files(tmp_path: Path) -> None:
    """Repeated flags, commas or spaces in a value and TOML lists all make entries; none by
    default."""
    cfg = tmp_path / "c.toml"
    cfg.write_text("")
    env = {"EASYTASK_CONFIG": str(cfg)}
    assert load_settings({}, env).notify_allow is None
    cfg.write_text('notify_allow = ["https://hooks.example.com/x/", "*.corp.example"]\n')
    assert load_settings({}, env).notify_allow == ("https://hooks.example.com/x/", "*.corp.example")
    cfg.write_text("notify_allow = 3\n")
    with pytest.raises(ConfigError, match="notify_allow: not a list of texts"):
        load_settings({}, env)
    cfg.write_text("")
    got = load_settings({}, {**env, "EASYTASK_NOTIFY_ALLOW": "a.example, b.example c.example"})
    assert got.notify_allow == ("a.example", "b.example", "c.example")
    flags = {"notify_allow": ["a.example,b.example", "c.example:81"]}
    assert load_settings(flags, env).notify_allow == ("a.example", "b.example", "c.example:81")


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("8.8.8.8", "public"),
        ("10.0.0.5", "private"),
        ("192.168.1.1", "private"),
        ("fd00::5", "private"),
        ("127.0.0.1", "local"),
        ("::1", "local"),
        ("169.254.169.254", "local"),
        ("fe80::1", "local"),
        ("0.0.0.0", "local"),
        ("224.0.0.1", "local"),
        ("::ffff:127.0.0.1", "local"),
    ],
)
def test_address_kinds(address: str, kind: str) -> None:
    assert address_kind(ipaddress.ip_address(address)) == kind


def test_a_name_that_resolves_to_loopback_is_refused_as_it_is_sent() -> None:
    """`localhost` is allowed by name, but its loopback address is not reached through a name;
    an address named in the allowlist is reached as named, without resolving."""

    async def main() -> None:
        with pytest.raises(WebhookRefused, match=r"^localhost resolves to .*a local address"):
            await TARGETS.pin("http://localhost:9002/x")
        url, host, extensions = await TARGETS.pin("http://127.0.0.1:9000/h")
        assert (str(url), host, extensions) == ("http://127.0.0.1:9000/h", {}, {})

    asyncio.run(main())


def test_only_the_notify_url_may_carry_credentials() -> None:
    """The admin's notify_url may hold a user and password (basic auth); a playbook's URL to
    the same host with other ones is refused."""
    targets = WebhookTargets(["other.example"], "https://u:p@hooks.example.com/h")
    assert targets.check("https://u:p@hooks.example.com/h")[1].exact is not None
    with pytest.raises(WebhookRefused, match="may not carry a user or password"):
        targets.check("https://u:q@hooks.example.com/h")
    with pytest.raises(WebhookRefused, match="is not allowed"):
        targets.check("https://hooks.example.com/h")


def test_the_notify_url_by_name_reaches_any_address() -> None:
    """The admin's own notify_url may name a host on the server itself; the request goes to the
    address resolved, with the name as Host (and TLS server name)."""

    async def main() -> None:
        targets = WebhookTargets((), "https://localhost:8443/hook")
        url, host, extensions = await targets.pin("https://localhost:8443/hook")
        assert url.host in ("127.0.0.1", "::1") and url.port == 8443 and url.path == "/hook"
        assert host == {"host": "localhost:8443"}
        assert extensions == {"sni_hostname": "localhost"}

    asyncio.run(main())
