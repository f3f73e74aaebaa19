"""What an agent lets its server do on this host, enforced by the agent itself.

The server decides what runs where; the agent decides what it will run at all.  A compromised
or misconfigured server cannot get past these limits:

- `--run-as USER`: commands and file transfers run as that user (the agent itself needs to be
  root for a user other than its own); file transfers switch to the user's filesystem identity
  for every path (easytask.agent.sftp), so the kernel checks each path as for that user.
- `--allow PATTERN` (repeatable): only commands matching a pattern run.  A pattern is matched
  against the command's words joined by single spaces (`*` matches anything, including spaces;
  `?` and `[...]` as in shell globs).  With an allowlist, commands may not use shell syntax
  (`;`, `|`, `&`, redirections, `$`, backquotes, globs, ...): the command is exactly the words the
  pattern saw.
- `--no-files`: no file transfers (copy, script, fetch) at all.
- `--file-dir DIR` (repeatable): file transfers may touch only paths inside these directories
  (after resolving symlinks and `..`; easytask.agent.sftp).  With an allowlist and no `--file-dir`,
  file transfers are off: SFTP could otherwise write `~/.ssh/authorized_keys` or a cron file and
  get past the allowlist.
- `--slots N`: at most N runs at once; the agent refuses more even if its server asks.
- `--allow-become USER,...`: the users a run may ask to become (`become`, `easytask run -b`);
  default none.  A root agent starts such a command as the user itself (uid, gid, supplementary
  groups, login environment); any other agent runs it through `sudo -n -u USER`.  Asking for
  the user commands run as anyway (the `--run-as` user, else the agent's own) is no change and
  always allowed.  With `--run-as`, that user is the default and `--allow-become` names the
  users a run may ask for instead.
"""

from __future__ import annotations

import fnmatch
import os
import platform
import pwd
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Characters that make a command more than a list of words; refused when an allowlist is set.
SHELL_SYNTAX = set(";&|<>()$`\\\n\r*?[]{}~!#")
BECOME_USER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?\Z")


class PolicyError(ValueError):
    """A policy that cannot be enforced on this host (bad user, no sftp-server, ...)."""


@dataclass(frozen=True)
class Account:
    """The user commands run as."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    shell: str = "/bin/sh"

    def spec(self) -> dict[str, Any]:
        """How the supervisor learns whom to run a command as."""
        return {
            "name": self.name,
            "uid": self.uid,
            "gid": self.gid,
            "groups": list(self.groups),
            "home": self.home,
        }


@dataclass(frozen=True)
class Policy:
    """The limits of one agent."""

    run_as: Account | None = None
    allow: tuple[str, ...] = ()
    files: bool = True
    slots: int = 4
    file_dirs: tuple[str, ...] = ()  # real paths: file transfers stay inside them (empty: anywhere)
    allow_become: tuple[str, ...] = ()  # users a run may ask to become (--allow-become)

    @property
    def default_user(self) -> str:
        """The user commands run as when a run asks for no other."""
        if self.run_as is not None:
            return self.run_as.name
        try:
            return pwd.getpwuid(os.geteuid()).pw_name
        except KeyError:
            return str(os.geteuid())

    def become(self, user: str) -> tuple[Account | None, str | None]:
        """The account a run that asks to become `user` runs as (None: no change), or why it
        may not."""
        if user == self.default_user:
            return None, None
        if user not in self.allow_become:
            allowed = ",".join(self.allow_become)
            if not allowed:
                return None, (
                    f"become {user!r} is not allowed: this agent allows no become "
                    "(--allow-become names the users a run may ask for)"
                )
            return None, f"become {user!r} is not allowed on this agent (--allow-become {allowed})"
        try:
            account = account_of(user)
        except KeyError:
            return None, f"become {user!r}: no such user on this host"
        if os.geteuid() != 0 and shutil.which("sudo") is None:
            return None, f"become {user!r}: this agent is not root and sudo is not installed"
        return account, None

    def files_refusal(self) -> str | None:
        """Why this agent makes no file transfers at all, or None."""
        if not self.files:
            return "file transfers are off on this agent (--no-files)"
        if self.allow and not self.file_dirs:
            return (
                "file transfers are off on this agent: it runs allowlisted commands only (--allow) "
                "and names no directory for them (--file-dir)"
            )
        return None

    def refusal(self, command: str) -> str | None:
        """Why this command may not run here, or None."""
        if not self.allow:
            return None
        syntax = sorted({ch for ch in command if ch in SHELL_SYNTAX})
        if syntax:
            shown = " ".join(repr(ch) for ch in syntax)
            return (
                f"shell syntax ({shown}) is not allowed: this agent runs allowlisted commands only"
            )
        try:
            words = shlex.split(command)
        except ValueError as exc:
            return f"cannot read the command: {exc}"
        line = " ".join(words)
        if not any(fnmatch.fnmatchcase(line, pattern) for pattern in self.allow):
            return f"{line!r} is not in this agent's allowlist (--allow)"
        return None

    def describe(self) -> dict[str, Any]:
        """What the server and the console may show about this agent's limits."""
        return {
            "run_as": self.run_as.name if self.run_as else None,
            "allow": list(self.allow),
            "files": self.files_refusal() is None,
            "file_dirs": list(self.file_dirs),
            "slots": self.slots,
            "become": list(self.allow_become),
        }


