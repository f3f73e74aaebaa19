"""The credential store through a real server: admins set, list, remove and rotate; operators use
credentials in ad hoc commands, playbooks and an agentless host's SSH key, never read them;
values are sealed in the database and masked in every output."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from easytask.sealing import KEY_FILE, key_id
from tests.conftest import AgentFactory, ServerFactory, write
from tests.support import ServerHandle, db_execute, user_client
from tests.support.sshd import SSHD
from tests.test_secret_sweep import _database_hits


def _audit(server: ServerHandle, action: str) -> list[dict[str, object]]:
    return list(server.get("/api/audit", action=action)["events"])


@pytest.fixture
def agent_server(start_server: ServerFactory, start_agent: AgentFactory, tmp_path: Path):
    inventory = write(tmp_path / "inv.ini", "[web]\nweb9\n[apps]\ncr1\n")
    server = start_server(inventory)
    start_agent(server, "cr1")
    return server


def test_admin_manages_credentials_and_nobody_else_may(
    agent_server: ServerHandle, tmp_path: Path
) -> None:
    """`secrets set/list/rm`: set from stdin or a file, replaced in place, listed without values,
    each change audited without its value; operators and viewers get 403 on every route; bad
    input is refused naming what is wrong, and nothing is stored."""
    server = agent_server
    value = f"tok-{secrets.token_hex(8)}"
    made = server.cli("secrets", "set", "api-token", input=value + "\n")
    assert made.returncode == 0 and "credential api-token: created (value)" in made.stdout
    again = server.cli("secrets", "set", "api-token", "--scope", "apps", input=value + "\n")
    assert again.returncode == 0 and "replaced" in again.stdout
    pw_file = write(tmp_path / "pw.txt", "sudo-pw-1\n")
    filed = server.cli(
        "secrets", "set", "sudo-pw", "--kind", "become-password", "--file", str(pw_file)
    )
    assert filed.returncode == 0, filed.stderr

    listed = server.cli("secrets", "list")
    assert listed.returncode == 0 and value not in listed.stdout
    assert "api-token" in listed.stdout and "become-password" in listed.stdout
    rows = json.loads(server.cli("secrets", "--format", "json", "list").stdout)
    assert [r["name"] for r in rows] == ["api-token", "sudo-pw"]
    assert rows[0]["scope"] == "apps" and rows[0]["created_by"] == "admin"
    assert rows[0]["last_used_at"] is None
    assert not {"value", "sealed"} & set(rows[0])
    events = _audit(server, "credential.set")
    assert [e["detail"]["credential"] for e in events] == ["sudo-pw", "api-token", "api-token"]
    assert [e["detail"]["created"] for e in events] == [True, False, True]

    for role in ("operator", "viewer"):
        client = user_client(server, f"u-{role}", role)
        assert client.get("/api/credentials").status_code == 403
        put = client.post("/api/credentials", json={"name": "x1", "value": "v"})
        assert put.status_code == 403 and "may not do this" in put.json()["error"]
        assert client.post("/api/credentials/api-token/remove").status_code == 403
        assert client.post("/api/credentials/rotate-key").status_code == 403
        client.close()

    bad = {
        "1bad": ({"name": "1bad", "value": "v"}, "credential name"),
        "kind": ({"name": "ok", "kind": "pgp", "value": "v"}, "kind must be one of"),
        "empty": ({"name": "ok", "value": ""}, "value must be a non-empty string"),
        "key": ({"name": "ok", "kind": "ssh-key", "value": "nope"}, "not an SSH private key"),
        "scope": ({"name": "ok", "value": "v", "scope": "web[x"}, "scope:"),
    }
    for what, (payload, message) in bad.items():
        answer = server.http.post("/api/credentials", json=payload)
        assert answer.status_code == 400, what
        assert message in answer.json()["error"], (what, answer.json())
    argv = server.cli("secrets", "set", "ok", input="")
    assert argv.returncode == 2 and "empty value" in argv.stderr
    assert [r["name"] for r in server.get("/api/credentials")["credentials"]] == [
        "api-token",
        "sudo-pw",
    ]

    removed = server.cli("secrets", "rm", "sudo-pw")
    assert removed.returncode == 0 and "removed" in removed.stdout
    gone = server.cli("secrets", "rm", "sudo-pw")
    assert gone.returncode == 2 and "no credential 'sudo-pw'" in gone.stderr
    assert [e["detail"]["credential"] for e in _audit(server, "credential.remove")] == ["sudo-pw"]
    assert _database_hits(server.db_url, value) == []
    assert _database_hits(server.db_url, "sudo-pw-1") == []
    (sealed,) = db_execute(server.db_url, "SELECT key_id, sealed FROM credential")
    assert sealed[0] == key_id(bytes.fromhex((server.state_dir / KEY_FILE).read_text()))


def test_jobs_use_credentials_masked_and_audited(
    agent_server: ServerHandle, tmp_path: Path
) -> None:
    """`run --secret NAME` exports the stored value as NAME upper-cased; a playbook's `secrets:`
    takes it from the store; output shows ****, the job's audit event names the credential,
    `list` shows its last use; an operator may use one, a viewer may not, a credential's scope
    refuses hosts outside it (audited) and a become password is never given to a command."""
    server = agent_server
    value = f"tok-{secrets.token_hex(8)}"
    assert server.cli("secrets", "set", "api-token", input=value).returncode == 0
    ran = server.cli(
        "run", "cr1", "-a", 'echo "t=$API_TOKEN"; echo "$API_TOKEN" >&2', "--secret", "api-token"
    )
    assert ran.returncode == 0, ran.stderr
    assert value not in ran.stdout and "t=****" in ran.stdout
    (submitted,) = _audit(server, "job.submit")
    assert submitted["detail"]["credentials"] == ["api-token"]
    assert value not in json.dumps(submitted)
    (row,) = server.get("/api/credentials")["credentials"]
    assert row["last_used_by"] == "admin" and row["last_used_at"]

    book = write(
        tmp_path / "book" / "use.yml",
        """\
        name: use
        hosts: apps
        secrets: [api_token2]
        tasks:
          - name: show
            shell: echo "v={{ api_token2 }}"
        """,
    )
    assert server.cli("secrets", "set", "api_token2", input=value).returncode == 0
    played = server.cli("play", str(book), "--format", "json")
    assert played.returncode == 0, played.stdout + played.stderr
    assert value not in played.stdout
    run_id = server.get("/api/runs", limit=1)["runs"][0]["id"]
    assert [ln["text"] for ln in server.log_lines(run_id)] == ["v=****"]
    assert _audit(server, "job.submit")[0]["detail"]["credentials"] == ["api_token2"]

    operator = user_client(server, "opal", "operator")
    used = operator.post(
        "/api/jobs", json={"pattern": "cr1", "command": "true", "credentials": ["api-token"]}
    )
    assert used.status_code == 201, used.text
    assert operator.get("/api/credentials").status_code == 403
    viewer = user_client(server, "vic", "viewer")
    seen = viewer.post(
        "/api/jobs", json={"pattern": "cr1", "command": "true", "credentials": ["api-token"]}
    )
    assert seen.status_code == 403
    server.wait_job(used.json()["job"]["id"])

    assert server.cli("secrets", "set", "web-only", "--scope", "web", input="w-1").returncode == 0
    outside = server.cli("run", "cr1", "-a", "true", "--secret", "web-only")
    assert outside.returncode == 2
    assert "credential 'web-only' may only be used on 'web', not on cr1" in outside.stderr
    refused = _audit(server, "job.refused")[0]["detail"]
    assert refused["credential"] == "web-only" and refused["outside"] == ["cr1"]
    missing = server.cli("run", "cr1", "-a", "true", "--secret", "nope")
    assert missing.returncode == 2 and "no credential 'nope'" in missing.stderr
    pw = write(tmp_path / "pw", "sudo-1\n")
    server.cli("secrets", "set", "sudo", "--kind", "become-password", "--file", str(pw))
    become = server.cli("run", "cr1", "-a", "true", "--secret", "sudo")
    assert become.returncode == 2 and "is a become-password" in become.stderr
    assert _database_hits(server.db_url, value) == []
    operator.close()
    viewer.close()


def test_rotate_key_and_a_server_with_another_key(
    start_server: ServerFactory, start_agent: AgentFactory, tmp_path: Path
) -> None:
    """`secrets rotate-key` seals every value again under a new key file (the old one's backup
    gone once done) and the values still work; a server whose key differs from the one that
    sealed a value refuses to use it, naming both key ids."""
    server = start_server()
    start_agent(server, "rk1")
    for name in ("one", "two"):
        assert server.cli("secrets", "set", name, input=f"{name}-value").returncode == 0
    before = db_execute(server.db_url, "SELECT name, key_id, sealed FROM credential ORDER BY name")
    old_key = (server.state_dir / KEY_FILE).read_text()
    rotated = server.cli("secrets", "rotate-key")
    assert rotated.returncode == 0 and "2 credential(s) sealed again" in rotated.stdout
    new_key = (server.state_dir / KEY_FILE).read_text()
    assert new_key != old_key
    assert sorted(p.name for p in server.state_dir.glob(KEY_FILE + "*")) == [KEY_FILE]
    after = db_execute(server.db_url, "SELECT name, key_id, sealed FROM credential ORDER BY name")
    new_id = key_id(bytes.fromhex(new_key))
    assert {r[1] for r in after} == {new_id} and new_id in rotated.stdout
    assert all(a[2] != b[2] for a, b in zip(after, before, strict=True))
    (event,) = _audit(server, "credential.rotate-key")
    assert event["detail"]["count"] == 2 and event["detail"]["new_key"] == new_id
    ran = server.cli("run", "rk1", "-a", 'echo "[$ONE]"', "--secret", "one")
    assert ran.returncode == 0 and "[****]" in ran.stdout, ran.stdout + ran.stderr

    server.proc.stop()
    other = secrets.token_bytes(32)
    (server.state_dir / KEY_FILE).write_text(other.hex() + "\n")
    again = start_server(state_dir=server.state_dir)
    start_agent(again, "rk1", state_dir=tmp_path / "agents" / "rk1")
    refused = again.cli("run", "rk1", "-a", "true", "--secret", "one")
    assert refused.returncode == 2
    assert f"sealed with key {new_id}, and this server's key is {key_id(other)}" in refused.stderr
    assert "every server on one database needs the same credential key" in refused.stderr
    assert "were sealed with another key" in (server.state_dir / "server.log").read_text()


def test_agentless_host_reached_with_an_ssh_key_from_the_store(
    start_server: ServerFactory, sshd: SSHD, tmp_path: Path
) -> None:
    """`easytask_credential: NAME` gives an agentless host its SSH key from the store (no key
    file named): an ad hoc run and a playbook reach the real sshd, their audit events name the
    credential; without the credential the submission is refused."""
    inventory = write(
        tmp_path / "inv.ini",
        f"[boxes]\nbox1 ansible_host=127.0.0.1 ansible_port={sshd.port} ansible_user={sshd.user} "
        f"easytask_connection=ssh easytask_known_hosts={sshd.known_hosts} "
        "easytask_credential=deploy-key\n",
    )
    server = start_server(inventory)
    missing = server.cli("run", "box1", "-a", "echo hi")
    assert missing.returncode == 2 and "no credential 'deploy-key'" in missing.stderr
    key = sshd.client_key.read_text()
    made = server.cli(
        "secrets", "set", "deploy-key", "--kind", "ssh-key", "--file", str(sshd.client_key)
    )
    assert made.returncode == 0, made.stderr
    ran = server.cli("run", "box1", "-a", "echo reached-$(whoami)")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert f"reached-{sshd.user}" in ran.stdout
    assert _audit(server, "job.submit")[0]["detail"]["credentials"] == ["deploy-key"]
    book = write(
        tmp_path / "book" / "box.yml",
        """\
        name: box
        hosts: boxes
        tasks:
          - name: where
            shell: echo played-on-$(hostname)
        """,
    )
    played = server.cli("play", str(book), "--format", "json")
    assert played.returncode == 0, played.stdout + played.stderr
    assert _audit(server, "job.submit")[0]["detail"]["credentials"] == ["deploy-key"]
    body = key.splitlines()[1]
    assert _database_hits(server.db_url, body) == []


def test_key_from_the_environment(
    start_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EASYTASK_SECRET_KEY is the key (no key file is made); the server does not rotate a key
    it was given (409, nothing changes); a malformed one stops the server with a clear error."""
    key = secrets.token_bytes(32)
    monkeypatch.setenv("EASYTASK_SECRET_KEY", key.hex())
    server = start_server()
    assert server.cli("secrets", "set", "one", input="v-1").returncode == 0
    assert server.get("/api/credentials")["key_id"] == key_id(key)
    ((stored,),) = db_execute(server.db_url, "SELECT key_id FROM credential")
    assert stored == key_id(key) and not (server.state_dir / KEY_FILE).exists()
    refused = server.cli("secrets", "rotate-key")
    assert refused.returncode == 2 and "set by secret_key (EASYTASK_SECRET_KEY)" in refused.stderr
    assert db_execute(server.db_url, "SELECT key_id FROM credential") == [(key_id(key),)]
    assert _audit(server, "credential.rotate-key") == []
    monkeypatch.setenv("EASYTASK_SECRET_KEY", "not-hex")
    with pytest.raises(AssertionError, match="secret_key must be 64 hex digits"):
        start_server()
