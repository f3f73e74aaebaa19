"""Every Store method behaves the same on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from easytask.errors import Conflict
from easytask.store.audit import AuditNote
from easytask.store.db import Store, sqlite_url
from easytask.store.identities import HELD_BY, InvalidToken
from easytask.store.models import Job, Run, RunState, WebhookDelivery, as_utc
from easytask.store.runs import JOB_END, JOB_RUNNING, RunChange, new_runs
from tests.support import PostgresCluster


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A store at the current schema, on each backend."""
    if request.param == "postgres":
        cluster: PostgresCluster = request.getfixturevalue("postgres")
        url = cluster.new_database(empty=True)
    else:
        url = sqlite_url(tmp_path / "easytask.db")
    st = Store(url)
    st.create_schema()
    yield st
    st.close()


def _job(store: Store, hosts: list[str], by: str = "alice") -> tuple[Job, list[Run]]:
    job = Job(kind="adhoc", name="uptime", pattern="all", command="uptime", submitted_by=by)
    runs = [Run(job_id=0, task="uptime", host=h, command="uptime") for h in hosts]
    return store.create_job(job, runs)


def test_new_runs_are_the_runs_a_model_makes(store: Store) -> None:
    """A job's runs made by `new_runs` (no validation per field) hold what `Run(...)` holds,
    defaults included, change like them and are stored like them."""
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    values = {"created_at": at, "job_id": 0, "task": "t", "host": "web1", "command": "true"}
    made = Run(**values)
    fast = new_runs([values, {**values, "host": "web2", "connection": "ssh"}])
    assert fast[0].model_dump() == made.model_dump()
    assert fast[0].model_fields_set == made.model_fields_set
    assert fast[1].connection == "ssh" and fast[1].state == RunState.QUEUED
    (alone,) = new_runs([{"job_id": 0, "host": "db1"}])  # a default factory is called
    assert abs((datetime.now(UTC) - alone.created_at).total_seconds()) < 60
    fast[0].state = RunState.RUNNING
    assert fast[0].state == RunState.RUNNING
    fast[0].state = RunState.QUEUED
    job = Job(kind="adhoc", name="t", pattern="all", command="true", submitted_by="alice")
    job, stored = store.create_job(job, fast)
    assert [r.id for r in stored] == [r.id for r in store.job_runs(job.id or 0)]
    rows = {r.host: r for r in store.job_runs(job.id or 0)}
    assert rows["web1"].connection == "agent" and rows["web2"].connection == "ssh"
    assert as_utc(rows["web1"].created_at) == at and rows["web1"].state == RunState.QUEUED


def test_an_enrolment_spends_its_token_and_audits_in_the_records_transaction(
    store: Store,
) -> None:
    """An agent enrolled by a token: the token's use, the record (online) and its agent.enroll
    and agent.online events are one transaction; a spent token changes nothing at all."""
    token = store.create_enroll_token(uses=1, ttl=600, created_by="admin")
    before = len(store.audit_events())
    notes = [
        AuditNote("web1", "agent.enroll", "agent 10.0.0.5", {"agent": "web1"}),
        AuditNote("web1", "agent.online", "agent 10.0.0.5", {"agent": "web1", "server": "s1"}),
    ]
    row = store.register_agent(
        "web1", "SHA256:k", "ssh-ed25519 A", "accepted", token=token, audit=notes,
        connected=True, server="s1",
    )  # fmt: skip
    assert row is not None and row.connected and row.state == "accepted"
    events = store.audit_events()[: len(store.audit_events()) - before]
    assert [e.action for e in reversed(events)] == ["agent.enroll", "agent.online"]
    assert all(json.loads(e.detail)["fingerprint"] == "SHA256:k" for e in events)
    assert not store.consume_enroll_token(token)  # its one use is spent
    again = store.register_agent(
        "web1", "SHA256:k", "ssh-ed25519 A", "accepted", token=token, connected=True
    )  # the same key's hello with it once more (on another server): nothing left to spend
    assert again is not None and again.state == "accepted"
    with pytest.raises(InvalidToken):
        store.register_agent(
            "web2", "SHA256:m", "ssh-ed25519 B", "accepted", token=token, audit=notes
        )
    assert store.get_agent("web2") is None
    assert len(store.audit_events()) == before + 2


def test_a_hello_read_before_an_admins_decision_does_not_undo_it(store: Store) -> None:
    """A pending agent's hello that read its record before an accept or a revoke landed
    writes "pending" for its own key: an accepted record stays accepted, a revoked one is
    refused (None) with nothing changed; a token still enrols a pending record of its key."""
    store.register_agent("web1", "SHA256:k", "ssh-ed25519 A", "pending")
    store.update_agent("web1", state="accepted")
    row = store.register_agent("web1", "SHA256:k", "ssh-ed25519 A", "pending", create=False)
    assert row is not None and row.state == "accepted"
    store.update_agent("web1", state="revoked")
    since = store.get_agent("web1").state_since
    assert store.register_agent("web1", "SHA256:k", "ssh-ed25519 A", "pending") is None
    kept = store.get_agent("web1")
    assert (kept.state, kept.state_since) == ("revoked", since)
    store.register_agent("db1", "SHA256:d", "ssh-ed25519 D", "pending")
    enrolled = store.register_agent("db1", "SHA256:d", "ssh-ed25519 D", "accepted")
    assert enrolled is not None and enrolled.state == "accepted"


