"""Planning: an ad hoc command or a playbook plus an inventory -> the runs of a job (pure code)."""

from easytask.plan.adhoc import CONNECTIONS, HostSource, PlannedRun, connection_of, plan_adhoc
from easytask.plan.check import (
    CheckedRun,
    check_limits,
    check_playbook,
    dumps_check,
    format_check,
)
from easytask.plan.playbook import (
    PlannedTask,
    PlaybookPlan,
    RunKey,
    TaskRun,
    parse_extra_vars,
    plan_playbook,
    serial_batches,
    stop_after_batch,
    tag_names,
    tag_selected,
)
from easytask.plan.render import (
    RenderedAction,
    evaluate_when,
    render_action,
    render_command,
    task_result,
)

__all__ = [
    "CONNECTIONS",
    "CheckedRun",
    "HostSource",
    "PlannedRun",
    "PlannedTask",
    "PlaybookPlan",
    "RenderedAction",
    "RunKey",
    "TaskRun",
    "check_limits",
    "check_playbook",
    "connection_of",
    "dumps_check",
    "evaluate_when",
    "format_check",
    "parse_extra_vars",
    "plan_adhoc",
    "plan_playbook",
    "render_action",
    "render_command",
    "serial_batches",
    "stop_after_batch",
    "tag_names",
    "tag_selected",
    "task_result",
]
