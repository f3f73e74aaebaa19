"""Playbook checks: each task, its action (command, shell, script, copy) and its settings."""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from easytask.errors import SourceLocation
from easytask.playbook.model import (
    ACTIONS,
    COPY_KEYS,
    LOOP_CONTROL_KEYS,
    PLAY_KEYS,
    RESERVED_VARS,
    SCRIPT_KEYS,
    TAG,
    TASK_KEYS,
    Action,
    Defaults,
    Loop,
    Task,
)
from easytask.playbook.needs import DependencyChecker
from easytask.playbook.values import NAME, ValueChecker, got, suggest
from easytask.sourceyaml import type_name
from easytask.templating import attribute_refs, is_template, syntax_problem, variables

__all__ = ["TaskChecker"]

_MODE = re.compile(r"[0-7]{3,4}\Z")
_CONDITIONS = ("when", "failed_when", "changed_when")  # bare expressions, not templates


def implied_order(tasks: list[Task], written: list[Any]) -> list[Task]:
    """A task without `needs` waits for the task above it, as in Ansible; `needs: []` does not."""
    ordered = tasks[:1]
    for above, task, data in zip(tasks, tasks[1:], written[1:], strict=False):
        if data.get("needs") is None:  # not written, or written empty as if not
            task = replace(task, needs=(above.name,), needs_implied=True)
        ordered.append(task)
    return ordered


