"""Templates: the sandboxed Jinja2 environment, its filters, lazy variables and error messages."""

from __future__ import annotations

import shlex
from typing import Any

import pytest

from easytask.errors import TemplateError
from easytask.sourceyaml import UnsafeText
from easytask.templating import (
    Vars,
    attribute_refs,
    evaluate,
    is_template,
    render,
    syntax_problem,
    variables,
)

WHAT = "task 'rotate' on host 'web1'"
EVIL = "x; touch /tmp/pwned"


@pytest.mark.parametrize(
    ("template", "context", "expected"),
    [
        ("echo hi", {}, "echo hi"),
        ("echo hi\n", {}, "echo hi\n"),
        ("{{ a }}-{{ b }}", {"a": 1, "b": "two"}, "1-two"),
        ("echo {{ v | quote }}", {"v": EVIL}, "echo 'x; touch /tmp/pwned'"),
        ("echo {{ v | quote }}", {"v": 7}, "echo 7"),
        ("echo {{ v | quote }}", {"v": None}, "echo ''"),
        ("echo {{ v | quote }}", {"v": "it's"}, "echo 'it'\"'\"'s'"),
        ("{{ missing | default('d') }}", {}, "d"),
        ("{{ 'yes' if missing is defined else 'no' }}", {}, "no"),
        ("{{ v | to_json }}", {"v": {"a": [1, "é"]}}, '{"a": [1, "é"]}'),
        ("{{ v | from_json }}", {"v": "[1, 2]"}, "[1, 2]"),
        ("{{ 'yes' | bool }} {{ 'off' | bool }} {{ 1 | bool }}", {}, "True False True"),
        ("{{ p | basename }} {{ p | dirname }}", {"p": "/var/log/app.log"}, "app.log /var/log"),
        ("{{ n | int + 1 }}", {"n": "3"}, "4"),
        ("{{ {'a': 1}.a }}", {}, "1"),
        ("{{ items | join(',') }}", {"items": ["a", "b"]}, "a,b"),
    ],
)  # fmt: skip
def test_render(template: str, context: dict[str, Any], expected: str) -> None:
    """Templates render with Jinja2's syntax and EasyTask's filters; plain text is left as is."""
    assert render(template, context, what=WHAT) == expected


@pytest.mark.parametrize("value", [EVIL, "a b", "$(id)", "`id`", "'; rm -rf / #", "a\nb", ""])
def test_quote_keeps_one_shell_word(value: str) -> None:
    """A value piped through `quote` is exactly one word for the shell, whatever it holds."""
    line = render("echo {{ v | quote }}", {"v": value}, what=WHAT)
    assert shlex.split(line) == ["echo", value]


@pytest.mark.parametrize(
    ("template", "context", "message"),
    [
        ("{{ keep_days }}", {}, "undefined variable 'keep_days'"),
        ("{{ keep_days | quote }}", {}, "undefined variable 'keep_days'"),
        ("{{ r.stout }}", {"r": {"stdout": ""}}, "'dict object' has no attribute 'stout'"),
        ("{{ ''.__class__.__mro__ }}", {}, "unsafe access to attribute '__class__' is not allowed in a template"),
        ("{{ f.__globals__ }}", {"f": render}, "unsafe access to attribute '__globals__' is not allowed in a template"),
        ("{{ l.append(1) }}", {"l": []}, "unsafe access to attribute 'append' is not allowed in a template"),
        ("{{ 'x' * 2000000 }}", {}, "'*' would build a value of 2000000 items (the limit is 1000000)"),
        ("{{ 10 ** 1000000 }}", {}, "'**' would build a number too large for a template"),
        ("{{ range(10 ** 6) | list }}", {}, "OverflowError: Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000)."),
        ("{{ 1 / 0 }}", {}, "ZeroDivisionError: division by zero"),
        ("{% include 'other' %}", {}, "TypeError: no loader for this environment specified"),
        ("{{ x }", {}, "invalid template: unexpected '}' (line 1)"),
    ],
)  # fmt: skip
def test_render_errors(template: str, context: dict[str, Any], message: str) -> None:
    """Failures are TemplateErrors that name what was rendered, and sandbox escapes are refused."""
    with pytest.raises(TemplateError) as exc:
        render(template, context, what=WHAT)
    assert str(exc.value) == f"{WHAT}: {message}"
    assert exc.value.exit_code == 2


