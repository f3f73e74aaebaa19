"""The audit log: every ad hoc run and kill on record; tampering is caught."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from sqlmodel import col, select

from easytask.exports import canonical as exports_canonical
from easytask.exports import load_or_create_key, public_key_text
from easytask.store.audit import GENESIS, canonical, chain_hash
from easytask.store.db import Store
from easytask.store.models import AuditEvent
from tests.conftest import AgentFactory, ServerFactory
from tests.support import PostgresCluster, ServerHandle, db_execute, wait_until
from tests.test_notify import Receiver


@pytest.fixture
def audited(start_server: ServerFactory, start_agent: AgentFactory) -> ServerHandle:
    """A server with one agent, one finished run and one killed job on record."""
    server = start_server()
    start_agent(server, "aud1")
    assert server.cli("run", "aud1", "-a", "echo hello").returncode == 0
    job = server.submit("aud1", "sleep 30")
    wait_until(
        lambda: server.get(f"/api/jobs/{job['job']['id']}")["runs"][0]["state"] == "running",
        what="running",
    )
    server.post(f"/api/jobs/{job['job']['id']}/kill")
    server.wait_job(job["job"]["id"])
    return server


def test_runs_kills_and_agents_are_on_record(audited: ServerHandle) -> None:
    """job.submit has who, from where, pattern, hosts and command; kills and finishes follow."""
    events = json.loads(audited.cli("audit", "--format", "json", "--limit", "50").stdout)
    actions = [e["action"] for e in reversed(events)]
    assert actions[:2] == ["agent.token", "agent.enroll"]
    assert actions.count("job.submit") == 2 and "job.kill" in actions
    assert actions.count("job.finish") == 2
    submit = next(e for e in reversed(events) if e["action"] == "job.submit")
    assert submit["actor"] == "admin"
    assert submit["source"].startswith("cli 127.0.0.1")
    assert submit["detail"]["pattern"] == "aud1"
    assert submit["detail"]["hosts"] == ["aud1"]
    assert submit["detail"]["command"] == "echo hello"
    finish = next(
        e for e in events if e["action"] == "job.finish" and e["detail"]["state"] == "terminated"
    )
    assert finish["detail"]["runs"] == {"terminated": 1}
    ok = audited.cli("audit", "verify")
    assert ok.returncode == 0 and ok.stdout.startswith("audit chain intact:")


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (  # rows 1-4: agent.token, agent.enroll, agent.online, job.submit of `echo hello`
            "UPDATE audit_event SET detail = replace(detail, 'echo hello', 'echo bye') WHERE id = 4",
            "row 4: contents do not match its hash (edited)",
        ),
        (
            "DELETE FROM audit_event WHERE id = 3",
            "row 4: chain broken: a row before it was deleted or replaced",
        ),
        (
            "UPDATE audit_event SET actor = 'mallory' WHERE id = 2",
            "row 2: contents do not match its hash (edited)",
        ),
    ],
)
def test_tampering_is_reported_at_the_first_bad_row(
    audited: ServerHandle, tamper: str, message: str
) -> None:
    """Editing, deleting or rewriting a row directly in the database breaks verification there."""
    db_execute(audited.db_url, tamper)
    result = audited.cli("audit", "verify")
    assert result.returncode == 1
    assert message in result.stdout


def test_rows_swapped_out_of_order_are_caught(audited: ServerHandle) -> None:
    """Two rows swapped (ids exchanged) no longer chain."""
    db_execute(audited.db_url, "UPDATE audit_event SET id = -1 WHERE id = 2")
    db_execute(audited.db_url, "UPDATE audit_event SET id = 2 WHERE id = 3")
    db_execute(audited.db_url, "UPDATE audit_event SET id = 3 WHERE id = -1")
    result = audited.cli("audit", "verify")
    assert result.returncode == 1
    assert "row 2: chain broken" in result.stdout


def rewrite_plain(db_url: str, edit: Callable[[AuditEvent], bool]) -> None:
    """What someone with the database but not the key can do: edit rows (`edit` says whether it
    changed one) and recompute every hash from there on as plain sha256, so the chain links."""
    store = Store(db_url)
    try:
        with store.session() as s:
            prev, changed = GENESIS, False
            for event in s.exec(select(AuditEvent).order_by(col(AuditEvent.id))):
                assert event.id is not None
                changed = edit(event) or changed
                if changed:
                    text = canonical(
                        event.id, event.at, event.actor, event.action, event.source, event.detail
                    )
                    event.prev_hash, event.hash = prev, chain_hash(prev, text)
                    s.add(event)
                prev = event.hash
            s.commit()
    finally:
        store.close()


def last_id(server: ServerHandle) -> int:
    return int(db_execute(server.db_url, "SELECT MAX(id) FROM audit_event")[0][0])


def test_deleting_the_last_rows_is_caught_as_truncation(audited: ServerHandle) -> None:
    """Rows deleted from the end leave a chain that links, but not the signed checkpoint."""
    written = audited.cli("audit", "checkpoint")
    assert written.returncode == 0 and written.stdout.startswith("audit checkpoint: row ")
    # signed into the state dir, and the same line in the server log
    line = (audited.state_dir / "audit.checkpoints").read_text().splitlines()[-1]
    assert f"audit checkpoint: {line}" in audited.proc.output()
    head = last_id(audited)
    assert json.loads(line)["head_id"] == head
    db_execute(audited.db_url, "DELETE FROM audit_event WHERE id >= :id", {"id": head - 1})
    result = audited.cli("audit", "verify")
    assert result.returncode == 1
    assert f"truncated: the chain ends at row {head - 2}" in result.stdout
    assert "rows were deleted from its end" in result.stdout


def test_ids_are_never_reused(audited: ServerHandle) -> None:
    """After the last rows are deleted, the next event gets a new id, so the gap shows."""
    head = last_id(audited)
    db_execute(audited.db_url, "DELETE FROM audit_event WHERE id >= :id", {"id": head - 1})
    audited.post("/api/prune", {"dry_run": True})  # one more audited event
    assert last_id(audited) == head + 1
    result = audited.cli("audit", "verify")
    assert result.returncode == 1
    assert f"row {head + 1}: rows {head - 1}..{head} are missing" in result.stdout


def test_a_chain_rewritten_without_the_key_is_caught(audited: ServerHandle) -> None:
    """A row edited and every hash after it recomputed as plain sha256 no longer verifies: new
    rows are hashed with the audit key, which the database does not hold."""

    def edit(event: AuditEvent) -> bool:
        if event.id != 4:  # the job.submit of `echo hello`
            return False
        event.detail = event.detail.replace("echo hello", "echo bye")
        return True

    rewrite_plain(audited.db_url, edit)
    result = audited.cli("audit", "verify")
    assert result.returncode == 1
    assert "row 4: not hashed with the audit key (the chain was rewritten)" in result.stdout


def test_an_edited_checkpoint_fails_its_signature(audited: ServerHandle) -> None:
    """The checkpoint file is signed line by line: a count lowered to hide a truncation shows."""
    assert audited.cli("audit", "checkpoint").returncode == 0
    path = audited.state_dir / "audit.checkpoints"
    lines = path.read_text().splitlines()
    entry = json.loads(lines[-1])
    entry["count"] -= 2
    lines[-1] = json.dumps(entry, sort_keys=True)
    path.write_text("\n".join(lines) + "\n")
    result = audited.cli("audit", "verify")
    assert result.returncode == 1
    assert f"audit.checkpoints line {len(lines)}: checkpoint signature is not valid" in (
        result.stdout
    )
    # and a file deleted with them all (the server writes one as it starts) is noticed
    path.unlink()
    result = audited.cli("audit", "verify")
    assert result.returncode == 1
    assert "audit.checkpoints: no checkpoint (the file was deleted?)" in result.stdout


def test_rows_from_before_the_key_still_verify(
    audited: ServerHandle, start_server: ServerFactory
) -> None:
    """A database whose chain predates the key (plain sha256, no key, no checkpoints) verifies
    after an upgrade; new rows are keyed, and the old ones cannot be rewritten afterwards."""
    audited.proc.stop()
    rewrite_plain(audited.db_url, lambda event: True)
    (audited.state_dir / "audit.key").unlink()
    (audited.state_dir / "audit.checkpoints").unlink()
    old = last_id(audited)
    server = start_server(state_dir=audited.state_dir)
    server.post("/api/prune", {"dry_run": True})  # one more audited event, keyed
    ok = server.cli("audit", "verify")
    assert ok.returncode == 0, ok.stdout
    assert last_id(server) > old
    hashes = db_execute(server.db_url, "SELECT hash FROM audit_event WHERE id > :id", {"id": old})
    assert all(h.startswith("hmac:") for (h,) in hashes)
    # the key's first checkpoint anchors the old rows: a plain rewrite of them shows
    rewrite_plain(server.db_url, lambda event: event.id == old)
    result = server.cli("audit", "verify")
    assert result.returncode == 1
    assert f"row {old + 1}: not hashed with the audit key" in result.stdout


@pytest.mark.postgres
def test_servers_sharing_a_database_share_the_key(
    postgres: PostgresCluster, start_server: ServerFactory, tmp_path: Path
) -> None:
    """Two servers on one PostgreSQL with one key file: each verifies the other's events. A
    server with a key of its own names the key it lacks."""
    url = postgres.new_database()
    key = tmp_path / "shared" / "audit.key"
    a = start_server(None, "--db", url, "--audit-key-file", str(key), state_dir=tmp_path / "a")
    b = start_server(None, "--db", url, "--audit-key-file", str(key), state_dir=tmp_path / "b")
    a.post("/api/prune", {"dry_run": True})
    b.post("/api/prune", {"dry_run": True})
    for server in (a, b):
        ok = server.cli("audit", "verify")
        assert ok.returncode == 0, ok.stdout
    c = start_server(None, "--db", url, state_dir=tmp_path / "c")
    c.post("/api/prune", {"dry_run": True})
    result = a.cli("audit", "verify")
    assert result.returncode == 1
    assert "hashed with another audit key" in result.stdout
    assert "servers sharing a database share one key file" in result.stdout


def test_checkpoints_are_posted_signed_to_the_webhook(start_server: ServerFactory) -> None:
    """With --audit-checkpoint-url each signed checkpoint is POSTed, the line of the file, and
    retried when the receiver fails; the signature checks with the server's public key; the log
    names the receiver without the URL's path."""
    hook = Receiver(fail=1)
    url = f"http://127.0.0.1:{hook.port}/checkpoints/tok-5ecret"
    try:
        server = start_server(None, "--audit-checkpoint-url", url)
        # the checkpoint written at start: refused once (500), sent again
        wait_until(lambda: len(hook.requests) >= 2, timeout=30, what="start checkpoint resent")
        server.post("/api/users", {"name": "cp", "role": "viewer", "password": "cp-password-1"})
        written = server.cli("audit", "checkpoint")
        assert written.returncode == 0, written.stderr
        wait_until(lambda: len(hook.requests) >= 3, timeout=30, what="second checkpoint")
        lines = (server.state_dir / "audit.checkpoints").read_text().splitlines()
        assert [body.decode() for _, body in hook.requests] == [lines[0], lines[0], lines[1]]
        public = load_or_create_key(server.state_dir / "export.key").public_key()
        for headers, body in hook.requests[1:]:
            assert headers["X-EasyTask-Event"] == "audit.checkpoint"
            entry = json.loads(body)
            assert {"head_id", "head_hash", "count", "at", "key_id", "signature"} <= set(entry)
            assert entry["public_key"] == public_key_text(public)
            public.verify(base64.b64decode(entry["signature"]), exports_canonical(entry))
        assert json.loads(lines[1])["head_id"] == last_id(server)
        forged = {**entry, "count": entry["count"] + 1}
        with pytest.raises(InvalidSignature):
            public.verify(base64.b64decode(forged["signature"]), exports_canonical(forged))
        log = server.proc.output()
        assert f"audit checkpoint webhook http://127.0.0.1:{hook.port} failed (HTTP 500" in log
        assert "tok-5ecret" not in log
    finally:
        hook.close()
