"""The tables EasyTask keeps: agents, jobs, runs, their timeline, log lines, users and tokens."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import overload

from sqlalchemy import BigInteger, Column, DateTime, Index, Integer, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

# Times are stored with their zone on PostgreSQL (timestamptz); SQLite keeps naive UTC text and
# the store attaches UTC when it reads them back (see easytask.store.db.as_utc).
TZ = DateTime(timezone=True)
# Log line ids may pass 2**31 on PostgreSQL; SQLite needs INTEGER to keep its rowid alias.
BIGID = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


@overload
def as_utc(value: datetime) -> datetime: ...


@overload
def as_utc(value: None) -> None: ...


def as_utc(value: datetime | None) -> datetime | None:
    """Attach UTC to a naive datetime read back from SQLite."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


class AgentState:
    """Enrolment states of an agent."""

    PENDING = "pending"
    ACCEPTED = "accepted"
    REVOKED = "revoked"


class RunState:
    """Run states; the last five are final."""

    QUEUED = "queued"
    DISPATCHED = "dispatched"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    TERMINATED = "terminated"
    UNREACHABLE = "unreachable"
    SKIPPED = "skipped"
    # A job's alone: a template launch waiting for a second user (no runs yet), and how that
    # ended: approved (its launch is another job, named in its approval), rejected or expired.
    AWAITING_APPROVAL = "awaiting approval"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"

    FINAL = frozenset(
        {SUCCESS, FAILED, TERMINATED, UNREACHABLE, SKIPPED, APPROVED, REJECTED, EXPIRED}
    )
    ALL = (QUEUED, DISPATCHED, RUNNING, SUCCESS, FAILED, TERMINATED, UNREACHABLE, SKIPPED)
    JOB_ONLY = (AWAITING_APPROVAL, APPROVED, REJECTED, EXPIRED)


class Agent(SQLModel, table=True):
    """A resident agent, known by the fingerprint of its host key."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True)
    fingerprint: str = Field(index=True)
    public_key: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    state: str = Field(default=AgentState.PENDING)
    groups: str = ""  # comma-separated labels the agent reports (its hello's `groups`)
    approved_groups: str = ""  # comma-separated labels an admin approved: only these place it
    slots: int = 4
    version: str = ""
    facts: str = "{}"  # JSON
    address: str = ""
    server: str = ""  # the server process that holds the link
    connected: bool = False
    created_at: datetime = Field(default_factory=utcnow, sa_type=TZ)
    last_seen: datetime | None = Field(default=None, sa_type=TZ)
    state_since: datetime | None = Field(default=None, sa_type=TZ)


class EnrollToken(SQLModel, table=True):
    """A one-time (or N-times) enrolment token, stored hashed."""

    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(index=True, unique=True)
    uses_left: int = 1
    expires_at: datetime | None = Field(default=None, sa_type=TZ)
    created_by: str = ""
    created_at: datetime = Field(default_factory=utcnow, sa_type=TZ)


class Job(SQLModel, table=True):
    """One submission: an ad hoc command or a playbook over a host pattern."""

    id: int | None = Field(default=None, primary_key=True)
    kind: str = "adhoc"
    name: str = ""  # task or playbook name
    pattern: str = ""
    command: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    vars: str = "{}"
    submitted_by: str = ""
    source: str = ""  # cli | console | schedule, plus the client address
    server: str = ""  # the server that runs it (its state dir's server.id); "" = any
    masked: bool = False  # secrets masked in its output are kept by its server alone
    state: str = Field(default=RunState.QUEUED, index=True)
    timeout: float | None = None
    pending_timeout: float = 60.0
    forks: int = 0
    created_at: datetime = Field(default_factory=utcnow, index=True, sa_type=TZ)
    finished_at: datetime | None = Field(default=None, sa_type=TZ)


class Run(SQLModel, table=True):
    """One task on one host: the unit that is queued, dispatched and recorded."""

    __table_args__ = (
        Index("ix_run_state_host", "state", "host"),
        Index("ix_run_created", "created_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="job.id", index=True)
    task: str = ""
    host: str = Field(index=True)
    connection: str = "agent"  # agent | ssh | local
    agent: str = ""
    command: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    state: str = Field(default=RunState.QUEUED)
    # The server that executes the run: its job's server, another one that holds the run's
    # agent, or OFFERED while it waits for one of those to claim it.
    server: str = Field(default="", index=True)
    attempt: int = 1
    exit_code: int | None = None
    signal: str | None = None
    reason: str = ""
    created_at: datetime = Field(default_factory=utcnow, sa_type=TZ)
    started_at: datetime | None = Field(default=None, sa_type=TZ)
    finished_at: datetime | None = Field(default=None, sa_type=TZ)
    out_bytes: int = 0
    out_lines: int = 0
    truncated: bool = False
    dropped_bytes: int = 0
    dropped_lines: int = 0


OFFERED = "*offered"  # Run.server of a run waiting for the server that holds its agent


class ServerNode(SQLModel, table=True):
    """A server process sharing the database; `seen_at` is its heartbeat."""

    __tablename__ = "server_node"

    id: str = Field(primary_key=True)  # the lasting id in STATE_DIR/server.id
    process: str = ""  # host:pid
    url: str = ""
    agents: str = ""  # address agents connect to
    started_at: datetime = Field(default_factory=utcnow, sa_type=TZ)
    seen_at: datetime = Field(default_factory=utcnow, sa_type=TZ)


class RunEvent(SQLModel, table=True):
    """The timeline of a run: queued, dispatched, started, retried, terminated, finished."""

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", index=True)
    at: datetime = Field(default_factory=utcnow, sa_type=TZ)
    kind: str
    detail: str = ""


class LogLine(SQLModel, table=True):
    """One line of a run's output; seq runs 1..n without gaps."""

    __tablename__ = "log_line"
    __table_args__ = (
        UniqueConstraint("run_id", "seq", name="uq_log_line_run_seq"),
        Index("ix_log_line_run_level_seq", "run_id", "level", "seq"),
    )

    id: int | None = Field(default=None, sa_column=Column(BIGID, primary_key=True))
    run_id: int = Field(foreign_key="run.id")
    seq: int
    ts: float
    stream: str
    level: str
    text: str = Field(sa_column=Column(Text, nullable=False))


