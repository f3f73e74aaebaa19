"""Command lines that run a command as another user through `sudo` (agents and agentless hosts).

`sudo -n` never asks for a password: a host that wants one fails the run with sudo's own
message (`a password is required`).  A become password, when there is one, is written to sudo's
stdin (`sudo -S`), never put in a command line: see `sudo_line(password=True)`.

Stopping such a run: the caller (the agent, or the SSH user) may signal sudo but not the
command, which belongs to another user.  sudo passes a TERM on to its child, the wrapper shell
below; the wrapper, running as the target user, sends TERM to the whole process group and KILL
after `grace` seconds to what is left of it.
"""

from __future__ import annotations

import secrets
import shlex

__all__ = ["sudo_command", "sudo_line"]

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
