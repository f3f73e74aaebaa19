"""Command lines that run a command as another user through `sudo` (agents and agentless hosts).

`sudo -n` never asks for a password: a host that wants one fails the run with sudo's own
message (`a password is required`).  A become password, when there is one, is written to sudo's
stdin (`sudo -S`), never put in a command line: see `sudo_line(password=True)`.

Stopping such a run: the caller (the agent, or the SSH user) may signal sudo but not the
command, which belongs to another user.  sudo passes a TERM on to its child, the wrapper shell
below; the wrapper, running as the target user, sends TERM to the whole process group and KILL
after `grace` seconds to what is left of it.

`su` (`ansible_become_method: su`, agentless hosts) asks for the target user's password on a
terminal: its session gets a pseudo-terminal (`SU_TERM_MODES`: no echo, no signals, no CR), and
`SuDialog` answers the prompt with the become password and keeps su's dialogue out of the
output. On a terminal stdout and stderr are one stream: such a run's output is all stdout.
"""

from __future__ import annotations

import secrets
import shlex
from typing import Any

import asyncssh

__all__ = ["SU_TERM_MODES", "SuDialog", "su_line", "sudo_command", "sudo_line"]

# Runs "$1" as the target user in its home; forwards a TERM to the group, KILL after the grace;
# ends as the command ended (its exit code, or the signal that killed it).
_WRAPPER = (
    'cd "$HOME" 2>/dev/null || cd /; '
    'trap \'trap "" TERM; kill -TERM 0 2>/dev/null; '
    "(sleep {grace}; kill -KILL 0) </dev/null >/dev/null 2>&1 &' TERM; "
    '/bin/sh -c "$1" & c=$!; wait "$c"; s=$?; '
    'if [ "$s" -gt 128 ] && kill -0 "$c" 2>/dev/null; then wait "$c"; s=$?; fi; '
    'if [ "$s" -gt 128 ]; then trap - TERM; kill -$((s - 128)) $$; fi; exit "$s"'
)


def sudo_line(
    user: str, command: str, *, grace: float = 5.0, password: bool = False, prelude: str = ""
) -> str:
    """`sudo -n -H -u USER -- /bin/sh -c WRAPPER sh COMMAND`: the command as USER, quoted as one
    word, with HOME its home and the home as working directory (when it can be entered).

    `prelude` (shell text, no secret in it: `env_on_stdin`'s reads) runs first in the wrapper,
    in the foreground as USER, so what it reads from stdin and exports reaches the command.

    With `password`, `-S -p ''` instead of `-n`: sudo reads the become password from the
    first line of stdin, which the caller writes (never argv, never the environment).
    """
    mode = "-S -p ''" if password else "-n"
    wrapper = prelude + _WRAPPER.replace("{grace}", f"{max(grace, 0.1):g}")
    return (
        f"sudo {mode} -H -u {shlex.quote(user)} -- /bin/sh -c {shlex.quote(wrapper)} sh "
        f"{shlex.quote(command)}"
    )


def sudo_command(
    user: str, command: str, *, grace: float, prelude: str = "", password: str | None = None
) -> tuple[str, bytes]:
    """`sudo_line` and the bytes that go first on the command's stdin.

    With a become password: `sudo -S` reads its first line, and a marker line follows that the
    prelude skips to (as the user), so a sudo that asks for no password (a NOPASSWD rule, a
    cached ticket) leaves nothing of it to the command. Only the first line of a password is
    sent. Without one: `sudo -n`, nothing on stdin.
    """
    if password is None:
        return sudo_line(user, command, grace=grace, prelude=prelude), b""
    marker = f"easytask-{secrets.token_hex(8)}"
    skip = f'while IFS= read -r _et_m; do [ "$_et_m" = {marker} ] && break; done; unset _et_m; '
    line = sudo_line(user, command, grace=grace, password=True, prelude=skip + prelude)
    first = password.split("\n", 1)[0]
    return line, f"{first}\n{marker}\n".encode()


# `su` on a terminal: nothing echoed (a password or a secret the command reads), no CR added to
# output lines, and no byte sent taken as a signal, an erase or an end of file: canonical lines
# only, as su's password prompt reads one.
_OFF = 255  # a special character disabled (RFC 4254 8: OpenSSH maps it to _POSIX_VDISABLE)
SU_TERM_MODES = {
    asyncssh.PTY_ECHO: 0,
    asyncssh.PTY_ECHONL: 0,
    asyncssh.PTY_OPOST: 0,
    asyncssh.PTY_ISIG: 0,
    asyncssh.PTY_IEXTEN: 0,
    asyncssh.PTY_IXON: 0,
    asyncssh.PTY_ICRNL: 0,
    **{
        c: _OFF
        for c in (
            asyncssh.PTY_VINTR,
            asyncssh.PTY_VQUIT,
            asyncssh.PTY_VERASE,
            asyncssh.PTY_VKILL,
            asyncssh.PTY_VEOF,
            asyncssh.PTY_VEOL,
            asyncssh.PTY_VEOL2,
            asyncssh.PTY_VSTART,
            asyncssh.PTY_VSTOP,
            asyncssh.PTY_VSUSP,
            asyncssh.PTY_VREPRINT,
            asyncssh.PTY_WERASE,
            asyncssh.PTY_VLNEXT,
            asyncssh.PTY_VDISCARD,
        )
    },
}
SU_LINE_MAX = 4000  # bytes of one line a terminal takes in canonical mode (4095), with a margin