def test_agents_users_and_tokens(store: Store) -> None:
    """Agents, enrolment tokens, users and API tokens round-trip with UTC-aware times."""
    agent = store.register_agent("web1", "SHA256:x", "ssh-ed25519 AAA", "pending", slots=2)
    assert agent.id is not None and agent.slots == 2
    store.register_agent("db1", "SHA256:y", "ssh-ed25519 BBB", "accepted")
    assert [a.name for a in store.list_agents()] == ["db1", "web1"]
    changed = store.update_agent("web1", state="accepted", connected=True, server="s1")
    assert changed is not None and changed.connected and changed.state_since is not None
    assert store.update_agent("nobody", state="accepted") is None
    store.disconnect_all_agents("s1")
    got = store.get_agent("web1")
    assert got is not None and not got.connected
    created = as_utc(got.created_at)
    assert created.utcoffset() == timedelta(0)
    assert abs((datetime.now(UTC) - created).total_seconds()) < 60

    token = store.create_enroll_token(uses=1, ttl=600, created_by="admin")
    assert store.consume_enroll_token(token)
    assert not store.consume_enroll_token(token)
    expired = store.create_enroll_token(uses=1, ttl=0.001, created_by="admin")
    time.sleep(0.01)
    assert not store.consume_enroll_token(expired)

    admin = store.ensure_user("admin", "admin")
    assert store.ensure_user("admin", "viewer").id == admin.id
    assert store.create_user("bob", "operator", "h1", scope="web*") is not None
    assert store.create_user("bob", "viewer", "h2") is None
    store.set_password_hash("bob", "h3")
    bob = store.update_user("bob", role="viewer")
    assert bob is not None and bob.password_hash == "h3" and bob.scope == "web*"
    assert store.update_user("nobody", role="viewer") is None
    assert store.get_user_by_id(bob.id or 0) is not None
    assert [u.name for u in store.list_users()] == ["admin", "bob"]

    secret, row = store.issue_api_token("bob", "ci", ttl=3600)
    plain = store.create_api_token("admin", "cli")
    user = store.user_for_token(secret)
    assert user is not None and user.name == "bob"
    assert store.user_for_token(plain) is not None
    assert store.user_for_token("et_nope") is None
    assert [(t.name, owner) for t, owner in store.list_api_tokens()] == [
        ("ci", "bob"),
        ("cli", "admin"),
    ]
    assert [t.name for t, _ in store.list_api_tokens("bob")] == ["ci"]
    revoked = store.revoke_api_token(row.id or 0)
    assert revoked is not None and revoked[1] == "bob"
    assert store.user_for_token(secret) is None
    assert store.revoke_api_token(999999) is None
    store.update_user("admin", disabled=True)
    assert store.user_for_token(plain) is None
    assert store.get_user("admin") is not None


def test_jobs_runs_timeline_and_webhooks(store: Store) -> None:
    """Jobs and runs are created, changed, retried, finished and listed the same way."""
    job, runs = _job(store, ["web1", "web2"])
    assert job.id is not None and [r.host for r in runs] == ["web1", "web2"]
    assert store.get_job(job.id) is not None
    assert [r.id for r in store.job_runs(job.id)] == [r.id for r in runs]
    first, second = (r.id or 0 for r in runs)
    store.mark_job_running(job.id)
    assert store.get_job(job.id).state == RunState.RUNNING  # type: ignore[union-attr]
    now = datetime.now(UTC)
    run = store.update_run(first, "started", "on web1", state=RunState.RUNNING, started_at=now)
    assert run.state == RunState.RUNNING and as_utc(run.started_at) == now
    with pytest.raises(KeyError):
        store.update_run(999999, "started")
    results = store.update_runs(
        [
            RunChange(first, "finished", "exit 0", {"state": RunState.SUCCESS, "exit_code": 0}),
            RunChange(second, "finished", "exit 3", {"state": RunState.FAILED, "exit_code": 3}),
            RunChange(999999, "finished"),
        ]
    )
    assert [r is None for r in results] == [True, True, False]
    assert [e.kind for e in store.run_events(first)] == ["queued", "started", "finished"]
    retry = store.add_attempt(second, 2)
    assert retry.attempt == 2 and retry.host == "web2"
    assert [r.id for r in store.unfinished_runs()] == [retry.id]
    assert store.finish_job_if_done(job.id) is None
    store.update_run(retry.id or 0, "finished", state=RunState.SUCCESS, exit_code=0)
    done = store.finish_job_if_done(job.id)
    assert done is not None and done.state == RunState.SUCCESS and done.finished_at is not None
    assert store.finish_job_if_done(job.id) is None
    assert store.audit_events(action="job.finish")[0].detail.startswith("{")

    other, _ = _job(store, ["db1"], by="carol")
    assert [j.id for j in store.list_jobs()] == [other.id, job.id]
    assert [j.id for j in store.list_jobs(states=[RunState.SUCCESS])] == [job.id]
    assert store.run_state_counts() == {"success": 2, "failed": 1, "queued": 1}
    counts = store.job_state_counts([job.id, other.id or 0])
    assert counts[job.id] == {"success": 2, "failed": 1}
    found = store.find_runs(status=["failed", "success"])
    assert [r.host for r, _ in found] == ["web2", "web2", "web1"]
    assert [r.id for r, _ in store.find_runs(host="db1")] == [
        r.id for r in store.job_runs(other.id or 0)
    ]
    assert len(store.find_runs(task="UPT", job_id=job.id, before_id=retry.id)) == 2
    assert store.find_runs(since=datetime.now(UTC) + timedelta(hours=1)) == []
    store.ping()

    store.add_job_webhooks(job.id, [("https://hooks.example/a", "all")])
    assert [(h.url, h.events) for h in store.job_webhooks(job.id)] == [
        ("https://hooks.example/a", "all")
    ]
    store.add_delivery(WebhookDelivery(job_id=job.id, url="https://hooks.example/a", ok=True))
    assert [d.ok for d in store.deliveries(job.id)] == [True]


