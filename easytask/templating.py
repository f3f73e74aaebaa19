"""Templates in commands and conditions: sandboxed Jinja2 with strict undefined variables (pure code)."""

from __future__ import annotations

import json
import posixpath
import re
import shlex
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Template, nodes
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError
from jinja2.meta import find_undeclared_variables
from jinja2.parser import Parser
from jinja2.runtime import Context, LoopContext, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from easytask.errors import TemplateError
from easytask.sourceyaml import UnsafeText

__all__ = [
    "MAX_OUTPUT",
    "MAX_RANGE",
    "MAX_SECONDS",
    "MAX_STEPS",
    "TemplateLimit",
    "Vars",
    "attribute_refs",
    "evaluate",
    "is_template",
    "render",
    "syntax_problem",
    "value",
    "variables",
]

_MARKERS = ("{{", "{%", "{#")
_UNDEFINED = re.compile(r"'(.+)' is undefined")
MAX_SEQUENCE = 1_000_000  # longest string or list an operator or call may build in a template
MAX_POWER_BITS = 100_000  # largest integer `**` may build in a template
# The work one template may do (each field of a task is one template; a variable's own
# template, rendered when first used, counts towards the template that uses it):
MAX_STEPS = 1_000_000  # loop iterations plus calls (macros, functions, methods)
MAX_OUTPUT = 1_000_000  # characters of output
MAX_SECONDS = 5.0  # wall-clock time, checked at every step
MAX_RANGE = 100_000  # items of one range()


class TemplateLimit(TemplateError):
    """A template went past one of the limits on its work (steps, output, time, size)."""


class _Budget:
    """What is left of one render's limits; every loop iteration and call takes a step."""

    __slots__ = ("deadline", "steps")

    def __init__(self) -> None:
        self.steps = MAX_STEPS
        self.deadline = time.monotonic() + MAX_SECONDS

    def step(self) -> None:
        self.steps -= 1
        if self.steps < 0:
            raise SecurityError(
                f"the template went past its limit of {MAX_STEPS} steps (loop iterations and calls)"
            )
        if self.steps & 0xFF == 0 and time.monotonic() > self.deadline:
            raise SecurityError(f"the template went past its time limit of {MAX_SECONDS:g}s")

    def iterate(self, iterable: Iterable[Any]) -> Iterator[Any]:
        for item in iterable:
            self.step()
            yield item


_BUDGET: ContextVar[_Budget | None] = ContextVar("easytask_template_budget", default=None)


def _counted(iterable: Any) -> Any:
    """What a template's `for` loops over: each item takes a step of the render's budget."""
    budget = _BUDGET.get()
    return iterable if budget is None else budget.iterate(iterable)


