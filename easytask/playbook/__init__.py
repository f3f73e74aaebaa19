"""Playbooks: the YAML format, checked with errors that point at file:line:col (pure code).

A playbook is one play: a mapping with `hosts` and `tasks` (see docs/playbooks.md). Every problem
found is collected; `parse_playbook` raises them together as one `PlaybookErrors`, whose `str()`
is the first error (in file order) and whose `render()` lists them all with their lines.
"""

from easytask.playbook.load import load_playbook, load_yaml, parse_playbook
from easytask.playbook.model import (
    ACTIONS,
    COPY_KEYS,
    DEFAULTS_KEYS,
    LOOP_CONTROL_KEYS,
    NOTIFY_EVENTS,
    NOTIFY_KEYS,
    PLAY_KEYS,
    RESERVED_VARS,
    SCRIPT_KEYS,
    TAG,
    TASK_KEYS,
    Action,
    Defaults,
    Loop,
    Notify,
    Playbook,
    PlaybookErrors,
    Task,
)

__all__ = [
    "load_playbook",
    "load_yaml",
    "parse_playbook",
    "ACTIONS",
    "Action",
    "COPY_KEYS",
    "DEFAULTS_KEYS",
    "Defaults",
    "LOOP_CONTROL_KEYS",
    "Loop",
    "NOTIFY_EVENTS",
    "NOTIFY_KEYS",
    "Notify",
    "PLAY_KEYS",
    "Playbook",
    "PlaybookErrors",
    "RESERVED_VARS",
    "SCRIPT_KEYS",
    "TAG",
    "TASK_KEYS",
    "Task",
    "load_playbook",
    "load_yaml",
    "parse_playbook",
]
