"""Job template definitions and launch values, checked (pure code)."""

from __future__ import annotations

import pytest

from easytask.jobtemplate import TemplateInvalid, check_definition, check_values, unquoted_params
from easytask.templating import render

NAMES = {"path", "n"}


@pytest.mark.parametrize(
    "command",
    [
        "echo {{ params.path | quote }}",
        "echo {{ params['path'] | quote }} {{ params.n | quote }}",
        "echo {{ inventory_hostname }} {{ params.path | quote }}",
    ],
)
def test_quoted_uses_pass(command: str) -> None:
    assert unquoted_params(command, NAMES) == []


@pytest.mark.parametrize(
    ("command", "problem"),
    [
        ("echo {{ params.path }}", "params.path must be written"),
        ("echo {{ params.path | upper }}", "params.path must be written"),
        ("echo {{ params.path | quote | replace(\"'\", '') }}", "params.path must be written"),
        ("{% set p = params.path %}echo {{ p | quote }}", "params.path must be written"),
        ("{% if params.n %}echo{% endif %}", "params.n must be written"),
        ("echo {{ params | quote }}", "not params itself"),
        ("echo {{ params.other | quote }}", "no parameter 'other'"),
        ("echo {{ params.path | quote", "line 1"),
    ],
)
def test_other_uses_are_refused(command: str, problem: str) -> None:
    problems = unquoted_params(command, NAMES)
    assert problems and problem in problems[0]


def test_a_quoted_value_is_one_shell_word() -> None:
    """What the checked form renders to: the value quoted, whatever it holds."""
    out = render(
        "echo {{ params.path | quote }}", {"params": {"path": "x; touch /tmp/p'q"}}, what="command"
    )
    assert out == "echo 'x; touch /tmp/p'\"'\"'q'"


def test_values_are_converted_and_checked() -> None:
    definition = check_definition(
        {
            "name": "t",
            "command": "echo {{ params.n | quote }}",
            "pattern": "all",
            "params": [
                {"name": "n", "type": "number", "min": 1, "max": 3, "default": 2},
                {"name": "env", "type": "choice", "choices": ["a", "b"], "required": True},
                {"name": "on", "type": "boolean"},
                {"name": "path", "regex": "/[a-z]+", "max": 10},
            ],
        }
    )
    values, problems = check_values(definition.params, {"env": "a", "on": "yes", "path": "/srv"})
    assert problems == {} and values == {"n": 2, "env": "a", "on": True, "path": "/srv"}
    _, problems = check_values(
        definition.params, {"n": "4", "env": "c", "on": "maybe", "path": "/srv/x1", "x": 1}
    )
    assert problems == {
        "x": "no such parameter",
        "n": "must be at most 3",
        "env": "must be one of a, b, not 'c'",
        "on": "must be true or false",
        "path": "must match /[a-z]+",
    }
    assert check_values(definition.params, {})[1] == {"env": "is required"}


def test_a_credential_parameter_is_for_commands_only() -> None:
    with pytest.raises(TemplateInvalid, match="parameter tok: a credential parameter"):
        check_definition(
            {"name": "p", "playbook": "x.yml", "params": [{"name": "tok", "type": "credential"}]}
        )
