"""How an inventory host is reached, from its `easytask_connection` and `ansible_*` variables.

Pure code: an Ansible inventory's connection variables become the choice of the host's agent,
of the server's own host (`ansible_connection: local`, where the server's admin allows it), or
the options of one SSH connection (host, port, user, key file, jump hosts); what
EasyTask cannot honour is refused with a message naming the host, or, for a variable that only
tunes how Ansible connects, named in a warning of the job (`connection_warnings`).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from easytask.errors import InventoryError

CONNECTIONS = ("auto", "agent", "ssh")
LOCAL = "local"  # a run's connection on the server's own host (`ansible_connection: local`)
SSH_LIKE = ("ssh", "paramiko", "smart")  # `ansible_connection` values reached over SSH
SSH_ARGS = ("ansible_ssh_common_args", "ansible_ssh_extra_args")
PASSWORDS = ("ansible_password", "ansible_ssh_pass", "ansible_ssh_password")
BECOME_PASSWORDS = ("ansible_become_password", "ansible_become_pass")
# Connection variables of Ansible that EasyTask reads (the others below are reported).
HONOURED = frozenset(
    {
        "ansible_connection",
        "ansible_host",
        "ansible_ssh_host",
        "ansible_port",
        "ansible_ssh_port",
        "ansible_user",
        "ansible_ssh_user",
        "ansible_ssh_private_key_file",
        "ansible_private_key_file",
        *SSH_ARGS,
        *PASSWORDS,
        *BECOME_PASSWORDS,
    }
)
# Connection variables of Ansible's ssh connection (and a few of its others) that change how
# Ansible reaches a host and that EasyTask does not honour: a host that sets one is named in a
# warning of the job rather than reached as if the variable were not there without a word.
UNHONOURED = frozenset(
    {
        "ansible_become_exe",
        "ansible_become_flags",
        "ansible_paramiko_pty",
        "ansible_pipelining",
        "ansible_scp_extra_args",
        "ansible_scp_if_ssh",
        "ansible_sftp_batch_mode",
        "ansible_sftp_extra_args",
        "ansible_shell_executable",
        "ansible_shell_type",
        "ansible_ssh_args",
        "ansible_ssh_executable",
        "ansible_ssh_host_key_checking",
        "ansible_ssh_pipelining",
        "ansible_ssh_retries",
        "ansible_ssh_timeout",
        "ansible_ssh_transfer_method",
        "ansible_ssh_use_tty",
        "ansible_timeout",
        "ansible_host_key_checking",
        "ansible_private_key_passphrase",
        "ansible_ssh_private_key_passphrase",
    }
)
# `-o` options of the SSH arguments that are read; any other option is reported.
_OPTION = re.compile(r"([A-Za-z]+)\s*(?:=\s*|\s+)(.*)", re.S)


@dataclass(frozen=True)
class Hop:
    """A jump host of `-o ProxyJump=` / `-J` (`[user@]host[:port]`)."""

    host: str
    port: int = 22
    user: str | None = None


@dataclass(frozen=True)
class SSHOptions:
    """Where and as whom an agentless host is reached."""

    host: str
    port: int = 22
    user: str | None = None
    key_file: str | None = None
    jumps: tuple[Hop, ...] = ()  # in the order they are crossed
    ignored: tuple[str, ...] = ()  # what is set but not honoured (`ansible_ssh_pipelining`, ...)


def connection_of(
    host: str,
    hostvars: Mapping[str, Any],
    agents: Collection[str] = frozenset(),
    allow_local: bool = False,
) -> str:
    """How a host is reached: `agent`, `ssh` or `local`, from its `easytask_connection`
    (default `auto`: through its agent if it has enrolled one, in `agents`, else as its
    `ansible_connection` says), checked: a host whose variables cannot be honoured is refused
    here, and `ansible_connection: local` (the server's own host) unless `allow_local`."""
    value = str(hostvars.get("easytask_connection", "auto"))
    if value not in CONNECTIONS:
        raise InventoryError(
            f"host {host!r}: easytask_connection must be one of {', '.join(CONNECTIONS)}, "
            f"not {value!r}"
        )
    if value == "auto":
        value = "agent" if host in agents else "ssh"
    if value == "ssh" and str(hostvars.get("ansible_connection") or "ssh") == LOCAL:
        if not allow_local:
            raise InventoryError(local_refusal(host))
        _no_clear_passwords(host, hostvars)
        return LOCAL
    if value == "ssh":
        ssh_options(host, hostvars)
    return value


def local_refusal(host: str) -> str:
    """Why a host of `ansible_connection: local` is refused where the admin has not allowed it."""
    return (
        f"host {host!r}: ansible_connection 'local' would run on the EasyTask server itself, "
        "which this server does not allow; an admin allows it with `easytask server "
        "--allow-local-connection` (EASYTASK_ALLOW_LOCAL_CONNECTION=1, or "
        "`allow_local_connection = true` in its config file); else reach the host over SSH or "
        "through an agent"
    )


def _no_clear_passwords(host: str, hv: Mapping[str, Any]) -> None:
    """InventoryError for a password in clear in a host's variables (SSH or become)."""
    for name in PASSWORDS:
        if hv.get(name) not in (None, ""):
            raise InventoryError(
                f"host {host!r}: {name} is a password in clear in the inventory, which EasyTask "
                "does not use; keep the host's SSH key in the credential store (`easytask "
                "secrets set NAME --kind ssh-key --file KEY`) and name it with "
                "`easytask_credential: NAME`"
            )
    for name in BECOME_PASSWORDS:
        if hv.get(name) not in (None, ""):
            raise InventoryError(
                f"host {host!r}: {name} is a password in clear in the inventory, which EasyTask "
                "does not use; keep it in the credential store (`easytask secrets set NAME "
                "--kind become-password`) and name it with `easytask_credential: NAME`"
            )


def ssh_options(host: str, hv: Mapping[str, Any]) -> SSHOptions:
    """The SSH connection of a host from its `ansible_*` variables; InventoryError naming the
    host for what cannot be honoured (another `ansible_connection`, a password in clear, a
    `ProxyCommand`, SSH arguments that do not parse)."""
    kind = str(hv.get("ansible_connection") or "ssh")
    if kind == LOCAL:
        raise InventoryError(local_refusal(host))
    if kind not in SSH_LIKE:
        raise InventoryError(
            f"host {host!r}: ansible_connection {kind!r} is not supported; EasyTask reaches a "
            f"host over SSH ({', '.join(SSH_LIKE)}), through its agent, or, where the server "
            "allows it, on the server's own host (local)"
        )
    _no_clear_passwords(host, hv)
    port_var = _first(hv, "ansible_port", "ansible_ssh_port")
    user_var = _first(hv, "ansible_user", "ansible_ssh_user")
    parsed = parse_ssh_args(host, [(n, hv.get(n)) for n in SSH_ARGS])
    port = _port(host, port_var if port_var is not None else parsed.get("port", 22))
    user = str(user_var) if user_var not in (None, "") else parsed.get("user")
    key = _first(hv, "ansible_ssh_private_key_file", "ansible_private_key_file")
    ignored = [n for n in sorted(hv) if n in UNHONOURED]
    ignored += parsed.get("ignored", [])
    return SSHOptions(
        host=str(_first(hv, "ansible_host", "ansible_ssh_host") or host),
        port=port,
        user=user or None,
        key_file=str(key) if key else parsed.get("key_file"),
        jumps=parsed.get("jumps", ()),
        ignored=tuple(ignored),
    )


def parse_ssh_args(host: str, sources: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """Read `-o ProxyJump=`/`-J`, `-o Port=`/`-p`, `-o User=`/`-l` and `-o IdentityFile=`/`-i`
    of SSH argument strings (split as a shell would); the first value of each wins, as in
    OpenSSH. `ignored` lists the other options and flags (`ansible_ssh_extra_args (-o
    ControlMaster)`); a `ProxyCommand` is refused (only jump hosts are followed)."""
    found: dict[str, Any] = {"ignored": []}
    for var, text in sources:
        if text in (None, ""):
            continue
        try:
            words = shlex.split(str(text))
        except ValueError as exc:
            raise InventoryError(f"host {host!r}: {var}: {exc}") from None
        i = 0
        while i < len(words):
            word = words[i]
            flag, value = word[:2], word[2:]
            if flag in ("-o", "-J", "-p", "-l", "-i") and word.startswith("-"):
                if not value:
                    if i + 1 >= len(words):
                        raise InventoryError(f"host {host!r}: {var}: {flag} needs a value")
                    i += 1
                    value = words[i]
                if flag == "-o":
                    _option(host, var, value, found)
                else:
                    key = {"-J": "proxyjump", "-p": "port", "-l": "user", "-i": "identityfile"}
                    _set(host, var, key[flag], value, found)
            else:
                found["ignored"].append(f"{var} ({word})")
            i += 1
    return found


def _option(host: str, var: str, text: str, found: dict[str, Any]) -> None:
    match = _OPTION.fullmatch(text.strip())
    if not match:
        raise InventoryError(f"host {host!r}: {var}: -o {text!r} is not Option=value")
    name, value = match.group(1).lower(), match.group(2).strip()
    if name == "proxycommand":
        raise InventoryError(
            f"host {host!r}: {var}: ProxyCommand is not supported; EasyTask follows jump "
            "hosts: -o ProxyJump=[user@]host[:port]"
        )
    if name in ("proxyjump", "port", "user", "identityfile"):
        _set(host, var, name, value, found)
    else:
        found["ignored"].append(f"{var} (-o {match.group(1)})")


def _set(host: str, var: str, name: str, value: str, found: dict[str, Any]) -> None:
    key = {"proxyjump": "jumps", "identityfile": "key_file"}.get(name, name)
    if key in found:  # the first value wins, as in OpenSSH
        return
    if key == "jumps":
        found[key] = () if value.lower() == "none" else parse_jumps(host, var, value)
    elif key == "port":
        found[key] = _port(host, value, var)
    else:
        found[key] = value


def parse_jumps(host: str, var: str, text: str) -> tuple[Hop, ...]:
    """`[user@]host[:port]` jump hosts, comma-separated (an IPv6 address in brackets)."""
    hops = []
    for spec in text.split(","):
        spec = spec.strip().removeprefix("ssh://")
        user, at, rest = spec.rpartition("@")
        if rest.startswith("["):
            name, _, tail = rest[1:].partition("]")
            port = tail.removeprefix(":") if tail.startswith(":") else ""
            bad = bool(tail) and not tail.startswith(":")
        else:
            name, _, port = rest.partition(":")
            bad = False
        if bad or not name or (at and not user) or any(c.isspace() for c in spec):
            raise InventoryError(
                f"host {host!r}: {var}: jump host {spec!r} is not [user@]host[:port]"
            )
        hops.append(Hop(name, _port(host, port, var) if port else 22, user or None))
    return tuple(hops)


def connection_warnings(
    host_vars: Mapping[str, Mapping[str, Any]], connections: Mapping[str, str]
) -> list[str]:
    """One line per host reached over SSH and variable it sets that EasyTask does not honour."""
    lines = []
    for host, hv in host_vars.items():
        if connections.get(host) != "ssh":
            continue
        for name in ssh_options(host, hv).ignored:
            lines.append(f"host {host}: {name} is not honoured by EasyTask (ignored)")
    return lines


def _first(hv: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        if hv.get(name) not in (None, ""):
            return hv[name]
    return None


def _port(host: str, value: Any, var: str = "ansible_port") -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        port = 0
    if not 0 < port < 65536:
        raise InventoryError(f"host {host!r}: {var}: port {value!r} is not 1-65535")
    return port
