"""Templates in commands and conditions: sandboxed Jinja2 with strict undefined variables (pure code)."""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from collections.abc import Iterator, Mapping, Sequence
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Template, nodes
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError
from jinja2.meta import find_undeclared_variables
from jinja2.parser import Parser
from jinja2.runtime import Context, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from easytask.errors import TemplateError
from easytask.sourceyaml import UnsafeText

__all__ = [
    "Vars",
    "attribute_refs",
    "evaluate",
    "is_template",
    "render",
    "syntax_problem",
    "variables",
]

_MARKERS = ("{{", "{%", "{#")
_UNDEFINED = re.compile(r"'(.+)' is undefined")
MAX_SEQUENCE = 1_000_000  # longest string or list `*` may build in a template
MAX_POWER_BITS = 100_000  # largest integer `**` may build in a template


def quote(value: Any) -> str:
    """Shell-quote a value as one word (`None` is the empty word, other values their text)."""
    return shlex.quote("" if value is None else str(value))


def to_bool(value: Any) -> bool:
    """Ansible's `bool` filter: yes/on/true/1 (any case) are true, everything else false."""
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("yes", "on", "1", "true", "y", "t")


def to_json(value: Any) -> str:
    """A value as compact JSON text."""
    return json.dumps(value, ensure_ascii=False, default=str)


class _Environment(ImmutableSandboxedEnvironment):
    """The sandbox, with messages a user understands and bounds on `*` and `**`."""

    intercepted_binops = frozenset(["*", "**"])

    def unsafe_undefined(self, obj: Any, attribute: str) -> Undefined:
        return self.undefined(
            f"unsafe access to attribute {attribute!r} is not allowed in a template",
            name=attribute,
            obj=obj,
            exc=SecurityError,
        )

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if (
                    isinstance(seq, str | list | tuple)
                    and isinstance(times, int)
                    and len(seq) * times > MAX_SEQUENCE
                ):
                    raise SecurityError(
                        f"'*' would build a value of {len(seq) * times} items (the limit is {MAX_SEQUENCE})"
                    )
        elif (
            isinstance(left, int)
            and isinstance(right, int)
            and abs(left) > 1
            and right * abs(left).bit_length() > MAX_POWER_BITS
        ):
            raise SecurityError("'**' would build a number too large for a template")
        return super().call_binop(context, operator, left, right)


ENV = _Environment(
    undefined=StrictUndefined,
    autoescape=False,
    keep_trailing_newline=True,
)
ENV.filters.update(
    quote=quote,
    bool=to_bool,
    to_json=to_json,
    from_json=json.loads,
    basename=posixpath.basename,
    dirname=posixpath.dirname,
)


def is_template(value: Any) -> bool:
    """True for a string that holds Jinja2 markup (`{{`, `{%`, `{#`) and is not tagged `!unsafe`."""
    return (
        isinstance(value, str)
        and not isinstance(value, UnsafeText)
        and any(m in value for m in _MARKERS)
    )


# -- compiling --------------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _compiled(source: str) -> tuple[Template, frozenset[str]]:
    tree = ENV.parse(source)
    return ENV.from_string(tree), frozenset(find_undeclared_variables(tree))


def _parse_expression(source: str) -> nodes.Expr:
    parser = Parser(ENV, source, state="variable")
    expr = parser.parse_expression()
    if not parser.stream.eos:
        token = parser.stream.current
        raise TemplateSyntaxError(f"unexpected {token.value!r} after the expression", token.lineno)
    return expr


@lru_cache(maxsize=4096)
def _compiled_expression(source: str) -> tuple[Any, frozenset[str]]:
    tree = _parse_expression(source)
    found = [tree, *tree.find_all(nodes.Name)]  # find_all skips the root node itself
    names = frozenset(n.name for n in found if isinstance(n, nodes.Name) and n.ctx == "load")
    return ENV.compile_expression(source, undefined_to_none=False), names


def syntax_problem(source: str, *, expression: bool = False) -> tuple[int, str] | None:
    """`(line, message)` of the first syntax error in a template (or a bare expression), else None."""
    try:
        if expression:
            _compiled_expression(source)
        else:
            _compiled(source)
    except TemplateSyntaxError as exc:
        return exc.lineno, exc.message or "invalid syntax"
    return None


def variables(source: str, *, expression: bool = False) -> frozenset[str]:
    """The names a template (or a bare expression) reads from its context."""
    return (_compiled_expression(source) if expression else _compiled(source))[1]


