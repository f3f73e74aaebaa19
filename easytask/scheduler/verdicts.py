"""A playbook run's end judged and marked: failed_when, changed_when, ignore_errors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

from easytask.plan.outcome import EXPRESSION_TEXT, Verdict, default_changed, judge, judged
from easytask.playbook import Task
from easytask.scheduler import events
from easytask.scheduler.engine import JobEngine
from easytask.store.models import Run
from easytask.store.runs import CHANGED, IGNORED, RunChange

__all__ = ["expression_output", "judge_attempt", "mark_ignored"]

PAGE = 2000  # lines read at a time for the expressions


async def judge_attempt(
    engine: JobEngine,
    run: Run,
    task: Task,
    host: str,
    context: Mapping[str, Any],
    off_loop: Callable[..., Awaitable[Verdict]],
) -> Verdict:
    """An ended attempt (its row as stored) through its task's failed_when/changed_when.

    A new state or reason is stored with the expressions' verdicts on the run's timeline in
    one transaction, and sent to viewers; a run that changed something gets a `changed`
    event. Expressions are evaluated by `off_loop` (the render threads: bounded, sandboxed)."""
    if not judged(task, run.state, run.exit_code):
        verdict = Verdict(run.state, run.reason, default_changed(task, run.state, run.reason))
    else:
        stdout, stderr, cut = await expression_output(engine, run.id or 0)
        verdict = await off_loop(
            partial(
                judge,
                task,
                host,
                context,
                state=run.state,
                reason=run.reason,
                rc=run.exit_code,
                stdout=stdout,
                stderr=stderr,
                cut=cut,
            )
        )
    run_id = run.id or 0
    moved = (verdict.state, verdict.reason) != (run.state, run.reason)
    changes = [RunChange(run_id, kind, detail) for kind, detail in verdict.notes]
    if moved and changes:  # the new state goes in with the verdicts that decided it
        changes[-1].fields = {"state": verdict.state, "reason": verdict.reason}
    if verdict.changed:
        why = (
            f"changed_when {task.changed_when} is true"
            if task.changed_when is not None
            else f"the {task.kind} succeeded (no changed_when)"
        )
        changes.append(RunChange(run_id, CHANGED, why))
    if len(changes) == 1 and not changes[0].fields:
        # the usual case, a mark alone: batched with the other runs' changes
        await engine.recorder.run_state.change(run_id, changes[0].event, changes[0].detail)
    elif changes:  # one transaction
        await engine.store.call(engine.store.update_runs, changes)
    if moved:
        run.state, run.reason = verdict.state, verdict.reason
        engine.recorder.publish_run(
            run,
            events.run_finished(
                run.id,
                run.host,
                run.state,
                reason=run.reason,
                exit_code=run.exit_code,
                duration=None,
                seq=run.out_lines,
            ),
        )
    return verdict


async def mark_ignored(engine: JobEngine, run: Run, verdict: Verdict) -> None:
    """Mark a run's failure as one its task's ignore_errors lets the play go past (the job's
    end reads the mark: see `RunQueries._end_job`)."""
    detail = f"ignore_errors: {verdict.reason or verdict.state}; the play goes on"
    await engine.recorder.run_state.change(run.id or 0, IGNORED, detail)


async def expression_output(engine: JobEngine, run_id: int) -> tuple[str, str, bool]:
    """What failed_when/changed_when see of a run's output: the first EXPRESSION_TEXT
    characters of stdout and of stderr, from at most twice that read in pages, and whether
    anything was left out."""
    await engine.writer.flush()
    store = engine.store
    texts: dict[str, list[str]] = {"stdout": [], "stderr": []}
    sizes = {"stdout": 0, "stderr": 0}
    cut = False
    after = read = 0
    while True:
        rows = await store.call(partial(store.read_lines, run_id, after_seq=after, limit=PAGE))
        for row in rows:
            read += len(row.text) + 1
            if row.stream not in texts:
                continue
            if sizes[row.stream] >= EXPRESSION_TEXT:
                cut = True
                continue
            piece = row.text[: EXPRESSION_TEXT - sizes[row.stream]]
            cut = cut or len(piece) < len(row.text)
            texts[row.stream].append(piece)
            sizes[row.stream] += len(piece) + 1
        if len(rows) < PAGE:
            break
        after = rows[-1].seq
        if read >= 2 * EXPRESSION_TEXT:
            cut = True  # the rest is past what the expressions see
            break
    return "\n".join(texts["stdout"]), "\n".join(texts["stderr"]), cut