def test_log_lines_search_and_windows(store: Store) -> None:
    """Log lines are stored in batches, read back in order, windowed and searched."""
    job, runs = _job(store, ["web1", "web2"], by="dave")
    a, b = (r.id or 0 for r in runs)
    t = time.time()
    store.write_lines(
        [
            (a, 1, t, "stdout", "INFO", "starting backup of /var/lib"),
            (a, 2, t, "stderr", "ERROR", "ERROR: disk full on /dev/sda1"),
            (b, 1, t, "stdout", "INFO", "nothing to do: 100% done_ok"),
            (a, 3, t, "stdout", "INFO", "wrote 5 files with ünïcödé names"),
            (a, 4, t, "system", "INFO", "exit 1"),
        ]
    )
    store.write_lines([(b, 2, t, "stdout", "WARN", "a NUL \x00 inside")])
    store.write_lines([])
    lines = store.read_lines(a)
    assert [line.seq for line in lines] == [1, 2, 3, 4]
    assert lines[2].text == "wrote 5 files with ünïcödé names"
    nul = store.read_lines(b, after_seq=1)[0].text
    assert nul.startswith("a NUL ") and nul.endswith(" inside")
    assert [line.seq for line in store.read_lines(a, levels=["ERROR"])] == [2]
    assert [line.seq for line in store.read_lines(a, grep="DISK FULL")] == [2]
    assert [line.seq for line in store.read_lines(b, grep="100%")] == [1]
    assert [line.seq for line in store.read_lines(b, grep="0%_")] == []
    assert [line.seq for line in store.read_lines(a, after_seq=1, limit=2)] == [2, 3]
    assert [(line.run_id, line.seq) for line in store.read_job_lines(job.id or 0)][:3] == [
        (a, 1),
        (a, 2),
        (b, 1),
    ]
    assert store.count_output_lines(a) == 3
    assert store.output_bytes(a) == sum(len(line.text) for line in lines[:3])
    assert store.max_seq(a) == 4 and store.max_seq(999999) == 0
    # the same three in one query, as a run re-attached after a restart reads them
    assert store.resume_point(a) == (3, 4, store.output_bytes(a))
    assert store.resume_point(999999) == (0, 0, 0)
    # a fleet's re-attached runs read together: the same answers, a run with no line left out
    assert store.resume_points([a, b, 999999]) == {
        a: store.resume_point(a),
        b: store.resume_point(b),
    }
    assert store.resume_points([a]) == {a: store.resume_point(a)}
    assert store.line_stats(a) == (4, 4)
    assert store.count_lines(a) == (4, 4)
    assert store.count_lines(a, ["INFO"]) == (3, 4)
    assert [line.seq for line in store.line_window(a, offset=1, limit=2)] == [2, 3]
    assert [line.seq for line in store.line_window(a, offset=1, limit=5, levels=["INFO"])] == [
        3,
        4,
    ]
    window = store.line_window(a, offset=1, limit=5, levels=["INFO"], after_seq=1)
    assert [line.seq for line in window] == [3, 4]
    assert store.search_lines(a, "FILES") == [(3, 2)]
    assert store.search_lines(a, "exit", levels=["INFO"]) == [(4, 2)]
    assert store.search_lines(b, "100%") == [(1, 0)]
    assert store.search_lines(b, "a\x00b") == []
    assert store.line_tuples(a, after_seq=3) == [(4, t, "system", "INFO", "exit 1")]

    found = store.find_runs(text="disk full")
    assert [(run.id, by) for run, by in found] == [(a, "dave")]
    assert store.find_runs(text="Disk Full")[0][0].id == a
    assert store.find_runs(text='"quoted" AND (nonsense') == []
    assert store.find_runs(text="\x00 ") == []
    assert [run.id for run, _ in store.find_runs(host="web*")] == [b, a]
    assert [run.id for run, _ in store.find_runs(host="web_")] == []
    assert [run.id for run, _ in store.find_runs(host="web?")] == [b, a]
    assert [run.id for run, _ in store.find_runs(task="UPTIME", user="dave")] == [b, a]
    assert [run.id for run, _ in store.find_runs(status=["queued"], job_id=job.id)] == [b, a]
    assert [run.id for run, _ in store.find_runs(after_id=a)] == [b]
    assert [run.id for run, _ in store.find_runs(before_id=b)] == [a]
    since = datetime.now(UTC) - timedelta(minutes=5)
    assert len(store.find_runs(since=since, until=since + timedelta(hours=1))) == 2


def test_schedules_fire_once(store: Store) -> None:
    """A schedule fire time is claimed once; fire times come back as the same UTC instant."""
    row = store.upsert_schedule("nightly", "p.yml", "0 3 * * *", "UTC", "none")
    assert store.upsert_schedule("nightly", "p.yml", "0 3 * * *", "UTC", "none").id == row.id
    store.update_schedule("nightly", next_fire=datetime(2030, 1, 1, 3, tzinfo=UTC))
    changed = store.upsert_schedule("nightly", "p.yml", "0 4 * * *", "UTC", "one")
    assert changed.next_fire is None and changed.cron == "0 4 * * *"
    assert store.update_schedule("missing", enabled=False) is None
    assert [s.name for s in store.list_schedules()] == ["nightly"]
    fire = datetime(2030, 1, 1, 4, tzinfo=UTC)
    assert store.claim_fire(row.id or 0, fire, "s1")
    assert not store.claim_fire(row.id or 0, fire, "s2")
    job, _ = _job(store, ["web1"])
    store.set_fire_job(row.id or 0, fire, job.id or 0)
    fires = store.fires(row.id or 0)
    assert [(as_utc(f.fire_time), f.job_id, f.server) for f in fires] == [(fire, job.id, "s1")]


