"""A playbook run's attempts: each started on its host (a command, a copy, a script) or, after a
restart, re-attached; retried with delay and backoff, each one judged by its task's failed_when
and changed_when; the secret values masked in what they show (mixed into `PlaybookJob`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from easytask.errors import EasyTaskError
from easytask.masking import Masker
from easytask.plan import PlannedTask, PlaybookPlan, task_result
from easytask.plan.outcome import ignored
from easytask.scheduler import fileops
from easytask.scheduler.engine import JobEngine
from easytask.scheduler.inflight import JobOptions
from easytask.scheduler.playrows import Slot
from easytask.scheduler.renderthreads import off_loop
from easytask.scheduler.verdicts import judge_attempt, mark_ignored
from easytask.store.models import Run, RunState
from easytask.templating import render
from easytask.vault import vault_values


class Attempts:
    """Runs a planned run's attempts (mixed into `PlaybookJob`)."""

    engine: JobEngine
    plan: PlaybookPlan
    pending_timeout: float
    ssh_keys: dict[str, str]
    become_passwords: dict[str, str]

    async def _attempts(
        self, slot: Slot, task: PlannedTask, action: Any, host: str, context: Mapping[str, Any]
    ) -> None:
        """Run the task, retrying with delay and backoff; every attempt is its own run row,
        judged by the task's failed_when/changed_when when it ends."""
        run = slot.run
        attempt = run.attempt
        resumed = slot.resumed
        while True:
            if resumed:
                await self._resumed_attempt(run, task, action, host)
                resumed = False
            else:
                await self._attempt(run, task, action, host)
            fresh = await self.engine.store.call(self.engine.store.get_run, run.id or 0)
            assert fresh is not None
            verdict = await judge_attempt(self.engine, fresh, task.task, host, context, off_loop)
            state = verdict.state
            if (
                state == RunState.SUCCESS
                or attempt > task.retries
                or verdict.error
                or state == RunState.TERMINATED
                and "killed by" in fresh.reason
            ):
                break
            attempt += 1
            wait = task.retry_wait(attempt)
            nxt = await self.engine.store.call(self.engine.store.add_attempt, run.id or 0, attempt)
            await self.engine.store.call(
                self.engine.store.update_run,
                run.id or 0,
                "retry scheduled",
                f"attempt {attempt} (run {nxt.id}) in {wait:g}s",
            )
            self.engine.track(nxt)
            await asyncio.sleep(wait)
            run = nxt
            slot.run = nxt
        slot.state = state
        if ignored(task.task, state, verdict.error):
            slot.ignored = True
            await mark_ignored(self.engine, run, verdict)
        stdout, stderr = await self.engine.output_text(run.id or 0)
        slot.result = task_result(stdout, stderr, fresh.exit_code, state, changed=verdict.changed)

    def masks(self, host: str) -> tuple[str, ...]:
        """The values of the playbook's secret variables on a host, and every value that came
        from an Ansible Vault (its inventory vars, the play's vars and vars_files)."""
        values = []
        if self.plan.playbook.secrets:
            context = self.plan.context(host)
            for name in self.plan.playbook.secrets:
                if name in context:
                    try:
                        values.append(render("{{ " + name + " }}", context, what=f"secret {name}"))
                    except EasyTaskError:
                        continue
        values += self.vault_masks(host)
        return tuple(v for v in dict.fromkeys(values) if v)

    def vault_masks(self, host: str) -> tuple[str, ...]:
        """The values on a host that came from an Ansible Vault (cheap: no rendering)."""
        return tuple(vault_values(self.plan.host_vars.get(host, {}), self.plan.playbook.vars))

    async def _attempt(self, run: Run, task: PlannedTask, action: Any, host: str) -> None:
        masks = (
            await off_loop(self.masks, host)
            if self.plan.playbook.secrets
            else self.vault_masks(host)
        )
        options = JobOptions(
            timeout=task.timeout,
            pending_timeout=self.pending_timeout,
            masks=masks,
            env=dict(action.env),  # exported apart from the command line (see shell_line)
            ssh_keys={h: k for h, k in self.ssh_keys.items() if h == host},
            become_passwords={h: p for h, p in self.become_passwords.items() if h == host},
            become=self.plan.become_request(task),
        )
        hostvars = dict(self.plan.host_vars.get(host, {}))
        if action.kind == "copy":
            await fileops.copy(self.engine, run, hostvars, action, options)
            return
        if action.kind == "script":
            await fileops.script(self.engine, run, hostvars, action, options)
            return
        # the stored command shows the exports, and **** where a secret was rendered into it
        shown = Masker(masks)(action.shell_line())
        await self.engine.store.call(
            self.engine.store.update_run, run.id or 0, None, "", command=shown
        )
        run.command = action.shell_line(env=False)
        await self.engine.execute_one(run, hostvars, options)

    async def _resumed_attempt(self, run: Run, task: PlannedTask, action: Any, host: str) -> None:
        """Go on with an attempt a previous server process left queued or in flight."""
        if run.state == RunState.QUEUED or action.kind == "copy":
            # A copy sends whole files to a temporary name: sending again is safe.
            await self._attempt(run, task, action, host)
            return
        if run.connection != "agent":
            # The link to an agentless host went with the old process.
            await self.engine.finish(
                run, RunState.FAILED, reason="connection lost (server restarted)"
            )
            return
        # On an agent the command goes on under its supervisor: re-attach with the stored command
        # (for a script, the one that runs the already uploaded file).
        options = JobOptions(
            timeout=task.timeout,
            pending_timeout=self.pending_timeout,
            become=self.plan.become_request(task),
        )
        await self.engine.execute_one(run, dict(self.plan.host_vars.get(host, {})), options)
