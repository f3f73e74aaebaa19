"""Secret values: masked as `****` in every stored and shown line, passed to commands as env."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping

MASK = "****"
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
MAX_VALUE = 64 * 1024


class Masker:
    """Replaces every occurrence of any secret value in a line with `****`.

    Output is masked line by line, so a value with newlines is masked by each of its lines.
    """

    def __init__(self, values: Iterable[str] = ()) -> None:
        parts = {piece for value in values for piece in str(value).splitlines() if piece.strip()}
        # longest first, so a secret that contains another is masked whole
        ordered = sorted(parts, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __bool__(self) -> bool:
        return self._pattern is not None

    def __call__(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(MASK, text)


def env_prefix(env: Mapping[str, str]) -> str:
    """Shell lines that export each secret to the command that follows (see `lift_exports`)."""
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items())


# One line of `env_prefix`: a name, then a word as shlex.quote writes it (bare safe characters,
# or single-quoted pieces joined by "'" for each quote inside).
_EXPORT_LINE = re.compile(
    r"export ([A-Za-z_][A-Za-z0-9_]*)=((?:'[^']*'|\"'\"|[\w@%+=:,./-])+)\n", re.ASCII
)
# Variables a shell acts on when it starts (a startup file, options, field splitting): an
# export of one of these stays in the command, where it acts only after the start, as written.
_AT_START = frozenset(["BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "IFS", "PS4", "CDPATH"])


def lift_exports(command: str) -> tuple[dict[str, str], str]:
    """The leading `export NAME=VALUE` lines of a command (as `env_prefix` writes them) as
    variables, and the command without them.

    Started with those variables in its environment, the command's shell sees what the exports
    would have given it, and the values stay out of its command line, which `ps` shows to
    every user of the host (a process's environment is for its own user and root only).
    """
    env: dict[str, str] = {}
    pos = 0
    while (m := _EXPORT_LINE.match(command, pos)) is not None and m[1] not in _AT_START:
        env[m[1]] = shlex.split(m[2])[0]
        pos = m.end()
    return env, command[pos:]


def check_secret_env(env: object) -> dict[str, str]:
    """A submitted `secrets` object: shell variable names to string values; ValueError if not."""
    if env is None:
        return {}
    if not isinstance(env, dict):
        raise ValueError("secrets must be an object of NAME: value")
    out: dict[str, str] = {}
    for name, value in env.items():
        if not isinstance(name, str) or not ENV_NAME.match(name):
            raise ValueError(f"secret name {name!r} is not a shell variable name")
        if not isinstance(value, str) or not value or len(value) > MAX_VALUE:
            raise ValueError(
                f"secret {name}: the value must be a non-empty string (at most 64 KiB)"
            )
        out[name] = value
    return out