def _weight(value: Any) -> int:
    """The size of a value for the limits: a string's characters; a list's items, each
    string counting its characters (a list of one long string repeated is as big as its join)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list | tuple):
        return sum(len(x) if isinstance(x, str) else 1 for x in value)
    return 0


def _sized(value: Any) -> Any:
    """A value a template built by joining (`~`, `+`): refused past MAX_SEQUENCE items."""
    size = _weight(value)
    if size > MAX_SEQUENCE:
        raise SecurityError(
            f"the template would build a value of {size} items (the limit is {MAX_SEQUENCE})"
        )
    return value


# a width or precision in a %-format or a str.format spec (`%9999d`, `{:>9999}`)
_FORMAT_NUMBER = re.compile(r"%[-#0 +]*(\d*)(?:\.(\d*))?|\{[^{}]*?[:.](?:.?[<>=^])?[-+ ]?#?0?(\d+)")
_WIDENING = frozenset(["center", "ljust", "rjust", "zfill", "expandtabs"])


def _check_format(fmt: str, args: Any = ()) -> None:
    """Refuse a format whose widths or precisions would build a value past MAX_SEQUENCE."""
    for groups in _FORMAT_NUMBER.findall(fmt):
        for number in groups:
            if number and int(number) > MAX_SEQUENCE:
                raise SecurityError(
                    f"a format width of {number} is past the limit of {MAX_SEQUENCE}"
                )
    if "*" in fmt:
        values = args if isinstance(args, tuple) else (args,)
        if any(isinstance(v, int) and v > MAX_SEQUENCE for v in values):
            raise SecurityError(f"a format width is past the limit of {MAX_SEQUENCE}")


def _check_width(name: str, width: Any) -> None:
    if isinstance(width, int) and width > MAX_SEQUENCE:
        raise SecurityError(f"{name}: a width of {width} is past the limit of {MAX_SEQUENCE}")


def _check_str_call(method: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """Refuse a str method call that would build a value past MAX_SEQUENCE."""
    target = getattr(method, "__self__", None)
    if not isinstance(target, str):
        return
    name = getattr(method, "__name__", "")
    if name in _WIDENING:
        for arg in args:
            _check_width(f"str.{name}", arg)
    elif name == "replace" and len(args) >= 2:
        old, new = str(args[0]), str(args[1])
        grows = (target.count(old) if old else len(target) + 1) * max(len(new) - len(old), 0)
        if len(target) + grows > MAX_SEQUENCE:
            raise SecurityError(
                f"str.replace would build a value of {len(target) + grows} characters "
                f"(the limit is {MAX_SEQUENCE})"
            )
    elif name in ("format", "format_map"):
        _check_format(target)
        if re.search(r"\{[^{}]*\{", target):  # a width from the arguments: `{:{w}}`
            values = [*args, *kwargs.values()]
            if name == "format_map" and args and isinstance(args[0], Mapping):
                values = list(args[0].values())
            if any(isinstance(v, int) and v > MAX_SEQUENCE for v in values):
                raise SecurityError(f"a format width is past the limit of {MAX_SEQUENCE}")
    elif name == "join" and args and isinstance(args[0], list | tuple):
        _sized(args[0])


def _wrap_for_loops(tree: nodes.Template) -> nodes.Template:
    """Make every `for` of a parsed template iterate through `_counted`, and every `~` go
    through `_sized`, so the budget sees each iteration and no join grows without bound."""
    for loop in tree.find_all(nodes.For):
        loop.iter = nodes.Call(
            nodes.ImportedName("easytask.templating._counted"), [loop.iter], [], None, None
        )
    for concat in list(tree.find_all(nodes.Concat)):
        concat.nodes = [
            nodes.Call(nodes.ImportedName("easytask.templating._sized"), [n], [], None, None)
            for n in concat.nodes
        ]
    return tree


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
    """The sandbox, with messages a user understands, bounds on `*`, `**`, `+` and `%`, and a
    step of the render's budget for each call."""

    intercepted_binops = frozenset(["*", "**", "+", "%"])

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        budget = _BUDGET.get()
        if budget is not None:
            budget.step()
            if isinstance(__obj, LoopContext) and args:
                # `loop(children)` in a recursive loop: the children are iterations too
                args = (budget.iterate(args[0]), *args[1:])
        _check_str_call(getattr(__obj, "__wrapped__", __obj), args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)

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
                    and _weight(seq) * times > MAX_SEQUENCE
                ):
                    raise SecurityError(
                        f"'*' would build a value of {_weight(seq) * times} items "
                        f"(the limit is {MAX_SEQUENCE})"
                    )
        elif operator == "%":
            if isinstance(left, str):
                _check_format(left, right)
        elif operator == "+":
            return _sized(super().call_binop(context, operator, left, right))
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


def _safe_range(*args: int) -> range:
    rng = range(*args)
    if len(rng) > MAX_RANGE:
        raise SecurityError(f"range() of {len(rng)} items is past the limit of {MAX_RANGE}")
    return rng


def _checked_filter(name: str, width_arg: int) -> Any:
    """A filter whose argument number `width_arg` (0: the value) is a width, count or format."""
    original = ENV.filters[name]
    passed = getattr(original, "jinja_pass_arg", None)
    first = 1 if passed is not None else 0  # the environment or context comes first

    def checked(*args: Any, **kwargs: Any) -> Any:
        if name == "format" and len(args) > first and isinstance(args[first], str):
            _check_format(args[first], tuple(args[first + 1 :]))
        elif len(args) > first + width_arg:
            _check_width(name, args[first + width_arg])
        if name == "join" and len(args) > first and isinstance(args[first], list | tuple):
            glue = args[first + 1] if len(args) > first + 1 else kwargs.get("d", "")
            _sized(args[first])
            if len(glue) * len(args[first]) > MAX_SEQUENCE:
                raise SecurityError(f"join would build a value past {MAX_SEQUENCE} characters")
        if name == "indent" and len(args) > first:  # the width may be a string, on each line
            width = args[first + 1] if len(args) > first + 1 else kwargs.get("width", 4)
            text = str(args[first])
            each = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
            if len(text) + (text.count("\n") + 1) * each > MAX_SEQUENCE:
                raise SecurityError(f"indent would build a value past {MAX_SEQUENCE} characters")
        for value in kwargs.values():
            _check_width(name, value)
        return original(*args, **kwargs)

    if passed is not None:
        checked.jinja_pass_arg = passed  # type: ignore[attr-defined]
    return checked


