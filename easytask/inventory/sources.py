"""Inventory sources read into `InventoryData`, as Ansible's plugins read them: `host1,host2,`
lists, directories (hidden, vars and backup names skipped), executable scripts, and files tried
as YAML first, then INI (TOML by its extension)."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path

from easytask.errors import InventoryError, SourceLocation
from easytask.inventory.hostnames import AddressError, parse_address
from easytask.inventory.ini import parse_ini
from easytask.inventory.model import InventoryData
from easytask.inventory.script import ScriptRunner, is_script, parse_script
from easytask.inventory.yamlfile import VaultFileError, load_document, parse_structured
from easytask.sourceyaml import Source, type_name
from easytask.vault import Vault

# Names Ansible skips inside an inventory directory: hidden files, vars dirs, backup/doc extensions.
_IGNORED_EXTENSIONS = (
    ".pyc", ".pyo", ".swp", ".bak", "~", ".rpm", ".md", ".txt", ".rst", ".orig", ".cfg", ".retry",
)  # fmt: skip
_IGNORED = re.compile(
    "|".join(
        [r"^\.", "^host_vars$", "^group_vars$", "^vars_plugins$"]
        + [re.escape(ext) + "$" for ext in _IGNORED_EXTENSIONS]
    )
)
_YAML_EXTENSIONS = (".yaml", ".yml", ".json")


def parse_host_list(text: str, data: InventoryData) -> None:
    """`-i 'web1,web2:2222,'`: hosts separated by commas, all in `ungrouped`."""
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            name, port = parse_address(item)
        except AddressError:
            name, port = item, None
        if name not in data.hosts:
            data.add_host(name, "ungrouped", port)


def parse_source(
    path: Path, data: InventoryData, scripts: ScriptRunner | None, vault: Vault
) -> None:
    """Read a file, a directory's entries in name order, or an executable script's output."""
    if path.is_dir():
        for entry in sorted(os.listdir(path)):
            if not _IGNORED.search(entry):
                parse_source(path / entry, data, scripts, vault)
        return
    data.current_source = str(path)
    try:
        if is_script(path):
            if scripts is None:
                raise InventoryError(f"{path} is an inventory script, and scripts are not run here")
            if parse_script(os.path.abspath(path), scripts, data):
                return
        try:
            _parse_file(path, data, vault)
        except InventoryError as exc:
            if not is_script(path) and path.read_bytes().startswith(b"#!"):
                exc.message += " (a file starting with #! is run as an inventory script only when it is executable: chmod +x it)"
            raise
    finally:
        data.current_source = None


def read_text(path: Path) -> str:
    """A file's text; an error naming the file (and the line of bytes that are not UTF-8)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InventoryError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InventoryError("not valid UTF-8", location=SourceLocation(str(path), line)) from None


def _parse_file(path: Path, data: InventoryData, vault: Vault) -> None:
    """Parse one file the way Ansible's plugins take turns: YAML first if it may be YAML, then INI."""
    text = read_text(path)
    name = str(path)
    ext = os.path.splitext(name)[1]
    if ext == ".toml":
        _parse_toml(text, name, data)
        return
    if ext and ext not in _YAML_EXTENSIONS:
        parse_ini(text, name, data)
        return
    yaml_error: InventoryError | None = None
    try:
        doc = load_document(text, name, vault)
    except VaultFileError:
        raise
    except InventoryError as exc:
        yaml_error = exc
    else:
        if isinstance(doc.data, Mapping) or doc.data is None:
            if doc.data:
                parse_structured(doc, data)
            return
        yaml_error = InventoryError(
            f"a YAML inventory must be a mapping of group names, got {type_name(doc.data)}",
            location=doc.at(),
        )
    # Not a YAML inventory: Ansible then tries the file as INI.
    try:
        parse_ini(text, name, data)
    except InventoryError:
        if ext:
            raise yaml_error from None
        raise


def _parse_toml(text: str, path: str, data: InventoryData) -> None:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+), column (\d+)\)$", str(exc))
        at = SourceLocation(path, int(m[1]), int(m[2])) if m else SourceLocation(path)
        message = str(exc)[: m.start()].strip() if m else str(exc)
        raise InventoryError(f"invalid TOML: {message}", location=at) from None
    if doc:
        parse_structured(Source(path, "", doc), data, kind="TOML")
