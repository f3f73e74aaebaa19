"""Job templates and approvals: saving, listing, deleting templates; a launch's approval
request, its decision and its expiry; the approval rules; a part of `Store`."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import update
from sqlmodel import col, select

from easytask.store import audit as audit_chain
from easytask.store.audit import AuditNote
from easytask.store.base import Queries
from easytask.store.models import ApprovalRule, Job, JobApproval, JobTemplate, RunState, utcnow

AWAITING = RunState.AWAITING_APPROVAL


class TemplateQueries(Queries):
    """The Store's queries on job templates and approvals (mixed into `Store`)."""

    def list_templates(self) -> list[JobTemplate]:
        """Every template, by name."""
        with self.session() as s:
            return list(s.exec(select(JobTemplate).order_by(col(JobTemplate.name))))

    def get_template(self, name: str) -> JobTemplate | None:
        """The template of this name, if there is one."""
        with self.session() as s:
            return s.exec(select(JobTemplate).where(JobTemplate.name == name)).first()

    def put_template(
        self,
        name: str,
        kind: str,
        definition: str,
        approval: bool,
        actor: str,
        audit: AuditNote,
        *,
        create: bool,
    ) -> JobTemplate | None:
        """Create (`create`; None if the name is taken) or replace (None if there is no such
        template) a template, with its audit event in the same transaction."""
        with self.session() as s:
            row = s.exec(select(JobTemplate).where(JobTemplate.name == name)).first()
            if (row is None) == (not create):
                return None
            now = utcnow()
            if row is None:
                row = JobTemplate(name=name, created_by=actor, created_at=now)
            row.kind, row.definition, row.approval = kind, definition, approval
            row.updated_by, row.updated_at = actor, now
            s.add(row)
            s.flush()
            audit_chain.append_note(s.connection(), audit)
            s.commit()
            s.refresh(row)
            return row

    def delete_template(self, name: str, audit: AuditNote) -> JobTemplate | None:
        """Delete a template with its audit event in the same transaction; None if none."""
        with self.session() as s:
            row = s.exec(select(JobTemplate).where(JobTemplate.name == name)).first()
            if row is None:
                return None
            s.delete(row)
            audit_chain.append_note(s.connection(), audit)
            s.commit()
            return row

    # -- approvals --------------------------------------------------------------------------

    def create_approval(
        self, job: Job, approval: JobApproval, audit: AuditNote
    ) -> tuple[Job, JobApproval]:
        """A job that waits for approval (no runs) and its request, with the audit event (the
        job's id added to it), in one transaction."""
        with self.session() as s:
            job.server = job.server or getattr(self, "owner", "")
            job.state = AWAITING
            s.add(job)
            s.flush()
            assert job.id is not None
            approval.job_id = job.id
            approval.state = AWAITING
            s.add(approval)
            audit_chain.append_note(s.connection(), audit, job=job.id)
            s.commit()
            s.refresh(job)
            s.refresh(approval)
            return job, approval

    def get_approval(self, job_id: int) -> JobApproval | None:
        """The approval request of a job, if it has one."""
        with self.session() as s:
            return s.exec(select(JobApproval).where(JobApproval.job_id == job_id)).first()

    def list_approvals(self, state: str | None = AWAITING, limit: int = 200) -> list[JobApproval]:
        """Approval requests (those in `state`, every one with None), newest first."""
        with self.session() as s:
            q = select(JobApproval).order_by(col(JobApproval.id).desc()).limit(limit)
            if state is not None:
                q = q.where(JobApproval.state == state)
            return list(s.exec(q))

    def decide_approval(
        self,
        job_id: int,
        state: str,
        by: str,
        comment: str,
        audit: AuditNote,
        *,
        job_state: str | None = None,
    ) -> JobApproval | None:
        """Move a waiting request to `state` (its job to `job_state`, default the same), with
        its audit event, in one transaction; None if it no longer waits (decided elsewhere, or
        expired): one decision wins, across servers too."""
        now = utcnow()
        with self.session() as s:
            changed = s.execute(
                update(JobApproval)
                .where(col(JobApproval.job_id) == job_id, col(JobApproval.state) == AWAITING)
                .values(state=state, decided_by=by, decided_at=now, comment=comment)
            )
            if changed.rowcount != 1:  # type: ignore[attr-defined]
                s.rollback()
                return None
            finished = now if (job_state or state) != AWAITING else None
            s.execute(
                update(Job)
                .where(col(Job.id) == job_id)
                .values(state=job_state or state, finished_at=finished)
            )
            audit_chain.append_note(s.connection(), audit)
            s.commit()
            return s.exec(select(JobApproval).where(JobApproval.job_id == job_id)).first()

    def set_launched(self, job_id: int, launched: int) -> None:
        """Note the job an approved request started."""
        with self.session() as s:
            s.execute(
                update(JobApproval)
                .where(col(JobApproval.job_id) == job_id)
                .values(launched_job=launched)
            )
            s.commit()

    def approved_launch_failed(self, job_id: int, audit: AuditNote) -> None:
        """An approved request whose launch failed: its job ends `failed`, with the audit
        event in the same transaction."""
        with self.session() as s:
            s.execute(
                update(Job)
                .where(col(Job.id) == job_id, col(Job.state) == RunState.APPROVED)
                .values(state=RunState.FAILED, finished_at=utcnow())
            )
            audit_chain.append_note(s.connection(), audit)
            s.commit()

    def expired_approvals(self, now: datetime) -> list[JobApproval]:
        """Waiting requests whose time is up."""
        with self.session() as s:
            q = select(JobApproval).where(
                JobApproval.state == AWAITING, col(JobApproval.expires_at) <= now
            )
            return list(s.exec(q))

    # -- approval rules ---------------------------------------------------------------------

    def list_approval_rules(self) -> list[ApprovalRule]:
        """Every approval rule, oldest first."""
        with self.session() as s:
            return list(s.exec(select(ApprovalRule).order_by(col(ApprovalRule.id))))

    def create_approval_rule(self, row: ApprovalRule, audit: AuditNote) -> ApprovalRule:
        """Store a new rule with its audit event (which names the new id) in one transaction."""
        with self.session() as s:
            s.add(row)
            s.flush()
            audit_chain.append_note(s.connection(), audit, rule=row.id)
            s.commit()
            s.refresh(row)
            return row

    def pause_approval_rule(
        self, rule_id: int, paused: bool, actor: str, audit: AuditNote
    ) -> ApprovalRule | None:
        """Pause or resume a rule with its audit event; None if there is no such rule."""
        with self.session() as s:
            row = s.get(ApprovalRule, rule_id)
            if row is None:
                return None
            row.paused, row.updated_by, row.updated_at = paused, actor, utcnow()
            s.add(row)
            s.flush()
            audit_chain.append_note(s.connection(), audit)
            s.commit()
            s.refresh(row)
            return row

    def delete_approval_rule(self, rule_id: int, audit: AuditNote) -> ApprovalRule | None:
        """Delete a rule with its audit event in the same transaction; None if none."""
        with self.session() as s:
            row = s.get(ApprovalRule, rule_id)
            if row is None:
                return None
            s.delete(row)
            audit_chain.append_note(s.connection(), audit)
            s.commit()
            return row