class TaskChecker(ValueChecker):
    """The checks of the tasks of a play."""

    def tasks(self, data: dict[Any, Any], defaults: Defaults) -> tuple[Task, ...] | None:
        value = data.get("tasks")
        if value is None:
            self.fail("the play has no 'tasks'", self.src.key(data, "tasks"))
            return None
        if not isinstance(value, list):
            self.expect(data, "tasks", "the play", "a list of tasks")
            return None
        if not value:
            self.bad(data, "tasks", "'tasks' is empty (a playbook needs at least one task)")
            return None
        names: dict[str, SourceLocation] = {}
        tasks = [self.task(value, index, defaults, names) for index in range(len(value))]
        if any(t is None for t in tasks):
            return None
        checked = implied_order([t for t in tasks if t is not None], value)
        DependencyChecker(self, checked).check()
        return tuple(checked)

    def task(
        self, tasks: list[Any], index: int, defaults: Defaults, names: dict[str, SourceLocation]
    ) -> Task | None:
        data = tasks[index]
        number = f"task #{index + 1}"
        if not isinstance(data, dict):
            self.bad(tasks, index, f"{number} must be a mapping, got {type_name(data)}")
            return None
        start = self.src.start(data)
        errors_before = len(self.errors)
        name = data.get("name")
        label = f"task {name!r}" if isinstance(name, str) and name.strip() else number
        if "name" not in data:
            self.fail(f"{number} has no 'name' (every task needs a unique name)", start)
        elif label == number:
            self.bad(
                data, "name", f"'name' of {number} must be a non-empty string, got {got(name)}"
            )
        elif name in names:
            self.bad(
                data, "name", f"duplicate task name {name!r} (first at line {names[name].line})"
            )
        elif isinstance(name, str):
            names[name] = self.src.value(data, "name")
        self.unknown_keys(data, TASK_KEYS, label, elsewhere=PLAY_KEYS)
        action = self.one_action(data, label, start)
        hosts = self.hosts(data, label)
        needs = self.needs(data, label)
        when = self.when(data, label)
        settings = self.settings(data, label, defaults)
        run_on_any = data.get("run_on") is not None
        if run_on_any and data["run_on"] != "any":
            self.expect(data, "run_on", label, "'any'")
        run_once = self.boolean(data, "run_once", label)
        if run_on_any and run_once:
            self.fail(
                f"{label} has both 'run_on: any' and 'run_once' (use one)",
                self.src.key(data, "run_once"),
            )
        env = self.env(data, label)
        tags = self.tags(data, label)
        cwd = self.string(data, "cwd", label)
        if cwd is not None:
            self.template(data, "cwd", f"'cwd' of {label}")
        become, become_user = self.become(data, label)
        ignore_errors = self.boolean(data, "ignore_errors", label)
        failed_when = self.condition(data, "failed_when", label)
        changed_when = self.condition(data, "changed_when", label)
        loop = self.loop(data, label)
        if len(self.errors) > errors_before or action is None or not isinstance(name, str):
            return None
        return Task(
            name=name,
            action=action,
            location=start,
            hosts=hosts,
            needs=needs,
            when=when,
            timeout=settings.timeout,
            retries=settings.retries,
            retry_delay=settings.retry_delay,
            retry_backoff=settings.retry_backoff,
            run_on_any=run_on_any,
            run_once=run_once,
            env=env,
            tags=tags,
            cwd=cwd,
            become=become,
            become_user=become_user,
            ignore_errors=ignore_errors,
            failed_when=failed_when,
            changed_when=changed_when,
            uses_results=self.result_refs(data, name),
            loop=loop,
            locations={k: self.src.key(data, k) for k in data},
        )

    def one_action(self, data: dict[Any, Any], label: str, start: SourceLocation) -> Action | None:
        present = [k for k in data if k in ACTIONS]
        if len(present) == 1:
            return self.action(data, present[0], label)
        if present:
            first, second = present[:2]
            message = (
                f"{label} has more than one action: {first!r} and {second!r} (give it exactly one)"
            )
            self.fail(message, self.src.key(data, second))
        elif not any(
            suggest(k, ACTIONS) for k in data if isinstance(k, str) and k not in TASK_KEYS
        ):
            # (a misspelt action is reported as an unknown key instead)
            self.fail(f"{label} has no action (give it one of {', '.join(ACTIONS)})", start)
        return None

    def result_refs(self, data: dict[Any, Any], name: str) -> tuple[str, ...]:
        """The tasks whose results.<task> the task's templates read, with where each is read."""
        found = self.results_at.setdefault(name, {})
        for container, where, expression in _template_slots(data):
            at = self.src.value(container, where)
            for used in attribute_refs(container[where], "results", expression=expression):
                found.setdefault(used, at)
        control = data.get("loop_control")
        loops = [(data, "loop"), (data, "with_items")]
        loops += [(control, "label")] if isinstance(control, dict) else []
        for container, key in loops:  # a loop over results (see Loop.at_run)
            if key in container:
                for slot, at_key, _ in _strings(container, key):
                    at = self.src.value(slot, at_key)
                    for used in attribute_refs(slot[at_key], "results", expression=False):
                        found.setdefault(used, at)
        return tuple(found)

    def action(self, data: dict[Any, Any], kind: str, label: str) -> Action | None:
        value = data[kind]
        what = f"{kind!r} of {label}"
        if kind == "script":
            return self.script(data, label)
        if kind == "copy":
            return self.copy(data, label)
        if kind == "command" and isinstance(value, list):
            argv = self.argv(data, kind, label)
            return Action("command", argv=argv) if argv else None
        if not isinstance(value, str) or not value.strip():
            self.expect(
                data,
                kind,
                label,
                "a string or a list of strings" if kind == "command" else "a non-empty string",
            )
            return None
        if not self.template(data, kind, what):
            return None
        if kind == "command" and not is_template(value):
            try:
                shlex.split(value)
            except ValueError as exc:
                self.bad(
                    data,
                    kind,
                    f"'command' in {label} cannot be split into words: {exc} (use 'shell' for shell syntax)",
                )
                return None
        return Action(kind, command=value)

    def argv(self, container: Any, key: str, label: str) -> tuple[str, ...] | None:
        items = container[key]
        if not items:
            self.bad(container, key, f"{key!r} in {label} is an empty list")
            return None
        for index, item in enumerate(items):
            if isinstance(item, bool) or not isinstance(item, str | int | float):
                self.bad(
                    items,
                    index,
                    f"items of {key!r} in {label} must be strings, got {type_name(item)}",
                )
                return None
            if isinstance(item, str) and not self.template(items, index, f"{key!r} of {label}"):
                return None
        return tuple(str(item) for item in items)

    def script(self, data: dict[Any, Any], label: str) -> Action | None:
        value = data["script"]
        if isinstance(value, dict):
            where = f"'script' of {label}"
            self.unknown_keys(value, SCRIPT_KEYS, where)
            path = value.get("path")
            if not isinstance(path, str) or not path.strip():
                if "path" in value:
                    self.expect(value, "path", where, "a file name")
                else:
                    self.bad(data, "script", f"{where} has no 'path'")
                return None
            local = self.local_file(path, "script", label, self.src.value(value, "path"))
            args = value.get("args")
            if isinstance(args, list):
                argv = self.argv(value, "args", label)
                return (
                    Action("script", argv=argv, path=local, path_text=path)
                    if local and argv
                    else None
                )
            if args is not None and not isinstance(args, str):
                self.expect(value, "args", where, "a string or a list")
                return None
            if args is not None and not self.template(value, "args", f"the arguments of {where}"):
                return None
            return Action("script", args=args or "", path=local, path_text=path) if local else None
        if not isinstance(value, str) or not value.strip():
            self.expect(data, "script", label, "a file name (with arguments) or a mapping")
            return None
        path, *rest = value.strip().split(None, 1)
        args = rest[0] if rest else ""
        self.template(data, "script", f"'script' of {label}")
        local = self.local_file(path, "script", label, self.src.value(data, "script"))
        return Action("script", args=args, path=local, path_text=path) if local else None

    def copy(self, data: dict[Any, Any], label: str) -> Action | None:
        value = data["copy"]
        if not isinstance(value, dict):
            self.expect(data, "copy", label, "a mapping with 'src' and 'dest'")
            return None
        where = f"'copy' of {label}"
        self.unknown_keys(value, COPY_KEYS, where)
        paths: dict[str, str] = {}
        for key in ("src", "dest"):
            if key not in value:
                self.bad(data, "copy", f"{where} has no {key!r}")
            elif not isinstance(value[key], str) or not value[key].strip():
                self.expect(value, key, where, "a path")
            else:
                paths[key] = value[key]
        mode = value.get("mode")
        if isinstance(mode, int) and not isinstance(mode, bool):
            node = self.src.node(value, "mode")
            written = getattr(node, "value", mode)
            self.bad(
                value,
                "mode",
                f"'mode' in {where} is the number {written}: quote it, as in mode: \"0644\"",
            )
        elif mode is not None and (not isinstance(mode, str) or not _MODE.match(mode)):
            self.expect(value, "mode", where, "an octal string such as '0644'")
        local = None
        if "src" in paths:
            local = self.local_file(
                paths["src"], "copy source", label, self.src.value(value, "src")
            )
        if "dest" in paths:
            self.template(value, "dest", f"'dest' of {where}")
        if local is None or "dest" not in paths:
            return None
        return Action("copy", path=local, path_text=paths["src"], dest=paths["dest"], mode=mode)

    def local_file(self, text: str, what: str, label: str, at: SourceLocation) -> str | None:
        """The absolute path of a file that must exist inside the playbook's directory."""
        if "{{" in text or "{%" in text:
            self.fail(f"the {what} path of {label} cannot be a template", at)
            return None
        folder = os.path.dirname(self.path) or "."
        # realpath first: a symlink (or ..) that leads out of the directory is outside it.
        real = os.path.realpath(os.path.join(self.base_dir, text))
        problem = None
        if os.path.commonpath([real, self.base_dir]) != self.base_dir:
            problem = f"is outside the playbook's directory ({folder})"
        elif not os.path.exists(real):
            problem = f"does not exist (looked in {folder})"
        elif not os.path.isfile(real):
            problem = "is not a file"
        if problem:
            self.fail(f"the {what} {text!r} of {label} {problem}", at)
            return None
        return real

    def needs(self, data: dict[Any, Any], label: str) -> tuple[str, ...]:
        value = data.get("needs")
        if value is None:
            return ()
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            self.expect(data, "needs", label, "a task name or a list of task names")
            return ()
        seen: dict[str, SourceLocation] = {}
        for index, item in enumerate(items):
            at = (
                self.src.value(value, index)
                if isinstance(value, list)
                else self.src.value(data, "needs")
            )
            if item in seen:
                self.fail(f"{label} needs {item!r} twice", at)
            seen[item] = seen.get(item, at)
        if isinstance(data.get("name"), str):
            self.needs_at[data["name"]] = list(seen.values())
        return tuple(seen)

    def loop(self, data: dict[Any, Any], label: str) -> Loop | None:
        """`loop` (or `with_items`, which spreads out lists inside the list one level) and
        `loop_control`. Items are rendered when the job is planned, unless they (or the label)
        use `results`: then on each host when the tasks it waits for have ended there."""
        key = "with_items" if "with_items" in data else "loop"
        if "loop" in data and "with_items" in data:
            self.bad(data, "with_items", f"{label} has both 'loop' and 'with_items' (use 'loop')")
            return None
        control = data.get("loop_control")
        if key not in data:
            if "loop_control" in data:
                self.fail(
                    f"{label} has 'loop_control' but no 'loop'", self.src.key(data, "loop_control")
                )
            return None
        value = data[key]
        what = f"{key!r} of {label}"
        items: tuple[Any, ...] | None = None
        template: str | None = None
        at_run = False
        if isinstance(value, list):
            self.nested_templates(data, key, what)
            at_run = _uses_results(data, key)
            items = tuple(value)
        elif isinstance(value, str) and is_template(value):
            if self.template(data, key, what):
                at_run = _uses_results(data, key)
            template = value
        else:
            self.bad(
                data,
                key,
                f"{what} must be a list or a template giving one "
                f'(such as "{{{{ packages }}}}"), got {got(value)}',
            )
            return None
        name, text = "item", None
        if control is not None:
            where = f"'loop_control' of {label}"
            if not isinstance(control, dict):
                self.expect(data, "loop_control", label, "a mapping with 'label' and/or 'loop_var'")
                return None
            self.unknown_keys(control, LOOP_CONTROL_KEYS, where)
            text = self.string(control, "label", where)
            if text is not None and self.template(control, "label", f"'label' of {where}"):
                at_run = at_run or _uses_results(control, "label")
            var = control.get("loop_var")
            if var is not None:
                if not isinstance(var, str) or not NAME.match(var):
                    self.expect(control, "loop_var", where, "a variable name")
                elif var in RESERVED_VARS:
                    self.bad(control, "loop_var", f"'loop_var' of {where}: {var!r} is reserved")
                else:
                    name = var
        return Loop(items, template, key == "with_items", text, name, at_run)

    def tags(self, data: dict[Any, Any], label: str) -> tuple[str, ...]:
        """`tags`: a list of names, or one text of names separated by commas (as Ansible takes)."""
        value = data.get("tags")
        if value is None:
            return ()
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str | int) for i in items):
            self.expect(data, "tags", label, "a tag name or a list of tag names")
            return ()
        names = [str(i).strip() for i in items]
        bad = [n for n in names if not TAG.fullmatch(n)]
        if bad:
            self.bad(
                data,
                "tags",
                f"bad tag {bad[0]!r} in {label} (letters, digits and . _ - only)",
            )
            return ()
        return tuple(dict.fromkeys(names))

    def when(self, data: dict[Any, Any], label: str) -> str | None:
        return self.condition(data, "when", label)

    def condition(self, data: dict[Any, Any], key: str, label: str) -> str | None:
        """A bare expression (`when`, `failed_when`, `changed_when`), or a list of them that
        must all hold, as one expression; errors point at the bad item."""
        value = data.get(key)
        if value is None:
            return None
        container, items = (
            (value, list(enumerate(value))) if isinstance(value, list) else (data, [(key, value)])
        )
        exprs: list[str] = []
        for where, item in items:
            if isinstance(item, bool):
                exprs.append("true" if item else "false")
                continue
            if not isinstance(item, str) or not item.strip():
                self.bad(
                    container,
                    where,
                    f"'{key}' in {label} must be an expression (or a list of them), got {got(item)}",
                )
            elif "{{" in item or "{%" in item:
                self.bad(
                    container,
                    where,
                    f"'{key}' in {label} is already an expression: write it without {{{{ }}}}",
                )
            elif problem := syntax_problem(item, expression=True):
                self.bad(
                    container, where, f"invalid expression in '{key}' of {label}: {problem[1]}"
                )
            else:
                exprs.append(item.strip())
                continue
            return None
        return exprs[0] if len(exprs) == 1 else " and ".join(f"({e})" for e in exprs) or None

    def env(self, data: dict[Any, Any], label: str) -> dict[str, str]:
        """`env`, or `environment` as Ansible calls it (one of the two)."""
        key = "environment" if "environment" in data else "env"
        if "env" in data and "environment" in data:
            self.bad(data, "environment", f"{label} has both 'env' and 'environment' (use one)")
            return {}
        value = data.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.expect(data, key, label, "a mapping of variable names to values")
            return {}
        out: dict[str, str] = {}
        for name, item in value.items():
            what = f"environment variable {name!r} of {label}"
            if not isinstance(name, str) or not NAME.match(name):
                self.fail(
                    f"invalid environment variable name {name!r} in {label}",
                    self.src.key(value, name),
                )
            elif isinstance(item, bool) or not isinstance(item, str | int | float):
                hint = " (quote it)" if isinstance(item, bool) else ""
                self.bad(
                    value, name, f"{what} must be a string or a number, got {type_name(item)}{hint}"
                )
            else:
                out[name] = str(item)
                if isinstance(item, str):
                    self.template(value, name, what)
        return out