def test_audit_chain_verifies(store: Store) -> None:
    """Audit events chain, filter and verify on both backends."""
    store.audit("alice", "run.submit", "cli", {"pattern": "web*", "hosts": ["web1"]})
    store.audit("bob", "agent.accept", "console", {"agent": "web1"})
    assert [e.actor for e in store.audit_events()] == ["bob", "alice"]
    assert [e.actor for e in store.audit_events(action="run.")] == ["alice"]
    assert [e.actor for e in store.audit_events(actor="bob")] == ["bob"]
    newest = store.audit_events()[0].id or 0
    assert [e.actor for e in store.audit_events(before_id=newest)] == ["alice"]
    assert store.audit_events(since=datetime.now(UTC) + timedelta(hours=1)) == []
    assert store.audit_verify()["ok"] is True


def test_label_approvals_are_checked_audited_and_follow_the_key(store: Store) -> None:
    """Only reported labels are approved and only approved ones withdrawn, with the key if
    given, each with its audit event (key, approved labels after); a refusal changes and
    records nothing; a revoked name taking a new key starts with no approval."""
    store.register_agent("web1", "SHA256:k", "ssh-ed25519 AAAA", "accepted", groups="web,prod")

    def approve(groups: list[str], yes: bool = True, key: str | None = None) -> Any:
        action = "agent.approve" if yes else "agent.withdraw"
        note = AuditNote("ann", action, "cli", {"agent": "web1", "groups": groups})
        return store.set_agent_groups("web1", groups, yes, note, key)

    for refused in (
        lambda: approve(["db"]),
        lambda: approve(["web"], yes=False),
        lambda: approve(["prod"], key="SHA256:other"),
    ):
        with pytest.raises(Conflict):
            refused()
    assert store.audit_events() == []
    assert approve(["prod"], key="SHA256:k").approved_groups == "prod"
    assert approve(["web", "prod"]).approved_groups == "prod,web"
    assert approve(["web"], yes=False).approved_groups == "prod"
    assert store.set_agent_groups("nobody", ["web"], True, None) is None
    events = [(e.action, json.loads(e.detail)) for e in reversed(store.audit_events())]
    assert events[0] == (
        "agent.approve",
        {"agent": "web1", "groups": ["prod"], "fingerprint": "SHA256:k", "approved": ["prod"]},
    )
    assert [e[1]["approved"] for e in events] == [["prod"], ["prod", "web"], ["prod"]]
    store.update_agent("web1", state="revoked")
    again = store.register_agent(
        "web1", "SHA256:new", "ssh-ed25519 BBBB", "pending", replace_revoked=True
    )
    assert again is not None and again.approved_groups == ""
    assert store.audit_verify()["ok"] is True


def test_changes_store_their_audit_event_with_them(store: Store) -> None:
    """An audited change appends its event in its own transaction, with what only it knows;
    a change that finds nothing to change appends none."""
    note = AuditNote
    store.register_agent("web1", "SHA256:k", "ssh-ed25519 AAAA", "pending")
    store.update_agent(
        "web1", note("ann", "agent.accept", "cli", {"agent": "web1"}), state="accepted"
    )
    store.create_user(
        "bob", "viewer", "hash", "", note("ann", "user.create", "cli", {"user": "bob"})
    )
    assert store.update_user("nobody", note("ann", "user.update", "cli", {}), role="admin") is None
    store.update_user("bob", note("ann", "user.update", "cli", {"user": "bob"}), role="operator")
    _, row = store.issue_api_token("bob", "laptop", None, note("ann", "token.create", "cli", {}))
    store.revoke_api_token(row.id or 0, note("ann", "token.revoke", "cli", {}))
    store.create_enroll_token(1, None, "ann", note("ann", "agent.token", "cli", {"uses": 1}))
    events = [(e.action, json.loads(e.detail)) for e in reversed(store.audit_events())]
    assert events == [
        ("agent.accept", {"agent": "web1", "fingerprint": "SHA256:k"}),
        ("user.create", {"user": "bob"}),
        ("user.update", {"user": "bob"}),
        ("token.create", {"token": row.id}),
        ("token.revoke", {"token": row.id, "name": "laptop", "user": "bob"}),
        ("agent.token", {"uses": 1}),
    ]
    assert store.get_user("bob").role == "operator"  # type: ignore[union-attr]
    assert store.audit_verify()["ok"] is True


def test_many_agents_read_by_name_in_one_call(store: Store) -> None:
    """`get_agents`: the records of the names that exist (past one query's share of names),
    as `get_agent` reads them one by one; a name with no record is left out."""
    names = [f"node{i:04d}" for i in range(1203)]
    for i, name in enumerate(names):
        store.register_agent(
            name, f"SHA256:{name}", "ssh-ed25519 AAAA", "accepted", slots=1 + i % 3
        )
    got = store.get_agents([*names, "nobody"])
    assert sorted(got) == names
    for name in (names[0], names[600], names[-1]):
        one = store.get_agent(name)
        assert one is not None and got[name].id == one.id and got[name].slots == one.slots
    assert store.get_agents([]) == {}


