"""Playbooks: what a checked playbook is (plays, tasks, actions) and the keys each part takes."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from easytask.cron import Cron
from easytask.errors import PlaybookError, SourceLocation

__all__ = [
    "ACTIONS",
    "BECOME_USER_RE",
    "CATCH_UP",
    "COPY_KEYS",
    "DEFAULTS_KEYS",
    "NOTIFY_EVENTS",
    "NOTIFY_KEYS",
    "PLAY_KEYS",
    "RESERVED_VARS",
    "SCRIPT_KEYS",
    "TAG",
    "TASK_KEYS",
    "Action",
    "Defaults",
    "LOOP_CONTROL_KEYS",
    "Loop",
    "Notify",
    "Playbook",
    "PlaybookErrors",
    "Task",
]

PLAY_KEYS = (
    "name", "hosts", "vars", "vars_files", "secrets", "defaults", "serial", "max_fail_percentage", "forks",
    "schedule", "tz", "catch_up", "notify", "become", "become_user", "tasks",
)  # fmt: skip
DEFAULTS_KEYS = ("timeout", "retries", "retry_delay", "retry_backoff")
ACTIONS = ("command", "shell", "script", "copy")
TASK_KEYS = (
    "name", *ACTIONS, "hosts", "needs", "when", *DEFAULTS_KEYS, "run_on", "run_once", "env",
    "environment", "cwd", "tags", "become", "become_user",
    *("ignore_errors", "failed_when", "changed_when"), "loop", "with_items", "loop_control",
)  # fmt: skip
LOOP_CONTROL_KEYS = ("label", "loop_var")
COPY_KEYS = ("src", "dest", "mode")
SCRIPT_KEYS = ("path", "args")
CATCH_UP = ("none", "one")
NOTIFY_KEYS = ("url", "events")
NOTIFY_EVENTS = ("all", "failed")
RESERVED_VARS = ("results",)
TAG = re.compile(r"[A-Za-z0-9_.-]{1,100}")  # a tag name (task `tags`, --tags, --skip-tags)
# A user to become: an account name as useradd takes it (it travels to the host as one word).
BECOME_USER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?\Z")


@dataclass(frozen=True)
class Defaults:
    """Task settings a play gives all its tasks: timeout (None: none), retries and their spacing."""

    timeout: float | None = None
    retries: int = 0
    retry_delay: float = 5.0
    retry_backoff: float = 1.0


@dataclass(frozen=True)
class Action:
    """What a task does: run a command, a shell snippet or a local script, or copy a file.

    command: `command` (str form) or `shell` (templates); `argv`: `command` in list form, or the
    script's arguments as a list (each item a template); `args`: the script's arguments as one
    string (a template, read by the shell); `path`: absolute local path of the script or of the
    copy's source, `path_text` as written; `dest`, `mode`: the copy's target (a template) and mode.
    """

    kind: str
    command: str | None = None
    argv: tuple[str, ...] | None = None
    args: str | None = None
    path: str | None = None
    path_text: str | None = None
    dest: str | None = None
    mode: str | None = None


@dataclass(frozen=True)
class Loop:
    """A task's `loop` (or `with_items`): the items, given as a list or as a template that gives
    one, rendered per host when the job is planned; each item is its own run.

    `items`: the list as written (its strings may be templates); `template`: the text that
    gives the list; `flatten`: `with_items`, whose lists inside the list are spread out one level
    as Ansible does; `label`: the template of an item's name (None: the item itself);
    `loop_var`: the variable that holds the item in the task's templates; `at_run`: the items
    or the label use `results`, so they are rendered on each host when the tasks the loop
    waits for have ended there, not when the job is planned.
    """

    items: tuple[Any, ...] | None = None
    template: str | None = None
    flatten: bool = False
    label: str | None = None
    loop_var: str = "item"
    at_run: bool = False


@dataclass(frozen=True)
class Task:
    """One task: an action and how and where it runs; `timeout` etc. already include the defaults."""

    name: str
    action: Action
    location: SourceLocation
    hosts: str | None = None
    needs: tuple[str, ...] = ()
    needs_implied: bool = False  # no `needs` written: the task above, as in Ansible
    when: str | None = None
    timeout: float | None = None
    retries: int = 0
    retry_delay: float = 5.0
    retry_backoff: float = 1.0
    run_on_any: bool = False
    run_once: bool = False
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    tags: tuple[str, ...] = ()  # for `play --tags/--skip-tags`
    become: bool | None = None  # None: as the play says
    become_user: str | None = None
    ignore_errors: bool = False  # a failed run does not stop the play nor fail the job
    failed_when: str | None = None  # an expression over rc/stdout/stderr (a list: ANDed)
    changed_when: str | None = None
    uses_results: tuple[str, ...] = ()
    loop: Loop | None = None  # `loop`/`with_items`: one run per item
    locations: Mapping[str, SourceLocation] = field(default_factory=dict, repr=False)

    @property
    def kind(self) -> str:
        """The action: command, shell, script or copy."""
        return self.action.kind

    @property
    def single(self) -> bool:
        """Whether the task runs once in all (run_once or run_on: any) rather than once per host."""
        return self.run_once or self.run_on_any

    def at(self, key: str | None = None) -> SourceLocation:
        """Where a key of the task is written (the task itself for None or an absent key)."""
        return self.locations.get(key, self.location) if key else self.location


@dataclass(frozen=True)
class Notify:
    """A webhook to call when the job finishes: on every end (`all`) or when it did not succeed."""

    url: str
    events: str = "all"


@dataclass(frozen=True)
class Playbook:
    """A checked playbook: one play and its tasks in file order."""

    name: str
    hosts: str
    tasks: tuple[Task, ...]
    path: str
    base_dir: str
    location: SourceLocation
    vars: Mapping[str, Any] = field(default_factory=dict)  # `vars`, then `vars_files` over them
    vars_files: tuple[str, ...] = ()  # absolute paths, in order
    secrets: tuple[str, ...] = ()  # names of variables whose values are masked in output
    defaults: Defaults = field(default_factory=Defaults)
    serial: tuple[int | str, ...] = ()
    max_fail_percentage: float | None = None
    forks: int | None = None
    schedule: Cron | None = None
    tz: str | None = None
    catch_up: str = "none"
    notify: tuple[Notify, ...] = ()
    become: bool | None = None  # None: as the command line or the inventory says
    become_user: str | None = None
    text: str = field(default="", repr=False)
    locations: Mapping[str, SourceLocation] = field(default_factory=dict, repr=False)

    def task(self, name: str) -> Task:
        """The task of that name (KeyError if there is none)."""
        for task in self.tasks:
            if task.name == name:
                return task
        raise KeyError(name)

    def at(self, key: str | None = None) -> SourceLocation:
        """Where a play-level key is written (the play itself for None or an absent key)."""
        return self.locations.get(key, self.location) if key else self.location


class PlaybookErrors(PlaybookError):
    """The playbook is not valid."""

    def __init__(self, errors: Sequence[PlaybookError]) -> None:
        first = errors[0]
        super().__init__(first.message, location=first.location)
        self.errors = tuple(errors)

    def render(self) -> str:
        """Every error as a compiler prints it, then how many there are."""
        parts = [PlaybookError.render(e) for e in self.errors]
        if len(parts) > 1:
            parts.append(f"{len(parts)} errors")
        return "\n".join(parts)
