"""group_vars/ and host_vars/ beside each inventory source: `NAME`, `NAME.yml`, `NAME.yaml` or
`NAME.json`, or a directory of such files, read like Ansible's host_group_vars plugin."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from easytask.errors import InventoryError
from easytask.inventory.sources import read_text
from easytask.inventory.yamlfile import load_document
from easytask.sourceyaml import type_name
from easytask.vault import Vault

_VARS_EXTENSIONS = ("", ".yml", ".yaml", ".json")  # looked up in this order; the first one wins


class VarsFiles:
    """group_vars/ and host_vars/ beside each inventory source, read like Ansible's host_group_vars."""

    def __init__(self, dirs: list[Path], vault: Vault) -> None:
        self.dirs = dirs
        self.vault = vault
        self.warnings: list[str] = []
        self._cache: dict[tuple[int, str, str], dict[str, Any]] = {}

    def preload(self, kind: str, names: Mapping[str, object]) -> None:
        """Read the files of every entity now, so that errors show when the inventory loads."""
        for index in range(len(self.dirs)):
            for name in names:
                self.get(index, kind, name)

    def get(self, index: int, kind: str, name: str) -> dict[str, Any]:
        key = (index, kind, name)
        if key not in self._cache:
            self._cache[key] = self._load(self.dirs[index], kind, name)
        return self._cache[key]

    def _load(self, base: Path, kind: str, name: str) -> dict[str, Any]:
        if name.startswith(os.sep):
            return {}
        folder = base / kind
        if not folder.is_dir():
            if folder.exists():
                message = f"{folder} is not a directory; skipping it"
                if message not in self.warnings:
                    self.warnings.append(message)
            return {}
        merged: dict[str, Any] = {}
        for file in _vars_files(folder, name):
            doc = load_document(read_text(file), str(file), self.vault)
            if not doc.data:
                continue
            if not isinstance(doc.data, Mapping):
                raise InventoryError(
                    f"a vars file must be a mapping of variables, got {type_name(doc.data)}",
                    location=doc.at(),
                )
            merged.update(doc.data)
        return merged


def _vars_files(folder: Path, name: str) -> list[Path]:
    """`NAME`, else NAME.yml, NAME.yaml, NAME.json; a directory stands for all files inside it."""
    for ext in _VARS_EXTENSIONS:
        candidate = folder / (name + ext)
        if candidate.exists():
            return _files_in(candidate) if candidate.is_dir() else [candidate]
    return []


def _files_in(folder: Path) -> list[Path]:
    found: list[Path] = []
    for entry in sorted(os.listdir(folder)):
        if entry.startswith(".") or entry.endswith("~"):
            continue
        path = folder / entry
        ext = os.path.splitext(entry)[1]
        if path.is_dir() and not ext:
            found.extend(_files_in(path))
        elif path.is_file() and (not ext or ext in _VARS_EXTENSIONS):
            found.append(path)
    return found
