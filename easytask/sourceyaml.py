"""YAML read with the line and column of each mapping, key and value kept, for error messages."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import yaml

from easytask.errors import SourceLocation
from easytask.vault import Vault, VaultError, VaultText, is_encrypted, mark_secret

__all__ = ["Marks", "Source", "UnsafeText", "YamlError", "parse_yaml", "type_name"]

_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class UnsafeText(str):
    """A string tagged `!unsafe`: it is never rendered as a template."""

    __slots__ = ()


def type_name(value: Any) -> str:
    """What a value is, for messages: "null", "a list", "an integer", ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    name = type(value).__name__
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


class YamlError(ValueError):
    """The text cannot be loaded: `message` says why, `location` where.

    For a syntax error, `problem` is what PyYAML reports (`detail` with its context when that
    says what was expected) and `line` the text of the line it points at.
    """

    def __init__(
        self,
        message: str,
        location: SourceLocation,
        *,
        problem: str = "",
        detail: str = "",
        line: str = "",
        vault: bool = False,
    ) -> None:
        super().__init__(message)
        self.vault = vault  # a vault value that cannot be decrypted, not a syntax error
        self.message = message
        self.location = location
        self.problem = problem
        self.detail = detail or problem
        self.line = line


@dataclass
class Marks:
    """Where a mapping or list starts, and where each of its keys (and values or items) is."""

    obj: Any  # kept alive, so that its id is not reused
    start: yaml.Mark
    keys: dict[Any, yaml.Mark] = field(default_factory=dict)
    values: dict[Any, yaml.Node] = field(default_factory=dict)
    items: list[yaml.Node] = field(default_factory=list)


class _Loader(_BaseLoader):  # type: ignore[valid-type,misc]
    """PyYAML's safe loader that keeps positions and reports duplicate keys."""

    def __init__(self, stream: str, path: str, *, nodes: bool, vault: Vault | None) -> None:
        super().__init__(stream)
        self.path = path
        self.nodes = nodes
        self.vault = vault
        self.marks: dict[int, Marks] = {}
        self.duplicates: list[tuple[str, SourceLocation]] = []

    def at(self, mark: yaml.Mark) -> SourceLocation:
        return SourceLocation(self.path, mark.line + 1, mark.column + 1)

    def construct_marked_map(self, node: yaml.MappingNode) -> Iterator[dict[Any, Any]]:
        data: dict[Any, Any] = {}
        yield data
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(
                key_node, yaml.ScalarNode
            ):
                continue
            key = self.construct_object(key_node)
            if key in seen:
                self.duplicates.append(
                    (
                        f"duplicate key {key!r} (first at line {seen[key].line + 1})",
                        self.at(key_node.start_mark),
                    )
                )
            else:
                seen[key] = key_node.start_mark
        data.update(self.construct_mapping(node))
        marks = Marks(data, node.start_mark)
        for key_node, value_node in node.value:  # merged keys first, own keys last: last wins
            key = self.construct_object(key_node)
            try:
                marks.keys[key] = key_node.start_mark
                if self.nodes:
                    marks.values[key] = value_node
            except TypeError:  # an unhashable key; construct_mapping has complained already
                pass
        self.marks[id(data)] = marks

    def construct_marked_seq(self, node: yaml.SequenceNode) -> Iterator[list[Any]]:
        data: list[Any] = []
        yield data
        data.extend(self.construct_sequence(node))
        if self.nodes:
            self.marks[id(data)] = Marks(data, node.start_mark, items=list(node.value))

    def construct_unsafe(self, node: yaml.Node) -> Any:
        if isinstance(node, yaml.ScalarNode):
            return UnsafeText(self.construct_scalar(node))
        return _unsafe(self.construct_object(node, deep=True))

    def construct_vault(self, node: yaml.Node) -> Any:
        if self.vault is None or not isinstance(node, yaml.ScalarNode):
            return self.construct_undefined(node)
        envelope = str(self.construct_scalar(node))
        if self.vault.locked:
            return VaultText("", envelope)
        try:
            return VaultText(self.vault.decrypt_text(envelope), envelope)
        except VaultError as exc:
            raise YamlError(str(exc), self.at(node.start_mark), vault=True) from None


_Loader.add_constructor("tag:yaml.org,2002:map", _Loader.construct_marked_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _Loader.construct_marked_seq)
_Loader.add_constructor("!unsafe", _Loader.construct_unsafe)
_Loader.add_constructor("!vault", _Loader.construct_vault)


def _unsafe(value: Any) -> Any:
    if isinstance(value, str):
        return UnsafeText(value)
    if isinstance(value, list):
        return [_unsafe(v) for v in value]
    if isinstance(value, dict):
        return {k: _unsafe(v) for k, v in value.items()}
    return value