def test_many_agents_change_in_one_transaction_each_with_its_audit_events(store: Store) -> None:
    """`update_agents`: changes of several agents in order, in one transaction with their audit
    events (the chain's tail read once); a name with no record changes nothing and appends
    nothing; a later change of the same agent in the batch sees the earlier one; and when one
    change fails, none is stored and no event is appended."""
    note = AuditNote
    for name in ("web1", "web2", "web3"):
        store.register_agent(name, f"SHA256:{name}", "ssh-ed25519 AAAA", "accepted")
    before = len(store.audit_events(limit=1000))
    got = store.update_agents(
        [
            (
                "web1",
                note("web1", "agent.online", "agent a", {"agent": "web1"}),
                {"connected": True},
            ),
            ("nobody", note("nobody", "agent.online", "agent b", {}), {"connected": True}),
            (
                "web2",
                [
                    note("web2", "agent.online", "agent c", {"agent": "web2"}),
                    note("web2", "agent.busy", "agent c", {"agent": "web2", "reason": "load"}),
                ],
                {"connected": True, "server": "s1"},
            ),
            (
                "web1",
                note("web1", "agent.lost", "agent a", {"agent": "web1"}),
                {"connected": False},
            ),
            ("web3", None, {"slots": 7}),
        ]
    )
    assert [None if a is None else (a.name, a.connected) for a in got] == [
        ("web1", True),
        None,
        ("web2", True),
        ("web1", False),
        ("web3", False),
    ]
    assert got[2] is not None and got[2].server == "s1" and got[4] is not None
    assert got[4].slots == 7
    stored = {a.name: a for a in store.list_agents()}
    assert not stored["web1"].connected and stored["web2"].connected and stored["web3"].slots == 7
    events = [(e.action, json.loads(e.detail)) for e in reversed(store.audit_events(limit=1000))]
    assert events[before:] == [
        ("agent.online", {"agent": "web1", "fingerprint": "SHA256:web1"}),
        ("agent.online", {"agent": "web2", "fingerprint": "SHA256:web2"}),
        ("agent.busy", {"agent": "web2", "reason": "load", "fingerprint": "SHA256:web2"}),
        ("agent.lost", {"agent": "web1", "fingerprint": "SHA256:web1"}),
    ]
    assert store.audit_verify()["ok"] is True

    # a change that cannot be stored (no such field): the batch's other changes and every
    # audit event go with it
    with pytest.raises(KeyError):
        store.update_agents(
            [
                ("web3", note("web3", "agent.online", "agent d", {}), {"connected": True}),
                ("web2", note("web2", "agent.lost", "agent c", {}), {"no_such_field": 1}),
            ]
        )
    assert not store.get_agent("web3").connected  # type: ignore[union-attr]
    assert len(store.audit_events(limit=1000)) == before + 4
    assert store.audit_verify()["ok"] is True


def test_a_link_lost_after_its_agent_moved_on_leaves_the_record_alone(store: Store) -> None:
    """A lost link's change (`HELD_BY` its server) is written only while the record says that
    server holds the agent; once another server does, the record stays theirs and only the
    audit event (what happened on the first) is appended."""
    store.register_agent("web1", "SHA256:k", "ssh-ed25519 A", "accepted")
    online = {"connected": True, "server": "s2"}
    store.update_agents([("web1", None, online)])
    since = store.get_agent("web1").state_since  # type: ignore[union-attr]
    lost = AuditNote("web1", "agent.lost", "agent a", {"agent": "web1", "server": "s1"})
    (kept,) = store.update_agents([("web1", lost, {"connected": False, HELD_BY: "s1"})])
    assert kept is not None and (kept.connected, kept.server) == (True, "s2")
    row = store.get_agent("web1")
    assert row is not None and (row.connected, row.server, row.state_since) == (True, "s2", since)
    assert store.audit_events(limit=1)[0].action == "agent.lost"
    (gone,) = store.update_agents([("web1", lost, {"connected": False, HELD_BY: "s2"})])
    assert gone is not None and not gone.connected
    assert not store.get_agent("web1").connected  # type: ignore[union-attr]


def test_prune_deletes_runs_lines_and_index(store: Store) -> None:
    """Pruning removes old runs with their lines and search entries; recent ones stay."""
    old_job, old_runs = _job(store, ["web1"])
    new_job, new_runs = _job(store, ["web2"])
    long_ago = datetime.now(UTC) - timedelta(days=30)
    old, new = old_runs[0].id or 0, new_runs[0].id or 0
    store.update_run(old, "finished", state=RunState.SUCCESS, finished_at=long_ago)
    store.update_run(new, "finished", state=RunState.SUCCESS, finished_at=datetime.now(UTC))
    t = time.time()
    store.write_lines(
        [(old, 1, t, "stdout", "INFO", "needle here"), (new, 1, t, "stdout", "INFO", "hay")]
    )
    cutoff = datetime.now(UTC) - timedelta(days=1)
    assert store.prune_counts(cutoff, cutoff) == {"jobs": 1, "runs": 1, "lines": 1}
    assert store.prune_batch(cutoff, cutoff) == {"jobs": 1, "runs": 1, "lines": 1}
    assert store.get_job(old_job.id or 0) is None and store.get_job(new_job.id or 0) is not None
    assert store.find_runs(text="needle") == []
    assert store.prune_batch(cutoff, None) == {"jobs": 0, "runs": 0, "lines": 0}


