"""Playbooks: read a file, parse its YAML and check it; all problems raised together."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from easytask.errors import PlaybookError, SourceLocation
from easytask.playbook.check import PlaybookChecker
from easytask.playbook.model import Playbook, PlaybookErrors
from easytask.sourceyaml import Source, YamlError, parse_yaml
from easytask.vault import Vault, is_encrypted

__all__ = ["load_playbook", "load_yaml", "parse_playbook"]


# -- YAML with positions ----------------------------------------------------------------------


def load_yaml(
    text: str, path: str, vault: Vault | None = None
) -> tuple[Any, list[PlaybookError], Source]:
    """Parse YAML: (data, duplicate-key problems, position source); syntax errors raise.

    `!vault` values are decrypted with `vault` (none: `!vault` is an unknown tag)."""
    try:
        source = parse_yaml(text, path, nodes=True, vault=vault)
    except YamlError as exc:
        message = f"invalid YAML: {exc.detail}{_yaml_hint(exc.detail, exc.line)}"
        if exc.vault:
            message = exc.message
        raise PlaybookErrors([PlaybookError(message, location=exc.location)]) from None
    problems = [PlaybookError(message, location=at) for message, at in source.duplicates]
    return source.data, problems, source


def _yaml_hint(problem: str, line: str) -> str:
    """Advice for the YAML mistakes people make most in playbooks."""
    if "{{" in line:
        return ' (quote a value that starts with {{ or sits inside { }, as in "{{ x }} y")'
    if "mapping values are not allowed" in problem:
        return " (quote a value that contains ': ')"
    if "\t" in line[: len(line) - len(line.lstrip())]:
        return " (indent with spaces, not tabs)"
    return ""


# -- loading ----------------------------------------------------------------------------------


def load_playbook(path: str | Path, vault: Vault | None = None) -> Playbook:
    """Read and check a playbook file; raises PlaybookError (PlaybookErrors for its contents).

    `vault` decrypts its `!vault` values and vaulted `vars_files` (none: no password)."""
    name = str(path)
    try:
        raw = Path(name).read_bytes()
    except OSError as exc:
        raise PlaybookError(f"cannot read {name}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise PlaybookErrors(
            [PlaybookError("not valid UTF-8", location=SourceLocation(name, line))]
        ) from None
    return parse_playbook(text, name, vault)


def parse_playbook(text: str, path: str | Path, vault: Vault | None = None) -> Playbook:
    """Check a playbook's text; `path` names it in errors, and its directory holds its files."""
    name = str(path)
    if is_encrypted(text):
        message = "an encrypted playbook is not supported: put its secrets in vaulted vars_files"
        raise PlaybookErrors([PlaybookError(message, location=SourceLocation(name, 1, 1))])
    data, problems, source = load_yaml(text, name, vault if vault is not None else Vault())
    checker = PlaybookChecker(source, name, vault)
    playbook = checker.play(data, text)
    errors = _in_file_order(problems + checker.errors)
    if errors or playbook is None:
        raise PlaybookErrors(errors or [PlaybookError("the playbook is not valid")])
    return playbook


def _in_file_order(errors: list[PlaybookError]) -> list[PlaybookError]:
    def key(e: PlaybookError) -> tuple[int, int]:
        at = e.location
        return (at.line or 0, at.col or 0) if at else (0, 0)

    unique = list({(str(e.location), e.message): e for e in errors}.values())
    return sorted(unique, key=key)