class User(SQLModel, table=True):
    """A person who logs in to the console or uses the CLI."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True)
    password_hash: str = ""
    role: str = "viewer"
    scope: str = ""  # a host pattern the user may run on; empty = every host
    disabled: bool = False
    created_at: datetime = Field(default_factory=utcnow, sa_type=TZ)


class RevokedSession(SQLModel, table=True):
    """A console session ended by logout: its id (hashed) is refused until the cookie expires."""

    __tablename__ = "revoked_session"

    id: int | None = Field(default=None, primary_key=True)
    sid_hash: str = Field(index=True, unique=True)
    expires_at: datetime = Field(index=True)


class LoginAttempt(SQLModel, table=True):
    """A sign-in attempt counted against a key (`user:NAME` or `addr:ADDRESS`) until it ages out."""

    __tablename__ = "login_attempt"
    __table_args__ = (Index("ix_login_attempt_key_at", "key", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    key: str
    at: datetime = Field(default_factory=utcnow, index=True, sa_type=TZ)


class ApiToken(SQLModel, table=True):
    """A bearer token for the API, stored hashed."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = ""
    token_hash: str = Field(index=True, unique=True)
    user_id: int = Field(foreign_key="user.id")
    created_at: datetime = Field(default_factory=utcnow, sa_type=TZ)
    expires_at: datetime | None = Field(default=None, sa_type=TZ)
    revoked: bool = False
    last_used: datetime | None = Field(default=None, sa_type=TZ)


class Schedule(SQLModel, table=True):
    """A playbook that fires on a cron expression."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True)
    path: str
    cron: str
    tz: str = "UTC"
    catch_up: str = "none"
    enabled: bool = True
    next_fire: datetime | None = Field(default=None, sa_type=TZ)
    last_fire: datetime | None = Field(default=None, sa_type=TZ)
    last_job: int | None = None
    updated_at: datetime = Field(default_factory=utcnow, sa_type=TZ)
    origin: str = "file"  # file: read from a playbook's `schedule:`; db: made through the API
    target: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    # ^ db: what it runs, JSON (see easytask.service.schedules)
    created_by: str = ""


class ScheduleFire(SQLModel, table=True):
    """One fire time of a schedule; the unique pair makes it fire once across servers."""

    __tablename__ = "schedule_fire"
    __table_args__ = (UniqueConstraint("schedule_id", "fire_time", name="uq_schedule_fire"),)

    id: int | None = Field(default=None, primary_key=True)
    schedule_id: int = Field(foreign_key="schedule.id")
    fire_time: datetime = Field(sa_type=TZ)
    job_id: int | None = None
    server: str = ""
    created_at: datetime = Field(default_factory=utcnow, sa_type=TZ)


class AuditEvent(SQLModel, table=True):
    """An append-only, hash-chained record of who did what: hash = HMAC-SHA256 under the
    chain's key (plain sha256 before it existed) of prev_hash + json. Ids are never reused."""

    __tablename__ = "audit_event"
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, index=True, sa_type=TZ)
    actor: str = ""
    action: str = Field(index=True)
    source: str = ""
    detail: str = Field(default="{}", sa_column=Column(Text, nullable=False, default="{}"))
    prev_hash: str = ""
    hash: str = Field(default="", index=True)


class JobWebhook(SQLModel, table=True):
    """A webhook one job asked for (a playbook's `notify:`), called when the job finishes."""

    __tablename__ = "job_webhook"

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="job.id", index=True)
    url: str = Field(sa_column=Column(Text, nullable=False))
    events: str = "all"  # all | failed


class WebhookDelivery(SQLModel, table=True):
    """One attempt to deliver a job's finish notification to a webhook URL."""

    __tablename__ = "webhook_delivery"

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="job.id", index=True)
    delivery: str = ""  # the same for every attempt of one notification
    url: str = Field(sa_column=Column(Text, nullable=False))
    event: str = ""  # the job's final state
    attempt: int = 1
    at: datetime = Field(default_factory=utcnow, sa_type=TZ)
    ok: bool = False
    status_code: int | None = None
    error: str = ""
    duration_ms: float = 0.0