@pytest.mark.postgres
def test_audit_chain_stays_a_line_with_several_writers(postgres: PostgresCluster) -> None:
    """Stores of several servers appending audit events at once, one at a time and in batches,
    still form one valid chain."""
    url = postgres.new_database()
    stores = [Store(url) for _ in range(4)]
    try:

        def append(st: Store, n: int) -> None:
            for i in range(15):
                st.audit(f"server{n}", "test.append", "", {"i": i})

        def admit(st: Store, n: int) -> None:
            # a server's admissions in batches: several events a transaction
            name = f"agent{n}"
            for i in range(5):
                online = AuditNote(name, "agent.online", "", {"i": i})
                lost = AuditNote(name, "agent.lost", "", {"i": i})
                st.update_agents(
                    [(name, online, {"connected": True}), (name, lost, {"connected": False})]
                )

        for n, st in enumerate(stores):
            st.register_agent(f"agent{n}", f"SHA256:{n}", "ssh-ed25519 AAAA", "accepted")
        with ThreadPoolExecutor(max_workers=8) as pool:
            work = [pool.submit(append, st, n) for n, st in enumerate(stores)]
            work += [pool.submit(admit, st, n) for n, st in enumerate(stores)]
            for future in work:
                future.result()
        events = stores[0].audit_events(limit=1000)
        assert len(events) == 60 + 40
        assert len({e.prev_hash for e in events}) == 100
        assert sorted(e.id for e in events) == list(range(1, 101))  # one after the other
        assert stores[0].audit_verify()["ok"] is True
    finally:
        for st in stores:
            st.close()


@pytest.mark.postgres
def test_log_writer_reconnects_after_postgres_drops_it(postgres: PostgresCluster) -> None:
    """A batch that fails because PostgreSQL dropped the connection is raised; the next one lands."""
    st = Store(postgres.new_database())
    try:
        _, runs = _job(st, ["web1"])
        rid = runs[0].id or 0
        st.write_lines([(rid, 1, time.time(), "stdout", "INFO", "one")])
        pid = st._raw_conn().driver_connection.info.backend_pid
        postgres.execute(f"SELECT pg_terminate_backend({pid})")
        with pytest.raises(Exception):  # noqa: B017 - psycopg's OperationalError, whichever kind
            st.write_lines([(rid, 2, time.time(), "stdout", "INFO", "two")])
        st.write_lines([(rid, 2, time.time(), "stdout", "INFO", "two again")])
        assert [line.text for line in st.read_lines(rid)] == ["one", "two again"]
    finally:
        st.close()