def make_policy(
    run_as: str | None = None,
    allow: list[str] | None = None,
    files: bool = True,
    slots: int = 4,
    file_dirs: list[str] | None = None,
    allow_become: list[str] | None = None,
) -> Policy:
    """Check the options against this host and build the policy (PolicyError when it cannot)."""
    patterns = tuple(p.strip() for p in allow or () if p.strip())
    dirs: list[str] = []
    for given in file_dirs or ():
        real = os.path.realpath(given)
        if not os.path.isdir(real):
            raise PolicyError(f"--file-dir {given}: no such directory")
        if real not in dirs:
            dirs.append(real)
    transfers = files and (bool(dirs) or not patterns)
    become: list[str] = []
    for given in allow_become or ():
        for name in (n.strip() for n in given.split(",")):
            if not name:
                continue
            if not BECOME_USER.match(name):
                raise PolicyError(f"--allow-become {name!r}: not a user name")
            if name not in become:
                become.append(name)
    account = None
    if run_as:
        try:
            entry = pwd.getpwnam(run_as)
        except KeyError:
            raise PolicyError(f"--run-as {run_as}: no such user on this host") from None
        if os.geteuid() not in (0, entry.pw_uid):
            me = pwd.getpwuid(os.geteuid()).pw_name
            raise PolicyError(
                f"--run-as {run_as}: the agent runs as {me}; only root can run commands "
                "as another user"
            )
        account = account_of(run_as)
        if transfers and entry.pw_uid != os.geteuid() and not sftp_switch_supported():
            raise PolicyError(
                f"--run-as {run_as}: file transfers as another user are not supported on this "
                "machine; start the agent with --no-files"
            )
    if slots < 1:
        raise PolicyError("--slots must be at least 1")
    return Policy(
        run_as=account,
        allow=patterns,
        files=files,
        slots=slots,
        file_dirs=tuple(dirs),
        allow_become=tuple(become),
    )


def account_of(name: str) -> Account:
    """A user of this host as commands run as it (KeyError: no such user)."""
    entry = pwd.getpwnam(name)
    return Account(
        name=entry.pw_name,
        uid=entry.pw_uid,
        gid=entry.pw_gid,
        groups=tuple(os.getgrouplist(entry.pw_name, entry.pw_gid)),  # initgroups(3)'s list
        home=entry.pw_dir if Path(entry.pw_dir).is_dir() else "/",
        shell=entry.pw_shell or "/bin/sh",
    )


# setgroups(2) system call numbers: libc's setgroups() would change every thread of the process.
SETGROUPS_SYSCALLS = {"x86_64": 116, "aarch64": 159, "arm64": 159}


def sftp_switch_supported() -> bool:
    """Whether file transfers can act as another user here (Linux on x86_64 or arm64)."""
    return platform.system() == "Linux" and platform.machine() in SETGROUPS_SYSCALLS


def quoteless(reason: str) -> str:
    """A refusal without the quoted command (it may hold rendered secrets)."""
    return re.sub(r"^'.*' is not in", "the command is not in", reason, flags=re.S)
