"""Planning: an ad hoc command or a playbook plus an inventory -> the runs of a job (pure code)."""

from easytask.plan.adhoc import HostSource, PlannedRun, plan_adhoc
from easytask.plan.check import (
    CheckedRun,
    check_limits,
    check_playbook,
    dumps_check,
    format_check,
)
from easytask.plan.connection import (
    CONNECTIONS,
    SSHOptions,
    connection_of,
    connection_warnings,
    ssh_options,
)
from easytask.plan.extravars import parse_extra_vars
from easytask.plan.loops import LoopItem
from easytask.plan.playbook import (
    plan_playbook,
    plan_runs,
    serial_batches,
    stop_after_batch,
    tag_names,
    tag_selected,
)
from easytask.plan.playbookplan import PlannedTask, PlaybookPlan, RunKey, TaskRun
from easytask.plan.render import (
    RenderedAction,
    evaluate_when,
    loop_result,
    render_action,
    render_command,
    task_result,
)

__all__ = [
    "CONNECTIONS",
    "CheckedRun",
    "HostSource",
    "LoopItem",
    "PlannedRun",
    "PlannedTask",
    "PlaybookPlan",
    "RenderedAction",
    "RunKey",
    "SSHOptions",
    "TaskRun",
    "check_limits",
    "check_playbook",
    "connection_of",
    "connection_warnings",
    "dumps_check",
    "evaluate_when",
    "format_check",
    "loop_result",
    "parse_extra_vars",
    "plan_adhoc",
    "plan_playbook",
    "plan_runs",
    "render_action",
    "render_command",
    "serial_batches",
    "ssh_options",
    "stop_after_batch",
    "tag_names",
    "tag_selected",
    "task_result",
]