def attribute_refs(source: str, name: str, *, expression: bool = False) -> list[str]:
    """The constant attributes or keys a template reads of variable `name` (`results.x`, `results['x']`)."""
    try:
        tree: nodes.Node = _parse_expression(source) if expression else ENV.parse(source)
    except TemplateSyntaxError:
        return []
    found: list[str] = []
    for node in [tree, *tree.find_all((nodes.Getattr, nodes.Getitem))]:
        target = getattr(node, "node", None)
        if not (isinstance(target, nodes.Name) and target.name == name):
            continue
        if isinstance(node, nodes.Getattr):
            found.append(node.attr)
        elif (
            isinstance(node, nodes.Getitem)
            and isinstance(node.arg, nodes.Const)
            and isinstance(node.arg.value, str)
        ):
            found.append(node.arg.value)
    return list(dict.fromkeys(found))


# -- variables --------------------------------------------------------------------------------


class Vars(Mapping[str, Any]):
    """Template variables whose values may be templates themselves, rendered when first used.

    `layers` are merged left to right (later ones win); their strings with Jinja2 markup are
    rendered on first use, in this same scope, as Ansible does. `literal` values (such as the
    results of earlier tasks) win over every layer and are never rendered.
    """

    def __init__(self, *layers: Mapping[str, Any], literal: Mapping[str, Any] | None = None):
        self._raw: dict[str, Any] = {}
        for layer in layers:
            self._raw.update(layer)
        self._literal = dict(literal or {})
        self._cache: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        return self.resolve(name, what=f"variable {name!r}")

    def __contains__(self, name: object) -> bool:
        return name in self._literal or name in self._raw

    def __iter__(self) -> Iterator[str]:
        yield from self._literal
        yield from (k for k in self._raw if k not in self._literal)

    def __len__(self) -> int:
        return len(self._literal.keys() | self._raw.keys())

    def resolve(self, name: str, *, what: str, stack: Sequence[str] = ()) -> Any:
        """The value of one variable, its templates rendered; errors name `what` and the chain."""
        if name in self._literal:
            return self._literal[name]
        if name in self._cache:
            return self._cache[name]
        value = self._raw[name]
        if _has_template(value):
            if name in stack:
                chain = " -> ".join([*stack[stack.index(name) :], name])
                raise TemplateError(f"{what}: variable {name!r} refers to itself ({chain})")
            value = _render_value(value, self, f"{what}: in variable {name!r}", [*stack, name])
        self._cache[name] = value
        return value


def _has_template(value: Any) -> bool:
    if isinstance(value, str):
        return is_template(value)
    if isinstance(value, Mapping):
        return any(_has_template(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_has_template(v) for v in value)
    return False


def _render_value(value: Any, context: Vars, what: str, stack: list[str]) -> Any:
    if isinstance(value, str):
        return _render(value, context, what, stack) if is_template(value) else value
    if isinstance(value, Mapping):
        return {k: _render_value(v, context, what, stack) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_render_value(v, context, what, stack) for v in value]
    return value


def _scope(
    context: Mapping[str, Any], names: frozenset[str], what: str, stack: Sequence[str]
) -> dict[str, Any]:
    """The variables a template uses, looked up (and rendered, for `Vars`) one by one."""
    if isinstance(context, Vars):
        return {n: context.resolve(n, what=what, stack=stack) for n in names if n in context}
    return {n: context[n] for n in names if n in context}


# -- rendering --------------------------------------------------------------------------------


def render(template: str, context: Mapping[str, Any], *, what: str) -> str:
    """Render a template; any failure is a TemplateError that starts with `what`."""
    return _render(template, context, what, [])


def _render(template: str, context: Mapping[str, Any], what: str, stack: Sequence[str]) -> str:
    if not is_template(template):
        return str(template)
    try:
        compiled, names = _compiled(template)
        return compiled.render(_scope(context, names, what, stack))
    except TemplateError:
        raise
    except Exception as exc:
        raise TemplateError(f"{what}: {describe(exc)}") from None


def evaluate(expr: str, context: Mapping[str, Any], *, what: str) -> bool:
    """The truth of a Jinja2 expression (a `when` condition), as Jinja2 tests it."""
    try:
        compiled, names = _compiled_expression(expr)
        return bool(compiled(**_scope(context, names, what, ())))
    except TemplateError:
        raise
    except Exception as exc:
        raise TemplateError(f"{what}: {describe(exc)}") from None


def describe(exc: BaseException) -> str:
    """A one-line message for an exception raised while rendering."""
    if isinstance(exc, TemplateSyntaxError):
        return f"invalid template: {exc.message} (line {exc.lineno})"
    if isinstance(exc, UndefinedError):
        m = _UNDEFINED.fullmatch(str(exc))
        return f"undefined variable {m[1]!r}" if m else str(exc)
    if isinstance(exc, SecurityError):
        return str(exc)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
