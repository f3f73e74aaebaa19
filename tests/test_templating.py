"""Templates: the sandboxed Jinja2 environment, its filters, lazy variables and error messages."""

from __future__ import annotations

import asyncio
import shlex
from functools import partial
from typing import Any

import pytest

from easytask import templating
from easytask.errors import TemplateError
from easytask.sourceyaml import UnsafeText
from easytask.templating import (
    TemplateLimit,
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
        ("{{ range(10 ** 6) | list }}", {}, "range() of 1000000 items is past the limit of 100000"),
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


NESTED = "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (NESTED, "the template went past its limit of 1000000 steps (loop iterations and calls)"),
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "the template went past its limit of 1000000 steps (loop iterations and calls)",
        ),
        (
            "{% for i in range(100000) %}{{ 'x' * 20 }}{% endfor %}",
            "the template went past its limit of 1000000 characters of output",
        ),
        (
            "{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}"
            "{% endfor %}{{ ns.s | length }}",
            "the template would build a value of 1048576 items (the limit is 1000000)",
        ),
        (
            "{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}"
            "{% endfor %}",
            "the template would build a value of 1048576 items (the limit is 1000000)",
        ),
        (
            "{{ 'x'.ljust(10 ** 9) }}",
            "str.ljust: a width of 1000000000 is past the limit of 1000000",
        ),
        ("{{ '%999999999d' % 1 }}", "a format width of 999999999 is past the limit of 1000000"),
        ("{{ '%*d' % (10 ** 9, 1) }}", "a format width is past the limit of 1000000"),
        (
            "{{ '{:>999999999}'.format(1) }}",
            "a format width of 999999999 is past the limit of 1000000",
        ),
        ("{{ '{:{w}}'.format(1, w=10 ** 9) }}", "a format width is past the limit of 1000000"),
        (
            "{{ '%999999999d' | format(1) }}",
            "a format width of 999999999 is past the limit of 1000000",
        ),
        (
            "{{ 'x' | center(10 ** 9) }}",
            "center: a width of 1000000000 is past the limit of 1000000",
        ),
        (
            "{{ range(3) | slice(10 ** 9) | list }}",
            "slice: a width of 1000000000 is past the limit of 1000000",
        ),
        (
            "{{ ('a\\n' * 100000) | indent('x' * 100000) }}",
            "indent would build a value past 1000000 characters",
        ),
        (
            "{{ ('x' * 1000000).replace('x', 'xx') }}",
            "str.replace would build a value of 2000000 characters (the limit is 1000000)",
        ),
        ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "the template calls itself too deeply"),
        (
            "{{ ['x' * 1000000] * 1000000 }}",
            "'*' would build a value of 1000000000000 items (the limit is 1000000)",
        ),
        (
            "{{ (range(100000) | list) | join('x' * 100) }}",
            "join would build a value past 1000000 characters",
        ),
        (
            "{{ ''.join(['x' * 1000] * 500 + ['x' * 1000] * 501) }}",
            "the template would build a value of 1001000 items (the limit is 1000000)",
        ),
    ],
)
def test_templates_are_bounded(template: str, message: str) -> None:
    """A template cannot work without bound: loops and calls count steps, output and the values
    it builds have a size limit. Past one, a TemplateLimit names what was rendered and the limit."""
    with pytest.raises(TemplateLimit) as exc:
        render(template, {}, what=WHAT)
    assert str(exc.value) == f"{WHAT}: {message}"


def test_the_items_of_a_recursive_loop_count_as_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """`loop(children)` in a recursive loop: each child is a step, as in any loop."""
    monkeypatch.setattr(templating, "MAX_STEPS", 5000)
    deep = (
        "{% for i in [1] recursive %}{% if loop.depth < 3 %}{{ loop(range(1000)) }}{% endif %}"
        "{% endfor %}"
    )
    with pytest.raises(TemplateLimit) as exc:
        render(deep, {}, what=WHAT)
    assert str(exc.value) == (
        f"{WHAT}: the template went past its limit of 5000 steps (loop iterations and calls)"
    )


def test_a_template_has_a_time_limit_checked_at_every_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """Calls that fan out (2**40 macro calls) are stopped by the steps or, sooner, the clock."""
    monkeypatch.setattr(templating, "MAX_SECONDS", 0.3)
    fanout = "{% macro f(n) %}{{ f(n - 1) ~ f(n - 1) if n else '' }}{% endmacro %}{{ f(40) }}"
    with pytest.raises(TemplateLimit) as exc:
        render(fanout, {}, what=WHAT)
    assert str(exc.value) == f"{WHAT}: the template went past its time limit of 0.3s"


def test_a_variables_template_counts_towards_the_template_that_uses_it() -> None:
    """A variable rendered on first use takes from the budget of the template using it; what
    stays within the limits renders as before (loop variables, `else`, formats)."""
    loops = "{% for i in range(600) %}{% for j in range(1000) %}{% endfor %}{% endfor %}"
    context = Vars({"a": loops + "a", "b": loops + "b"})
    assert render("{{ a }}", context, what=WHAT) == "a"
    with pytest.raises(TemplateLimit, match="limit of 1000000 steps"):
        render("{{ a }}{{ b }}", Vars({"a": loops + "a", "b": loops + "b"}), what=WHAT)
    text = (
        "{% for i in range(3) %}{{ loop.index }}/{{ loop.length }}{{ ',' if not loop.last }}"
        "{% endfor %}{% for x in [] %}{% else %} none{% endfor %} {{ '%05d' % 3 }}"
        " {{ '{:>3}'.format('a') }} {{ 'ab' | center(4) }} {{ 'a\\nb' | indent(2) }}"
        " {{ [1, 2] + [3] }} {{ range(100000) | list | length }}"
    )
    assert render(text, {}, what=WHAT) == "1/3,2/3,3/3 none 00003   a  ab  a\n  b [1, 2, 3] 100000"
    assert evaluate("range(10) | list | length > 3", {}, what=WHAT)


def test_playbook_templates_render_off_the_event_loop() -> None:
    """A heavy but allowed render runs in a worker thread: the event loop goes on meanwhile."""
    from easytask.scheduler.renderthreads import off_loop

    heavy = "{% for i in range(900) %}{% for j in range(1000) %}{% endfor %}{% endfor %}done"

    async def main() -> tuple[str, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        try:
            out = await off_loop(partial(render, what=WHAT), heavy, {})
            return out, ticks
        finally:
            task.cancel()

    out, ticks = asyncio.run(main())
    assert out == "done"
    assert ticks > 100  # the loop turned while the render ran (on the loop it could not)