class Credential(SQLModel, table=True):
    """A named secret (a value, an SSH private key, a become password), sealed at rest: only
    its sealed form and the id of the key that sealed it are stored."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True)
    kind: str = "value"  # value | ssh-key | become-password
    scope: str = ""  # a host pattern the credential may be used on; empty = every host
    key_id: str = ""
    sealed: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    created_by: str = ""
    created_at: datetime = Field(default_factory=utcnow, sa_type=TZ)
    updated_by: str = ""
    updated_at: datetime = Field(default_factory=utcnow, sa_type=TZ)
    last_used_at: datetime | None = Field(default=None, sa_type=TZ)
    last_used_by: str = ""


class HostMetric(SQLModel, table=True):
    """One host sample an agent took (see easytask.hostsample): its time is its key."""

    __tablename__ = "hostmetric"
    __table_args__ = (Index("ix_hostmetric_t", "t"),)

    agent: str = Field(primary_key=True)
    t: float = Field(primary_key=True)  # epoch seconds, to the millisecond
    cpu: float | None = None
    iowait: float | None = None
    load1: float | None = None
    load5: float | None = None
    load15: float | None = None
    mem_used: float | None = None
    mem_available: float | None = None
    swap_used: float | None = None
    disk_root_pct: float | None = None
    disk_work_pct: float | None = None
    net_rx: float | None = None
    net_tx: float | None = None
    procs: float | None = None


class HostMetricRollup(SQLModel, table=True):
    """One agent's samples of one minute: how many, and each field's min, average and max."""

    __tablename__ = "hostmetric_rollup"
    __table_args__ = (Index("ix_hostmetric_rollup_t", "t"),)

    agent: str = Field(primary_key=True)
    t: float = Field(primary_key=True)  # the minute's start, epoch seconds
    n: int = 0
    cpu_min: float | None = None
    cpu_avg: float | None = None
    cpu_max: float | None = None
    iowait_min: float | None = None
    iowait_avg: float | None = None
    iowait_max: float | None = None
    load1_min: float | None = None
    load1_avg: float | None = None
    load1_max: float | None = None
    load5_min: float | None = None
    load5_avg: float | None = None
    load5_max: float | None = None
    load15_min: float | None = None
    load15_avg: float | None = None
    load15_max: float | None = None
    mem_used_min: float | None = None
    mem_used_avg: float | None = None
    mem_used_max: float | None = None
    mem_available_min: float | None = None
    mem_available_avg: float | None = None
    mem_available_max: float | None = None
    swap_used_min: float | None = None
    swap_used_avg: float | None = None
    swap_used_max: float | None = None
    disk_root_pct_min: float | None = None
    disk_root_pct_avg: float | None = None
    disk_root_pct_max: float | None = None
    disk_work_pct_min: float | None = None
    disk_work_pct_avg: float | None = None
    disk_work_pct_max: float | None = None
    net_rx_min: float | None = None
    net_rx_avg: float | None = None
    net_rx_max: float | None = None
    net_tx_min: float | None = None
    net_tx_avg: float | None = None
    net_tx_max: float | None = None
    procs_min: float | None = None
    procs_avg: float | None = None
    procs_max: float | None = None


class JobTemplate(SQLModel, table=True):
    """A saved launch (a command or a playbook) with typed parameters (see easytask.jobtemplate)."""

    __tablename__ = "job_template"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True)
    kind: str = "command"  # command | playbook
    definition: str = Field(default="{}", sa_column=Column(Text, nullable=False, default="{}"))
    approval: bool = False  # a launch waits for a second user's approval
    created_by: str = ""
    created_at: datetime = Field(default_factory=utcnow, sa_type=TZ)
    updated_by: str = ""
    updated_at: datetime = Field(default_factory=utcnow, sa_type=TZ)


class JobApproval(SQLModel, table=True):
    """A launch waiting for (or given) a second user's decision; its job waits with it."""

    __tablename__ = "job_approval"

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="job.id", index=True, unique=True)
    template: str = ""
    request: str = Field(default="{}", sa_column=Column(Text, nullable=False, default="{}"))
    requested_by: str = ""
    state: str = Field(default="awaiting approval", index=True)
    expires_at: datetime = Field(default_factory=utcnow, sa_type=TZ)
    decided_by: str = ""
    decided_at: datetime | None = Field(default=None, sa_type=TZ)
    comment: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    launched_job: int | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_type=TZ)


class ApprovalRule(SQLModel, table=True):
    """A host pattern whose submissions wait for approval (admins manage them; see
    easytask.service.approvalrules); a paused rule holds nothing."""

    __tablename__ = "approval_rule"

    id: int | None = Field(default=None, primary_key=True)
    pattern: str = ""
    note: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    paused: bool = False
    created_by: str = ""
    created_at: datetime = Field(default_factory=utcnow, sa_type=TZ)
    updated_by: str = ""
    updated_at: datetime = Field(default_factory=utcnow, sa_type=TZ)
