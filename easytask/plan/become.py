"""Privilege escalation (become): whom a run's command runs as, resolved as Ansible does (pure).

Levels, lowest first: the command line (`easytask run -b --become-user U`), the play's
`become`/`become_user`, the task's, then the host's inventory variables (`ansible_become`,
`ansible_become_user`, `ansible_become_method`): as in Ansible, connection variables override
playbook keywords, which override the command line.  The default user is root.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from easytask.errors import InventoryError, UsageError
from easytask.playbook.model import BECOME_USER_RE, Playbook, Task

__all__ = [
    "DEFAULT_USER",
    "METHODS",
    "Become",
    "BecomeRequest",
    "agentless_refusal",
    "check_user",
    "host_request",
    "resolve_become",
    "task_request",
]

METHODS = ("sudo", "su")
DEFAULT_USER = "root"
TRUE = ("true", "yes", "on", "1")
FALSE = ("false", "no", "off", "0", "")


@dataclass(frozen=True)
class BecomeRequest:
    """What one level asks; None leaves the level below in force."""

    become: bool | None = None
    user: str | None = None
    method: str | None = None

    def over(self, below: BecomeRequest) -> BecomeRequest:
        """This level's answers where it has them, else those of the level below."""
        return BecomeRequest(
            become=self.become if self.become is not None else below.become,
            user=self.user if self.user is not None else below.user,
            method=self.method if self.method is not None else below.method,
        )

    def as_dict(self) -> dict[str, Any]:
        """The answers this level gives (for storing with a job)."""
        return {k: v for k, v in vars(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: Any) -> BecomeRequest:
        """Read back what `as_dict` stored (unknown shapes: no request)."""
        if not isinstance(data, dict):
            return cls()
        become = data.get("become")
        return cls(
            become=become if isinstance(become, bool) else None,
            user=str(data["user"]) if data.get("user") else None,
            method=str(data["method"]) if data.get("method") else None,
        )


@dataclass(frozen=True)
class Become:
    """A run's command runs as `user`, reached by `method` (on agents, the agent's own way)."""

    user: str = DEFAULT_USER
    method: str = "sudo"


def check_user(value: Any, what: str) -> str:
    """An account name to become, checked (UsageError naming `what`)."""
    text = str(value).strip() if value is not None else ""
    if not BECOME_USER_RE.match(text):
        raise UsageError(f"{what}: {text!r} is not a user name")
    return text


def _flag(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    text = str(value).strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise InventoryError(f"{what}: {value!r} is not true or false")


HOST_VARS = ("ansible_become", "ansible_become_user", "ansible_become_method")  # host_request's


def host_request(host: str, hostvars: Mapping[str, Any]) -> BecomeRequest:
    """The inventory's `ansible_become*` variables of a host, checked (errors name the host)."""
    become = hostvars.get("ansible_become")
    user = hostvars.get("ansible_become_user")
    method = hostvars.get("ansible_become_method")
    request = BecomeRequest(
        become=_flag(become, f"host {host!r}: ansible_become") if become is not None else None,
        user=check_user(user, f"host {host!r}: ansible_become_user") if user else None,
    )
    if method is not None:
        text = str(method).strip()
        if text not in METHODS:
            raise InventoryError(
                f"host {host!r}: ansible_become_method {text!r} is not supported "
                f"(use {' or '.join(METHODS)})"
            )
        request = BecomeRequest(request.become, request.user, text)
    return request


def resolve_become(host: str, hostvars: Mapping[str, Any], *levels: BecomeRequest) -> Become | None:
    """Whom a run on `host` runs as: the levels (lowest first) under the host's inventory
    variables; None when nothing asks to become another user."""
    if not any([v in hostvars for v in HOST_VARS]) and not any([lv.become for lv in levels]):
        return None  # nothing asks (most runs: a fan-out asks this of each of thousands)
    merged = BecomeRequest()
    for level in levels:
        merged = level.over(merged)
    merged = host_request(host, hostvars).over(merged)
    if not merged.become:
        return None
    return Become(user=merged.user or DEFAULT_USER, method=merged.method or "sudo")


def task_request(
    playbook: Playbook, task: Task, command_line: BecomeRequest | None = None
) -> BecomeRequest:
    """The command line's (`play -b --become-user U`), then the play's `become`/`become_user`
    over it, then the task's over them."""
    play = BecomeRequest(become=playbook.become, user=playbook.become_user)
    if command_line is not None:
        play = play.over(command_line)
    return BecomeRequest(become=task.become, user=task.become_user).over(play)


def agentless_refusal(
    host: str, become: Become | None, connection: str = "ssh", password: bool | None = None
) -> str | None:
    """Why a run cannot become its user over plain SSH (or on the server's own host,
    `connection` local), or None. `password`: whether the host has a become password from the
    credential store (None: not known yet, when a playbook is planned).

    `su` asks for the target user's password on a terminal: without a become password (from
    the credential store, answered on that terminal, never in argv) it cannot work.
    `sudo` runs with `-n`: a host that wants a password fails the run with sudo's own message.
    """
    if become is None or become.method != "su":
        return None
    if connection == "local":
        return (
            f"host {host!r}: become method 'su' is not available on the server's own host "
            "(ansible_connection: local); use sudo (ansible_become_method=sudo)"
        )
    if password is False:
        return (
            f"host {host!r}: become method 'su' needs a become password: keep the password of "
            f"{become.user!r} in the credential store (`easytask secrets set NAME --kind "
            "become-password`) and name it with `easytask_credential: NAME`; or use sudo "
            "(ansible_become_method=sudo) with a NOPASSWD rule, or an agent on the host"
        )
    return None