@pytest.mark.postgres
def test_a_pooled_connection_postgres_dropped_is_replaced_before_use(
    postgres: PostgresCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection that rested in the pool is checked first: one PostgreSQL killed meanwhile is
    replaced, and the call succeeds (no error reaches the caller)."""
    from easytask.store import db as db_module

    url = postgres.new_database()
    st = Store(url)
    try:
        _, runs = _job(st, ["web1"])
        rid = runs[0].id or 0
        assert st.get_run(rid) is not None
        monkeypatch.setattr(db_module, "PING_AFTER_IDLE", 0.0)
        dbname = url.rsplit("/", 1)[1].split("?")[0]
        postgres.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{dbname}' AND pid <> pg_backend_pid()"
        )
        run = st.get_run(rid)
        assert run is not None and run.host == "web1"
    finally:
        st.close()


def test_batched_run_changes_apply_in_order_and_name_missing_runs(store: Store) -> None:
    """Several changes of one run in a batch end at the last; a missing run fails alone."""
    _, runs = _job(store, ["web1", "web2"])
    first, second = (r.id or 0 for r in runs)
    results = store.update_runs(
        [
            RunChange(first, "dispatched", "", {"state": RunState.DISPATCHED}),
            RunChange(999998, "dispatched", "", {"state": RunState.DISPATCHED}),
            RunChange(second, "dispatched", "", {"state": RunState.DISPATCHED}),
            RunChange(first, "started", "", {"state": RunState.RUNNING}),
            RunChange(first, "finished", "exit 4", {"state": RunState.FAILED, "exit_code": 4}),
            RunChange(second, "note", "only an event"),
        ]
    )
    assert [type(r).__name__ for r in results] == [
        "NoneType", "KeyError", "NoneType", "NoneType", "NoneType", "NoneType"
    ]  # fmt: skip
    rows = {r.id: r for r in store.job_runs(runs[0].job_id)}
    assert rows[first].state == RunState.FAILED and rows[first].exit_code == 4
    assert rows[second].state == RunState.DISPATCHED and rows[second].exit_code is None
    assert [e.kind for e in store.run_events(first)] == [
        "queued", "dispatched", "started", "finished"
    ]  # fmt: skip
    assert [e.kind for e in store.run_events(second)] == ["queued", "dispatched", "note"]
    assert store.run_events(999998) == []


def test_a_run_change_marks_its_job_running_and_the_last_end_ends_it(store: Store) -> None:
    """JOB_RUNNING and JOB_END go in the run change's transaction: the job is running with the
    first start, and the end of its last open run ends it once, with its audit event."""
    job, runs = _job(store, ["web1", "web2"])
    first, second = (r.id or 0 for r in runs)
    started = {"state": RunState.RUNNING}
    assert store.update_runs([RunChange(first, "started", "", started, job.id or 0, JOB_RUNNING)])
    assert store.get_job(job.id or 0).state == RunState.RUNNING  # type: ignore[union-attr]
    ok = {"state": RunState.SUCCESS, "exit_code": 0}
    # one run still open: asking for the end changes nothing
    assert store.update_runs([RunChange(first, "finished", "", ok, job.id or 0, JOB_END)]) == [None]
    assert store.get_job(job.id or 0).state == RunState.RUNNING  # type: ignore[union-attr]
    failed = {"state": RunState.FAILED, "exit_code": 2}
    ended = store.update_runs(
        [
            RunChange(second, "finished", "", failed, job.id or 0, JOB_END),
            RunChange(second, "note", "", {}, job.id or 0, JOB_END),  # the job is told once
        ]
    )
    assert isinstance(ended[0], Job) and ended[1] is None
    assert ended[0].id == job.id and ended[0].state == RunState.FAILED
    assert ended[0].finished_at is not None and ended[0].submitted_by == "alice"
    stored = store.get_job(job.id or 0)
    assert stored is not None and stored.state == RunState.FAILED
    assert store.finish_job_if_done(job.id or 0) is None  # already ended: not again
    finishes = store.audit_events(action="job.finish")
    assert len(finishes) == 1 and f'"job": {job.id}' in finishes[0].detail
    assert store.audit_verify()["ok"]


def test_a_job_stream_starts_from_one_read(store: Store) -> None:
    """Hosts by run id, the first lines in arrival order and the job, as the stream needs them."""
    job, runs = _job(store, ["web1", "web2"])
    first, second = (r.id or 0 for r in runs)
    store.write_lines(
        [
            (second, 1, 1.0, "stdout", "INFO", "b1"),
            (first, 1, 2.0, "stdout", "INFO", "a1"),
            (second, 2, 3.0, "stderr", "ERROR", "b2"),
        ]
    )
    snapshot, hosts, lines, found = store.job_stream_start(job.id or 0, False, 2)
    assert snapshot == [] and hosts == {first: "web1", second: "web2"}
    assert [(line.run_id, line.seq, line.text) for line in lines] == [
        (second, 1, "b1"),
        (first, 1, "a1"),
    ]
    assert found is not None and found.id == job.id and found.state == RunState.QUEUED
    rest = store.read_job_lines(job.id or 0, lines[-1].id, 10)
    assert [(line.text, line.level, line.stream) for line in rest] == [("b2", "ERROR", "stderr")]
    snapshot, hosts, lines, found = store.job_stream_start(job.id or 0, True, 0)
    assert [r.host for r in snapshot] == ["web1", "web2"] and lines == []
    assert store.job_stream_start(999999, False, 10) == ([], {}, [], None)


def test_first_lines_of_many_runs_in_one_read(store: Store) -> None:
    """Each run's lines up to a number, texts cut to a length, by run; a run with none is []."""
    job, runs = _job(store, ["web1", "web2", "web3"])
    a, b, c = (r.id or 0 for r in runs)
    store.write_lines(
        [(a, n, 1.0, "stdout", "INFO", f"a{n}-" + "x" * 20) for n in range(1, 6)]
        + [(b, 1, 1.0, "stderr", "WARN", "bé")]
    )
    got = store.first_lines([a, b, c], 3, 4)
    assert got == {
        a: [(1, "stdout", "a1-x"), (2, "stdout", "a2-x"), (3, "stdout", "a3-x")],
        b: [(1, "stderr", "bé")],
        c: [],
    }


def test_sign_in_attempts_are_reserved_per_key_within_the_window(store: Store) -> None:
    """Five attempts per key in the window are reserved; the sixth waits; a success gives its
    own attempt back and clears the user's count, not the address's."""
    keys = ["user:amy", "addr:10.0.0.1"]
    for _ in range(4):
        wait, ids = store.reserve_login(keys, 5, 60)
        assert wait == 0 and len(ids) == 2
    wait, last = store.reserve_login(keys, 5, 60)
    assert wait == 0
    wait, ids = store.reserve_login(keys, 5, 60)
    assert 1 <= wait <= 60 and ids == []
    # the address is at its limit for every name; another address for amy is too
    assert store.reserve_login(["user:bob", "addr:10.0.0.1"], 5, 60)[0] > 0
    assert store.reserve_login(["user:amy", "addr:10.0.0.2"], 5, 60)[0] > 0
    assert store.login_attempts("user:amy") == 5
    store.release_login(last, ["user:amy"])
    assert store.login_attempts("user:amy") == 0
    assert store.login_attempts("addr:10.0.0.1") == 4
    assert store.reserve_login(["user:amy", "addr:10.0.0.2"], 5, 60)[0] == 0
    # attempts older than the window do not count
    assert store.reserve_login(["user:old", "addr:10.0.0.3"], 1, 0.2)[0] == 0
    assert store.reserve_login(["user:old", "addr:10.0.0.3"], 1, 0.2)[0] == 1
    time.sleep(0.3)
    assert store.reserve_login(["user:old", "addr:10.0.0.3"], 1, 0.2)[0] == 0


@pytest.mark.postgres
def test_sign_in_reservations_of_several_servers_take_turns(postgres: PostgresCluster) -> None:
    """Stores of several servers reserving at once for one key never pass the limit together."""
    url = postgres.new_database()
    stores = [Store(url) for _ in range(4)]
    try:

        def reserve(st: Store) -> list[int]:
            return [st.reserve_login(["user:amy", "addr:a"], 5, 60)[0] for _ in range(5)]

        with ThreadPoolExecutor(max_workers=4) as pool:
            waits = [w for f in [pool.submit(reserve, st) for st in stores] for w in f.result()]
        assert waits.count(0) == 5
        assert stores[0].login_attempts("user:amy") == 5
    finally:
        for st in stores:
            st.close()


def _samples(agent: str, start: float, values: list[float]) -> list[tuple[Any, ...]]:
    """Rows (agent, t, *FIELDS) a second apart, every field the given value."""
    from easytask.hostsample import FIELDS

    return [(agent, start + i, *([v] * len(FIELDS))) for i, v in enumerate(values)]


def test_host_samples_are_stored_once_and_rolled_up_by_the_minute(store: Store) -> None:
    """A sample stored twice is kept once; the fold makes one row per minute with count, min,
    average and max, deletes the raw rows, and folds a late sample into its minute."""
    minute = 1_796_400_000.0  # a minute's start
    rows = _samples("web1", minute, [10.0, 20.0, 30.0]) + _samples("web1", minute + 60, [50.0])
    store.write_host_samples(rows)
    store.write_host_samples(rows[:2])  # sent again after a link drop
    assert store.count_host_samples("web1") == 4
    assert [r[:2] for r in store.host_samples("web1", minute, minute + 120)] == [
        (minute, 10.0),
        (minute + 1, 20.0),
        (minute + 2, 30.0),
        (minute + 60, 50.0),
    ]
    assert store.rollup_host_samples(minute + 60) == 3  # the first minute only
    assert store.count_host_samples("web1") == 1
    # the first minute from its rollup, the second from the raw sample left
    assert [(t, n, cpu) for t, n, cpu, *_ in store.host_minutes("web1", minute, minute + 120)] == [
        (minute, 3, 20.0),
        (minute + 60, 1, 50.0),
    ]
    store.write_host_samples(_samples("web1", minute + 30, [60.0]))  # late, into a rolled minute
    store.rollup_host_samples(minute + 60)
    row = store.host_minutes("web1", minute, minute + 59)[0]
    assert (row[0], row[1], row[2]) == (minute, 4, 30.0)
    from sqlalchemy import text

    with store.engine.connect() as conn:
        low, high = conn.execute(
            text("SELECT cpu_min, cpu_max FROM hostmetric_rollup WHERE agent = 'web1'")
        ).one()
    assert (low, high) == (10.0, 60.0)
    assert store.prune_host_rollups(minute + 1, dry_run=True) == 1
    assert store.prune_host_rollups(minute + 1) == 1
    assert store.host_minutes("web1", minute, minute + 59) == []


def test_latest_host_sample_per_known_agent(store: Store) -> None:
    """Each known agent's newest sample since a time; unknown names and older samples are not."""
    store.register_agent("web1", "SHA256:a", "ssh-ed25519 A", "accepted")
    store.register_agent("web2", "SHA256:b", "ssh-ed25519 B", "accepted")
    now = time.time()
    store.write_host_samples(
        _samples("web1", now - 10, [1.0, 2.0, 3.0])
        + _samples("web2", now - 1000, [7.0])
        + _samples("ghost", now - 5, [9.0])
    )
    latest = store.latest_host_samples(now - 300)
    assert set(latest) == {"web1"}
    assert latest["web1"][:2] == (pytest.approx(now - 8), 3.0)


@pytest.mark.postgres
def test_one_server_folds_host_samples_at_a_time(postgres: PostgresCluster) -> None:
    """While another server of the database folds samples, a fold does nothing (no sample is
    counted twice in its minute); after it, the fold goes on."""
    from sqlalchemy import text

    from easytask.store.metrics import ROLLUP_LOCK

    store = Store(postgres.new_database(empty=True))
    store.create_schema()
    try:
        minute = 1_796_400_000.0
        store.write_host_samples(_samples("web1", minute, [1.0, 2.0]))
        other = store.engine.connect()
        held = other.begin()
        other.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ROLLUP_LOCK})
        assert store.rollup_host_samples(minute + 60) == 0
        assert store.count_host_samples("web1") == 2
        held.rollback()
        other.close()
        assert store.rollup_host_samples(minute + 60) == 2
        assert [r[1] for r in store.host_minutes("web1", minute, minute + 59)] == [2]
    finally:
        store.close()