class Source:
    """A parsed document, its text, and where each of its values is written (YAML only).

    `duplicates` lists the keys written twice in one mapping: (message, where).
    """

    def __init__(
        self,
        path: str,
        text: str,
        data: Any,
        marks: Mapping[int, Marks] | None = None,
        duplicates: list[tuple[str, SourceLocation]] | None = None,
    ) -> None:
        self.path = path
        self.text = text
        self.data = data
        self.marks = marks or {}
        self.duplicates = duplicates or []

    @cached_property
    def lines(self) -> list[str]:
        """The text's lines."""
        return self.text.splitlines()

    def _at(self, mark: yaml.Mark | None) -> SourceLocation:
        if mark is None:
            return SourceLocation(self.path)
        return SourceLocation(self.path, mark.line + 1, mark.column + 1)

    def at(self, mapping: Any = None, key: Any = None) -> SourceLocation:
        """Where a mapping, or one of its keys (None: the mapping), starts; the file alone when unknown."""
        return self.start(mapping) if key is None else self.key(mapping, key)

    def start(self, obj: Any) -> SourceLocation:
        """Where a mapping or list starts."""
        marks = self.marks.get(id(obj))
        return self._at(marks.start if marks else None)

    def key(self, mapping: Any, key: Any) -> SourceLocation:
        """Where a key of a mapping is written (the mapping when the key is not known)."""
        marks = self.marks.get(id(mapping))
        if marks is None:
            return SourceLocation(self.path)
        try:
            return self._at(marks.keys.get(key, marks.start))
        except TypeError:  # an unhashable key
            return self._at(marks.start)

    def node(self, container: Any, where: Any) -> yaml.Node | None:
        """The node of a mapping's value (by key) or a list's item (by index), if kept."""
        marks = self.marks.get(id(container))
        if marks is None:
            return None
        if isinstance(container, list):
            return marks.items[where] if 0 <= where < len(marks.items) else None
        return marks.values.get(where)

    def value(self, container: Any, where: Any) -> SourceLocation:
        """Where a mapping's value (by key) or a list's item (by index) starts."""
        node = self.node(container, where)
        if node is None:
            return (
                self.key(container, where) if isinstance(container, dict) else self.start(container)
            )
        return self._at(node.start_mark)

    def template_at(self, container: Any, where: Any, lineno: int) -> SourceLocation:
        """Where line `lineno` of a template value is: exact in block scalars (`|`, `>`)."""
        node = self.node(container, where)
        at = self.value(container, where)
        if node is None or at.line is None or getattr(node, "style", None) not in ("|", ">"):
            return at
        line = at.line + lineno
        text = self.lines[line - 1] if 0 < line <= len(self.lines) else ""
        return SourceLocation(self.path, line, len(text) - len(text.lstrip()) + 1)


def parse_yaml(text: str, path: str, *, nodes: bool = False, vault: Vault | None = None) -> Source:
    """Parse YAML with positions; YamlError names file:line:col.

    `nodes` keeps each value's node and each list's items too (for `Source.value`,
    `Source.template_at`). With a `vault`, `!vault` values are decrypted and a text encrypted
    whole (`$ANSIBLE_VAULT;...`) is decrypted first; every string that came out of a vault is a
    `VaultText` (a secret). Without one, `!vault` is an unknown tag.
    """
    if vault is not None and is_encrypted(text):
        if vault.locked:
            return Source(path, "", None)
        try:
            plain = vault.decrypt_text(text, "file")
        except VaultError as exc:
            raise YamlError(str(exc), SourceLocation(path, 1, 1), vault=True) from None
        source = parse_yaml(plain, path, nodes=nodes, vault=vault)
        mark_secret(source.data)
        return source
    loader = _Loader(text, path, nodes=nodes, vault=vault)
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = loader.at(mark) if mark else SourceLocation(path)
        problem = exc.problem or exc.context or "not valid YAML"
        detail = problem
        if exc.problem and exc.context and exc.context.startswith("expected"):
            detail = f"{exc.context}, {exc.problem}"
        lines = text.splitlines()
        line = lines[mark.line] if mark and mark.line < len(lines) else ""
        raise YamlError(
            f"invalid YAML: {problem}", where, problem=problem, detail=detail, line=line
        ) from None
    except yaml.YAMLError as exc:
        raise YamlError(f"invalid YAML: {exc}", SourceLocation(path), problem=str(exc)) from None
    finally:
        loader.dispose()
    return Source(path, text, data, loader.marks, loader.duplicates)