ENV.globals["range"] = _safe_range
ENV.globals.pop("lipsum", None)  # nothing a command needs, and its size is the caller's choice
for _name, _arg in (
    ("center", 1),
    ("indent", 1),
    ("wordwrap", 1),
    ("slice", 1),
    ("format", 0),
    ("join", 99),  # (its own check)
):
    ENV.filters[_name] = _checked_filter(_name, _arg)
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
    names = frozenset(find_undeclared_variables(tree))
    return ENV.from_string(_wrap_for_loops(tree)), names


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
    """Render a template; any failure is a TemplateError that starts with `what` (a
    TemplateLimit when it went past MAX_STEPS, MAX_OUTPUT, MAX_SECONDS or a size limit).

    The work is bounded, but may take up to MAX_SECONDS: async code runs it in a thread."""
    return _render(template, context, what, [])


def _render(template: str, context: Mapping[str, Any], what: str, stack: Sequence[str]) -> str:
    if not is_template(template):
        return str(template)
    own = _BUDGET.get() is None  # a variable's template shares the budget of its user's
    token = _BUDGET.set(_Budget()) if own else None
    try:
        compiled, names = _compiled(template)
        out: list[str] = []
        size = 0
        for piece in compiled.root_render_func(
            compiled.new_context(_scope(context, names, what, stack))
        ):
            size += len(piece)
            if size > MAX_OUTPUT:
                raise SecurityError(
                    f"the template went past its limit of {MAX_OUTPUT} characters of output"
                )
            out.append(piece)
        return "".join(out)
    except TemplateError:
        raise
    except Exception as exc:
        raise _error(what, exc) from None
    finally:
        if token is not None:
            _BUDGET.reset(token)


def evaluate(expr: str, context: Mapping[str, Any], *, what: str) -> bool:
    """The truth of a Jinja2 expression (a `when` condition), as Jinja2 tests it."""
    own = _BUDGET.get() is None
    token = _BUDGET.set(_Budget()) if own else None
    try:
        compiled, names = _compiled_expression(expr)
        return bool(compiled(**_scope(context, names, what, ())))
    except TemplateError:
        raise
    except Exception as exc:
        raise _error(what, exc) from None
    finally:
        if token is not None:
            _BUDGET.reset(token)


_SINGLE = re.compile(r"\s*\{\{(.*)\}\}\s*", re.DOTALL)


def value(template: str, context: Mapping[str, Any], *, what: str) -> Any:
    """The value a template gives: for one `{{ expression }}` alone, the expression's own value
    (a list stays a list, as Ansible gives it to `loop`); for anything else, the rendered text."""
    m = _SINGLE.fullmatch(template)
    if not m or "{{" in m[1] or "}}" in m[1] or syntax_problem(m[1], expression=True):
        return render(template, context, what=what)
    own = _BUDGET.get() is None
    token = _BUDGET.set(_Budget()) if own else None
    try:
        compiled, names = _compiled_expression(m[1].strip())
        result = compiled(**_scope(context, names, what, ()))
        if isinstance(result, Undefined):
            str(result)  # raises: the variable is undefined
        if isinstance(result, Iterator):  # a filter's generator (map, select, ...): its items
            result = list(_counted(result))
        return result
    except TemplateError:
        raise
    except Exception as exc:
        raise _error(what, exc) from None
    finally:
        if token is not None:
            _BUDGET.reset(token)


def _error(what: str, exc: BaseException) -> TemplateError:
    limit = isinstance(exc, SecurityError | RecursionError | MemoryError) and not isinstance(
        exc, UndefinedError
    )
    return (TemplateLimit if limit else TemplateError)(f"{what}: {describe(exc)}")


def describe(exc: BaseException) -> str:
    """A one-line message for an exception raised while rendering."""
    if isinstance(exc, TemplateSyntaxError):
        return f"invalid template: {exc.message} (line {exc.lineno})"
    if isinstance(exc, UndefinedError):
        m = _UNDEFINED.fullmatch(str(exc))
        return f"undefined variable {m[1]!r}" if m else str(exc)
    if isinstance(exc, SecurityError):
        return str(exc)
    if isinstance(exc, RecursionError):
        return "the template calls itself too deeply"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