def test_a_loop_over_results_is_expanded_once(store: Store) -> None:
    """expand_run gives the run that stands for a loop its first item's name and adds one
    queued run per other item, in order, in one transaction; a second call finds it expanded
    and changes nothing (so two server processes never expand a loop twice)."""
    job, (web1, web2) = _job(store, ["web1", "web2"])
    assert job.id is not None and web1.id is not None
    names = ["uptime (item=a)", "uptime (item=b)", "uptime (item=c)"]
    rows = store.expand_run(web1.id, "uptime", names)
    assert rows is not None
    assert [(r.task, r.host, r.attempt, r.state, r.server) for r in rows] == [
        (n, "web1", 1, RunState.QUEUED, web1.server) for n in names
    ]
    assert rows[0].id == web1.id and rows[1].id > web2.id and rows[2].id > rows[1].id
    assert [(e.kind, e.detail) for e in store.run_events(web1.id)][-1] == (
        "loop", "item 1 of 3: uptime (item=a)",
    )  # fmt: skip
    assert store.run_events(rows[2].id or 0)[0].detail == "host web1, item 3 of 3 of uptime"
    assert store.expand_run(web1.id, "uptime", names) is None
    store.update_run(web2.id or 0, "finished", state=RunState.SKIPPED)
    assert store.expand_run(web2.id or 0, "uptime", ["uptime (item=x)"]) is None
    tasks = sorted((r.task, r.host) for r in store.job_runs(job.id))
    assert tasks == sorted([*((n, "web1") for n in names), ("uptime", "web2")])
