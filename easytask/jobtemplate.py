"""Job templates: a saved launch with typed parameters; checking a definition and the values a
launch gives (pure code).

A template's definition is a mapping (JSON from the API, YAML from `templates create -f`):

    name: restart
    kind: command                 # command | script | playbook
    command: systemctl restart {{ params.service | quote }}
    script: "#!/bin/sh\n..."      # kind script: the script's text; its values in PARAM_NAME
    args: "{{ params.service | quote }}"   # kind script: its arguments
    playbook: deploy.yml          # kind playbook: a file of the server's playbooks directory
    pattern: web                  # the hosts (a playbook's own `hosts:` when empty)
    limit: ""                     # the default --limit; a launch may give another
    timeout: 5m                   # a command's timeout
    retries: 2                    # a command's further attempts after a failure
    retry_delay: 10s              # between them
    params:
      - {name: service, type: choice, choices: [nginx, redis], default: nginx, required: true}
    launch: {roles: [operator], users: [alice]}
    approval: required            # or none (the default): a launch waits for a second user
    approvers: {roles: [operator], users: [carol]}   # admins may always approve

A command refers to a parameter only as `{{ params.NAME | quote }}`: the value is one shell word
whatever it holds. A command that uses `params` any other way is refused when the template is
saved, so no value is ever pasted into a shell unquoted.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import Environment, nodes
from jinja2.exceptions import TemplateSyntaxError

from easytask.durations import parse_duration
from easytask.errors import EasyTaskError

__all__ = [
    "KINDS",
    "LAUNCH_ROLES",
    "PARAM_TYPES",
    "Param",
    "TemplateDefinition",
    "TemplateInvalid",
    "check_definition",
    "check_values",
    "may_approve",
    "may_launch",
    "unquoted_params",
]

KINDS = ("command", "script", "playbook")
PARAM_TYPES = ("text", "number", "choice", "boolean", "credential")
LAUNCH_ROLES = ("operator", "viewer", "auditor")  # admins may always launch
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
PARAM_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
CREDENTIAL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
MAX_TEXT = 4096  # characters of a text value
MAX_PARAMS = 50
MAX_COMMAND = 64 * 1024
MAX_RETRIES = 10
TRUE = ("true", "yes", "on", "1")
FALSE = ("false", "no", "off", "0", "")


class TemplateInvalid(EasyTaskError):
    """A template's definition, or a launch's values, were refused; `field` names the part."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Param:
    """One typed parameter of a template."""

    name: str
    type: str = "text"
    label: str = ""
    help: str = ""
    required: bool = False
    default: Any = None
    choices: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None
    regex: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The parameter as stored and as the API shows it (unset keys left out)."""
        out: dict[str, Any] = {"name": self.name, "type": self.type, "required": self.required}
        for key in ("label", "help", "regex"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        if self.default is not None:
            out["default"] = self.default
        if self.choices:
            out["choices"] = list(self.choices)
        if self.min is not None:
            out["min"] = self.min
        if self.max is not None:
            out["max"] = self.max
        return out


@dataclass(frozen=True)
class TemplateDefinition:
    """A template as checked: what is stored besides who made it and when."""

    name: str
    kind: str
    body: str  # the command, the script's text, or the playbook's file name
    args: str = ""  # a script's arguments (a template, its parameters quoted)
    interpreter: str = ""  # a script's interpreter (its #! line when empty)
    description: str = ""
    pattern: str = ""
    limit: str = ""
    timeout: float | None = None
    retries: int = 0
    retry_delay: float = 5.0
    params: tuple[Param, ...] = ()
    roles: tuple[str, ...] = ("operator",)
    users: tuple[str, ...] = ()
    approval: bool = False
    approver_roles: tuple[str, ...] = ()
    approver_users: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """The definition in the form `check_definition` reads."""
        out: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "description": self.description,
            "pattern": self.pattern,
            "limit": self.limit,
            "timeout": self.timeout,
            "retries": self.retries,
            "retry_delay": self.retry_delay,
            "params": [p.as_dict() for p in self.params],
            "launch": {"roles": list(self.roles), "users": list(self.users)},
            "approval": "required" if self.approval else "none",
            "approvers": {"roles": list(self.approver_roles), "users": list(self.approver_users)},
        }
        out[self.kind] = self.body
        if self.kind == "script":
            out["args"] = self.args
            out["interpreter"] = self.interpreter
        return out


def _text(data: Mapping[str, Any], key: str, where: str, limit: int = 1000) -> str:
    value = data.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TemplateInvalid(f"{where}{key} must be text", key)
    if len(value) > limit or "\x00" in value:
        raise TemplateInvalid(f"{where}{key} is too long (at most {limit}) or holds NUL", key)
    return value.strip()


def _number(value: Any, what: str) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TemplateInvalid(f"{what} must be a number", what)
    if not math.isfinite(value):
        raise TemplateInvalid(f"{what} must be a finite number", what)
    return float(value)


def _param(data: Any, index: int, kind: str) -> Param:
    """One parameter of a definition, checked (its default too)."""
    if not isinstance(data, Mapping):
        raise TemplateInvalid(f"params[{index}] must be a mapping", "params")
    name = data.get("name")
    if not isinstance(name, str) or not PARAM_RE.match(name):
        raise TemplateInvalid(
            f"params[{index}].name {name!r}: a letter or _, then letters, digits or _", "params"
        )
    where = f"parameter {name}: "
    known = {"name", "type", "label", "help", "required", "default", "choices"}
    known |= {"min", "max", "regex"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise TemplateInvalid(f"{where}unknown key {unknown[0]!r}", name)
    ptype = data.get("type") or "text"
    if ptype not in PARAM_TYPES:
        raise TemplateInvalid(f"{where}type must be one of {', '.join(PARAM_TYPES)}", name)
    if ptype == "credential" and kind == "playbook":
        raise TemplateInvalid(
            f"{where}a credential parameter is for command and script templates (a playbook "
            "names its credentials in `secrets:`)",
            name,
        )
    required = data.get("required", False)
    if not isinstance(required, bool):
        raise TemplateInvalid(f"{where}required must be true or false", name)
    choices: tuple[str, ...] = ()
    if ptype == "choice":
        raw = data.get("choices")
        if not isinstance(raw, list) or not raw or len(raw) > 1000:
            raise TemplateInvalid(f"{where}a choice parameter needs a list of choices", name)
        if not all(isinstance(c, str | int | float) and not isinstance(c, bool) for c in raw):
            raise TemplateInvalid(f"{where}choices must be text or numbers", name)
        choices = tuple(dict.fromkeys(str(c) for c in raw))
    elif data.get("choices") is not None:
        raise TemplateInvalid(f"{where}choices are for a choice parameter", name)
    low = _number(data.get("min"), f"parameter {name}: min")
    high = _number(data.get("max"), f"parameter {name}: max")
    if (low is not None or high is not None) and ptype not in ("number", "text"):
        raise TemplateInvalid(f"{where}min and max are for number and text parameters", name)
    if low is not None and high is not None and low > high:
        raise TemplateInvalid(f"{where}min ({low:g}) is more than max ({high:g})", name)
    regex = _text(data, "regex", where)
    if regex:
        if ptype != "text":
            raise TemplateInvalid(f"{where}regex is for a text parameter", name)
        try:
            re.compile(regex)
        except re.error as exc:
            raise TemplateInvalid(f"{where}regex: {exc}", name) from exc
    param = Param(
        name=name,
        type=ptype,
        label=_text(data, "label", where, 200),
        help=_text(data, "help", where),
        required=required,
        choices=choices,
        min=low,
        max=high,
        regex=regex,
    )
    default = data.get("default")
    if default is not None:
        try:
            default = check_value(param, default)
        except TemplateInvalid as exc:
            raise TemplateInvalid(f"{where}default: {exc.message}", name) from exc
        param = Param(**{**param.__dict__, "default": default})
    return param


def check_definition(data: Any) -> TemplateDefinition:
    """A template's definition, checked; TemplateInvalid naming the first thing wrong."""
    if not isinstance(data, Mapping):
        raise TemplateInvalid("a template is a mapping")
    known = {"name", "kind", "command", "script", "args", "interpreter", "playbook"}
    known |= {"description", "pattern", "limit"}
    known |= {"timeout", "retries", "retry_delay", "params", "launch", "approval", "approvers"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise TemplateInvalid(f"unknown key {unknown[0]!r}", unknown[0])
    name = data.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise TemplateInvalid(
            f"name {name!r}: a letter, then letters, digits, '_', '.' or '-' (64 at most)", "name"
        )
    kind = data.get("kind") or next((k for k in ("playbook", "script") if data.get(k)), "command")
    if kind not in KINDS:
        raise TemplateInvalid(f"kind must be one of {', '.join(KINDS)}", "kind")
    raw_params = data.get("params") or []
    if not isinstance(raw_params, list) or len(raw_params) > MAX_PARAMS:
        raise TemplateInvalid(f"params must be a list (at most {MAX_PARAMS})", "params")
    params = tuple(_param(p, i, kind) for i, p in enumerate(raw_params))
    seen: set[str] = set()
    for p in params:
        if p.name in seen:
            raise TemplateInvalid(f"parameter {p.name} is given twice", p.name)
        seen.add(p.name)
    pattern = _text(data, "pattern", "")
    args = interpreter = ""
    for other in {"command", "script", "playbook"} - {kind}:
        if data.get(other):
            raise TemplateInvalid(f"a {kind} template has no {other}", other)
    if kind == "script":
        body = data.get("script")
        if not isinstance(body, str) or not body.strip() or len(body) > MAX_COMMAND:
            raise TemplateInvalid("script is required (its text, at most 64 KiB)", "script")
        if not pattern:
            raise TemplateInvalid("pattern is required for a script template", "pattern")
        args = _text(data, "args", "")
        problems = unquoted_params(args, {p.name for p in params})
        if problems:
            raise TemplateInvalid(f"args: {problems[0]}", "args")
        interpreter = _text(data, "interpreter", "", 200)
    elif kind == "command":
        body = data.get("command")
        if not isinstance(body, str) or not body.strip() or len(body) > MAX_COMMAND:
            raise TemplateInvalid("command is required (text, at most 64 KiB)", "command")
        if not pattern:
            raise TemplateInvalid("pattern is required for a command template", "pattern")
        problems = unquoted_params(body, {p.name for p in params})
        if problems:
            raise TemplateInvalid(f"command: {problems[0]}", "command")
    else:
        body = _text(data, "playbook", "")
        if not body or body != body.split("/")[-1] or body.startswith("."):
            raise TemplateInvalid(
                "playbook is required: a plain file name of the server's playbooks directory",
                "playbook",
            )
    timeout = None
    if data.get("timeout") not in (None, ""):
        try:
            timeout = parse_duration(data["timeout"])
        except (TypeError, ValueError) as exc:
            raise TemplateInvalid(f"timeout: {exc}", "timeout") from exc
    retries = data.get("retries") or 0
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= MAX_RETRIES:
        raise TemplateInvalid(f"retries must be a whole number from 0 to {MAX_RETRIES}", "retries")
    if retries and kind == "playbook":
        raise TemplateInvalid(
            "retries are for command templates (a playbook's tasks set their own)", "retries"
        )
    retry_delay = 5.0
    if data.get("retry_delay") not in (None, ""):
        try:
            retry_delay = parse_duration(data["retry_delay"])
        except (TypeError, ValueError) as exc:
            raise TemplateInvalid(f"retry_delay: {exc}", "retry_delay") from exc
    launch = data.get("launch") or {}
    if not isinstance(launch, Mapping) or set(launch) - {"roles", "users"}:
        raise TemplateInvalid("launch is a mapping of roles and users", "launch")
    roles = _names(launch.get("roles", ["operator"]), "launch.roles")
    bad = [r for r in roles if r not in LAUNCH_ROLES]
    if bad:
        raise TemplateInvalid(
            f"launch.roles: {bad[0]!r} is not one of {', '.join(LAUNCH_ROLES)} (admins may "
            "always launch)",
            "launch",
        )
    users = _names(launch.get("users", []), "launch.users")
    approval = data.get("approval", "none")
    if approval not in ("required", "none", True, False, None):
        raise TemplateInvalid("approval must be required or none", "approval")
    approvers = data.get("approvers") or {}
    if not isinstance(approvers, Mapping) or set(approvers) - {"roles", "users"}:
        raise TemplateInvalid("approvers is a mapping of roles and users", "approvers")
    approver_roles = _names(approvers.get("roles", []), "approvers.roles")
    bad = [r for r in approver_roles if r not in LAUNCH_ROLES]
    if bad:
        raise TemplateInvalid(
            f"approvers.roles: {bad[0]!r} is not one of {', '.join(LAUNCH_ROLES)} (admins may "
            "always approve)",
            "approvers",
        )
    return TemplateDefinition(
        name=name,
        kind=kind,
        body=body,
        args=args,
        interpreter=interpreter,
        description=_text(data, "description", ""),
        pattern=pattern,
        limit=_text(data, "limit", ""),
        timeout=timeout,
        retries=retries,
        retry_delay=retry_delay,
        params=params,
        roles=roles,
        users=users,
        approval=approval in ("required", True),
        approver_roles=approver_roles,
        approver_users=_names(approvers.get("users", []), "approvers.users"),
    )


def may_launch(definition: TemplateDefinition, role: str, user: str) -> bool:
    """Whether a user of this role and name may launch the template (admins always may)."""
    return role == "admin" or role in definition.roles or user in definition.users


def may_approve(definition: TemplateDefinition, role: str, user: str) -> bool:
    """Whether a user of this role and name holds the right to approve the template's launches
    (admins always do; the requester never may approve their own, see the service)."""
    return role == "admin" or role in definition.approver_roles or user in definition.approver_users


def _names(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(
        isinstance(v, str) and NAME_RE.match(v) for v in value
    ):
        raise TemplateInvalid(f"{what} must be a list of names", "launch")
    return tuple(dict.fromkeys(value))


def check_value(param: Param, value: Any) -> Any:
    """One value for a parameter, converted to its type (text from a form or `-p` too)."""
    if param.type == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
            return value.strip().lower() in TRUE
        raise TemplateInvalid("must be true or false")
    if param.type == "number":
        number: float
        if isinstance(value, bool):
            raise TemplateInvalid("must be a number")
        if isinstance(value, int | float):
            number = value
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError as exc:
                raise TemplateInvalid(f"must be a number, not {value[:40]!r}") from exc
        else:
            raise TemplateInvalid("must be a number")
        if not math.isfinite(number):
            raise TemplateInvalid("must be a finite number")
        if param.min is not None and number < param.min:
            raise TemplateInvalid(f"must be at least {param.min:g}")
        if param.max is not None and number > param.max:
            raise TemplateInvalid(f"must be at most {param.max:g}")
        return int(number) if float(number).is_integer() else number
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise TemplateInvalid("must be text")
    text = str(value)
    if "\x00" in text:
        raise TemplateInvalid("must not hold a NUL character")
    if param.type == "choice":
        if text not in param.choices:
            raise TemplateInvalid(f"must be one of {', '.join(param.choices)}, not {text[:40]!r}")
        return text
    if param.type == "credential":
        if not CREDENTIAL_RE.match(text):
            raise TemplateInvalid(f"{text[:40]!r} is not a credential name")
        return text
    if len(text) > MAX_TEXT:
        raise TemplateInvalid(f"must be at most {MAX_TEXT} characters")
    if param.min is not None and len(text) < param.min:
        raise TemplateInvalid(f"must be at least {param.min:g} characters")
    if param.max is not None and len(text) > param.max:
        raise TemplateInvalid(f"must be at most {param.max:g} characters")
    if param.regex and not re.fullmatch(param.regex, text):
        raise TemplateInvalid(f"must match {param.regex}")
    return text


def check_values(
    params: tuple[Param, ...], given: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    """The values of a launch (defaults filled in) and the problems, parameter -> message."""
    known = {p.name: p for p in params}
    values: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for name in given:
        if name not in known:
            problems[str(name)] = "no such parameter"
    for p in params:
        raw = given.get(p.name)
        if raw is None or (raw == "" and p.type not in ("boolean",)):
            if p.default is not None:
                values[p.name] = p.default
            elif p.required:
                problems[p.name] = "is required"
            elif p.type == "boolean":
                values[p.name] = False
            else:
                values[p.name] = ""
            continue
        try:
            values[p.name] = check_value(p, raw)
        except TemplateInvalid as exc:
            problems[p.name] = exc.message
    return values, problems


def _walk(node: nodes.Node, parents: tuple[nodes.Node, ...]) -> Iterator[tuple[nodes.Node, ...]]:
    yield (*parents, node)
    for child in node.iter_child_nodes():
        yield from _walk(child, (*parents, node))


def unquoted_params(command: str, names: set[str]) -> list[str]:
    """What is wrong with how a command uses `params`: every use must be exactly
    `{{ params.NAME | quote }}` of a parameter the template has."""
    try:
        tree = Environment().parse(command)
    except TemplateSyntaxError as exc:
        return [f"line {exc.lineno}: {exc.message}"]
    problems: list[str] = []
    for chain in _walk(tree, ()):
        node = chain[-1]
        if not (isinstance(node, nodes.Name) and node.name == "params"):
            continue
        parent = chain[-2] if len(chain) > 1 else None
        attr: str | None = None
        if isinstance(parent, nodes.Getattr):
            attr = parent.attr
        elif isinstance(parent, nodes.Getitem) and isinstance(parent.arg, nodes.Const):
            attr = str(parent.arg.value)
        if attr is None:
            problems.append("use a parameter as {{ params.NAME | quote }}, not params itself")
            continue
        if attr not in names:
            problems.append(f"params.{attr}: the template has no parameter {attr!r}")
            continue
        quoted = len(chain) > 3 and isinstance(chain[-3], nodes.Filter)
        wrapper = chain[-3] if quoted else None
        if not (
            isinstance(wrapper, nodes.Filter)
            and wrapper.name == "quote"
            and wrapper.node is parent
            and isinstance(chain[-4], nodes.Output)
        ):
            problems.append(
                f"params.{attr} must be written {{{{ params.{attr} | quote }}}} so its value "
                "is one shell word"
            )
    return problems