def su_line(user: str, command: str, *, grace: float = 5.0, prelude: str = "", marker: str) -> str:
    """`su USER -c '/bin/sh -c WRAPPER sh COMMAND'`: the command as USER through `su`, which
    asks for USER's password on its terminal (see `SuDialog`). As USER, the wrapper first prints
    `marker` on a line of its own (su let it in: what came before was su's dialogue), then runs
    `prelude` (`env_on_stdin`'s reads) and the command as `sudo_line` does."""
    wrapper = (
        f"printf '%s\\n' {marker}; " + prelude + _WRAPPER.replace("{grace}", f"{max(grace, 0.1):g}")
    )
    # `exec`: su passes a TERM on to its child, the user's shell, which must be the wrapper
    inner = f"exec /bin/sh -c {shlex.quote(wrapper)} sh {shlex.quote(command)}"
    return f"su {shlex.quote(user)} -c {shlex.quote(inner)}"


class SuDialog:
    """The server's side of su's terminal: answers its password prompt with the become password
    (from the credential store; written to the terminal, echo off, never in a command line), and
    once the command's wrapper says it runs as the user, hands it its stdin (the environment
    values). Nothing before that marker is kept: the prompt and what su wrote are dialogue."""

    def __init__(self, password: str, stdin: bytes, marker: str) -> None:
        self._password = password.split("\n", 1)[0].encode() + b"\n"
        self._stdin = stdin
        self._marker = marker.encode() + b"\n"
        self._seen = b""
        self._asked = False
        self._pending: list[bytes] = []
        self._chan: Any = None
        self.passed = False  # the command runs: what comes now is its output

    def attach(self, chan: Any) -> None:
        """The terminal's channel, once open: what was to be written goes now."""
        self._chan = chan
        for data in self._pending:
            chan.write(data)
        self._pending.clear()

    def _write(self, data: bytes) -> None:
        if self._chan is None:
            self._pending.append(data)
        else:
            self._chan.write(data)

    def feed(self, data: bytes) -> bytes:
        """What of a chunk of the terminal's output is the command's (b"" while in dialogue)."""
        if self.passed:
            return data
        self._seen += data
        at = self._seen.find(self._marker)
        if at >= 0:
            rest = self._seen[at + len(self._marker) :]
            self._seen = b""
            self.passed = True
            if self._stdin:
                self._write(self._stdin)
            return rest
        if not self._asked and self._seen.rstrip().endswith(b":"):
            # su's prompt ("Password: ", in any language): the answer goes after it, as a
            # terminal discards what was typed ahead when it turns echo off
            self._asked = True
            self._seen = b""
            self._write(self._password)
        return b""

    def said(self) -> str:
        """What su wrote after the password when the command never started (its error)."""
        text = self._seen.decode("utf-8", "replace").replace("\r", "")
        return " ".join(text.split())[:500]


def become_command(
    user: str,
    method: str,
    command: str,
    *,
    grace: float,
    prelude: str = "",
    stdin: bytes = b"",
    password: str | None = None,
) -> tuple[str, bytes, SuDialog | None]:
    """The line that runs `command` as `user` by `method` (sudo or su) with `prelude` run first
    as the user; the bytes to write on its stdin now (`stdin` after sudo's password, see
    `sudo_command`); for su, the dialogue that answers its terminal and then writes `stdin`.
    ValueError for su without a password, or with a line of `stdin` too long for a terminal."""
    if method != "su":
        line, first = sudo_command(user, command, grace=grace, prelude=prelude, password=password)
        return line, first + stdin, None
    if password is None:
        raise ValueError("become method 'su' needs a become password")
    if any(len(part) > SU_LINE_MAX for part in stdin.split(b"\n")):
        raise ValueError(
            f"a value for the command is over {SU_LINE_MAX} bytes on one line, more than su's "
            "terminal takes"
        )
    marker = f"easytask-{secrets.token_hex(8)}"
    line = su_line(user, command, grace=grace, prelude=prelude, marker=marker)
    return line, b"", SuDialog(password, stdin, marker)