def _strings(container: Any, where: Any) -> Iterator[tuple[Any, Any, bool]]:
    """(container, key or index, False) of every string in a value, however deep."""
    value = container[where]
    if isinstance(value, str):
        yield container, where, False
    elif isinstance(value, dict | list):
        for key in value if isinstance(value, dict) else range(len(value)):
            yield from _strings(value, key)


def _template_slots(data: dict[Any, Any]) -> Iterator[tuple[Any, Any, bool]]:
    """(container, key or index, is-an-expression) of every string of a task that is rendered."""
    for key in (*ACTIONS, "env", "environment", "cwd", *_CONDITIONS):
        value = data.get(key)
        if isinstance(value, str):
            yield data, key, key in _CONDITIONS
        elif isinstance(value, list):
            yield from (
                (value, i, key in _CONDITIONS) for i, v in enumerate(value) if isinstance(v, str)
            )
        elif isinstance(value, dict):
            for sub, item in value.items():
                if key not in ("env", "environment") and sub not in ("args", "dest"):
                    continue
                if isinstance(item, str):
                    yield value, sub, False
                elif isinstance(item, list):
                    yield from ((item, i, False) for i, v in enumerate(item) if isinstance(v, str))


def _uses_results(container: Any, where: Any) -> bool:
    """Whether a loop's items (or its label) use `results`: then they are rendered when the
    task runs on a host, not when the job is planned."""
    for slot, at_key, _ in _strings(container, where):
        text = slot[at_key]
        if is_template(text) and not syntax_problem(text) and "results" in variables(text):
            return True
    return False