@pytest.mark.parametrize(
    ("expr", "context", "expected"),
    [
        ("true", {}, True),
        ("x == 'a'", {"x": "a"}, True),
        ("x | bool", {"x": "false"}, False),
        ("x", {"x": "false"}, True),
        ("x is defined and x > 2", {"x": 3}, True),
        ("x is defined", {}, False),
        ("'web' in group_names", {"group_names": ["db"]}, False),
        ("results.a.rc == 0", {"results": {"a": {"rc": 0}}}, True),
    ],
)  # fmt: skip
def test_evaluate(expr: str, context: dict[str, Any], expected: bool) -> None:
    """`when` expressions are true or false as Jinja2 tests them."""
    assert evaluate(expr, context, what=WHAT) is expected


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("x > 2", "undefined variable 'x'"),
        ("''.__class__", "unsafe access to attribute '__class__' is not allowed in a template"),
        ("a b", "invalid template: unexpected 'b' after the expression (line 1)"),
    ],
)
def test_evaluate_errors(expr: str, message: str) -> None:
    """A condition that cannot be evaluated is an error, not false."""
    with pytest.raises(TemplateError) as exc:
        evaluate(expr, {}, what=WHAT)
    assert str(exc.value) == f"{WHAT}: {message}"


def test_vars_render_templates_in_values_when_used() -> None:
    """Variables that are templates render in the same scope; later layers win over earlier ones."""
    inventory = {"app_dir": "/srv/app", "port": 80, "broken": "{{ nothing }}"}
    play = {"log_dir": "{{ app_dir }}/logs", "paths": ["{{ log_dir }}", {"k": "{{ port }}"}]}
    extra = {"port": "8080"}
    context = Vars(inventory, play, extra)
    assert render("{{ log_dir }} {{ paths }} {{ port }}", context, what=WHAT) == (
        "/srv/app/logs ['/srv/app/logs', {'k': '8080'}] 8080"
    )
    assert context["log_dir"] == "/srv/app/logs"


def test_vars_leave_unsafe_and_literal_values_alone() -> None:
    """`!unsafe` values and literal values (results) are never rendered as templates."""
    context = Vars(
        {"raw": UnsafeText("{{ not_rendered }}")},
        literal={"results": {"a": {"stdout": "{{ also_not }}"}}},
    )
    assert render("{{ raw }} {{ results.a.stdout }}", context, what=WHAT) == (
        "{{ not_rendered }} {{ also_not }}"
    )
    assert not is_template(UnsafeText("{{ x }}"))


def test_vars_report_cycles() -> None:
    """A variable that refers back to itself is an error naming the chain."""
    context = Vars({"a": "{{ b }}", "b": "x{{ a }}"})
    with pytest.raises(TemplateError) as exc:
        render("{{ a }}", context, what=WHAT)
    assert str(exc.value) == (
        f"{WHAT}: in variable 'a': in variable 'b': variable 'a' refers to itself (a -> b -> a)"
    )


def test_vars_name_the_variable_with_the_error() -> None:
    """An undefined name inside a variable's template says which variable used it."""
    with pytest.raises(TemplateError) as exc:
        render("{{ log_dir }}", Vars({"log_dir": "{{ base }}/logs"}), what=WHAT)
    assert str(exc.value) == f"{WHAT}: in variable 'log_dir': undefined variable 'base'"


@pytest.mark.parametrize(
    ("source", "expression", "problem"),
    [
        ("echo {{ x }}", False, None),
        ("echo {{ x }", False, (1, "unexpected '}'")),
        ("a\nb {{ x }", False, (2, "unexpected '}'")),
        ("x == 1", True, None),
        ("x ==", True, (1, "unexpected 'end of template'")),
        ("x }} {{ y", True, (1, "unexpected '}}' after the expression")),
    ],
)  # fmt: skip
def test_syntax_problem(source: str, expression: bool, problem: tuple[int, str] | None) -> None:
    """Syntax errors are found before anything renders, with their line in the template."""
    assert syntax_problem(source, expression=expression) == problem


@pytest.mark.parametrize(
    ("source", "expression", "refs"),
    [
        ("{{ results.a.stdout }} {{ results['b'] }} {{ results[x] }}", False, ["a", "b"]),
        ("{% if results.c.rc == 0 %}ok{% endif %}", False, ["c"]),
        ("results.d.rc == 0 and other.e", True, ["d"]),
        ("results.f", True, ["f"]),
        ("{{ result.a }}", False, []),
    ],
)
def test_attribute_refs(source: str, expression: bool, refs: list[str]) -> None:
    """The fixed attributes a template reads of `results` are found by reading its syntax tree."""
    assert attribute_refs(source, "results", expression=expression) == refs


def test_variables_lists_the_names_a_template_reads() -> None:
    """The free names of a template or an expression, not the ones it sets itself."""
    assert variables("{% set y = 1 %}{{ x }}{{ y }}") == {"x"}
    assert variables("a and b.c", expression=True) == {"a", "b"}
