"""Secret sweep: after jobs that used a secret, its value is nowhere in the database or state dirs."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from tests.conftest import AgentFactory, ServerFactory, write
from tests.support import wait_until
from tests.test_notify import Receiver


def _database_hits(db_url: str, needle: str) -> list[str]:
    """Every table.column holding the value (on SQLite the FTS tables and their shadow tables
    too), with a little of the text around it."""
    from sqlalchemy import inspect, text

    from easytask.store.db import make_engine

    raw = needle.encode()
    found = []
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            for table in inspect(conn).get_table_names():
                result = conn.execute(text(f'SELECT * FROM "{table}"'))
                columns = list(result.keys())
                for row in result:
                    for column, value in zip(columns, row, strict=True):
                        if isinstance(value, (bytes, memoryview)):
                            value = bytes(value).decode(errors="replace") if raw in value else ""
                        value = value if isinstance(value, str) else str(value)
                        if needle in value:
                            at = value.index(needle)
                            found.append(f"{table}.{column}: {value[max(0, at - 60) : at + 30]!r}")
    finally:
        engine.dispose()
    return sorted(set(found))


def _file_hits(root: Path, needle: str, allowed: dict[Path, str]) -> list[str]:
    """Every file under root whose bytes hold the value, except the ones named in `allowed`."""
    raw = needle.encode()
    return sorted(
        str(path)
        for path in root.rglob("*")
        if path.is_file() and path not in allowed and raw in path.read_bytes()
    )


def test_no_secret_value_anywhere_after_jobs_that_used_it(
    start_server: ServerFactory,
    start_agent: AgentFactory,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """Ad hoc env secret, playbook script (argument and env), copy, an allowlist refusal that
    quotes the command: the value is in no column, no log line, no export, no webhook body and no
    file of either state dir."""
    value = f"s3cr3t-{secrets.token_hex(8)}"
    inventory = write(
        tmp_path / "inv.ini",
        """\
        [hosts]
        sw1
        """,
    )
    receiver = Receiver()
    request.addfinalizer(receiver.close)
    server = start_server(inventory, "--notify-url", receiver.url)
    agent_dir = tmp_path / "agents"
    start_agent(server, "sw1")
    start_agent(server, "sw2", "--allow", "echo *")

    # ad hoc: the command echoes the value to both streams
    adhoc = server.cli(
        "run", "sw1", "-a", 'echo "v=$TOK"; echo "$TOK" >&2', "--secret", f"TOK={value}"
    )
    assert adhoc.returncode == 0, adhoc.stderr
    assert value not in adhoc.stdout and "v=****" in adhoc.stdout

    # the agent's allowlist refuses the command; the refusal quotes what it was sent
    refused = server.submit("sw2", "id", secrets={"TOK": value})
    job = server.wait_job(refused["job"]["id"])
    assert job["job"]["state"] == "failed"
    assert job["runs"][0]["reason"].startswith("refused by the agent"), job["runs"][0]
    assert value not in job["runs"][0]["reason"]

    # a playbook: a script taking the value as an argument and in its env, a copy naming it
    book_dir = tmp_path / "book"
    script = write(
        book_dir / "show.sh",
        """\
        #!/bin/sh
        echo "arg=$1 env=$PW"
        """,
    )
    script.chmod(0o755)
    write(book_dir / "files" / "app.conf", "port = 8080\n")
    dest_dir = tmp_path / "dest"
    dest_dir.mkdir()
    book = write(
        book_dir / "sweep.yml",
        f"""\
        name: sweep
        hosts: hosts
        vars:
          db_password: {value}
        secrets: [db_password]
        tasks:
          - name: show
            script: show.sh "{{{{ db_password }}}}"
            env:
              PW: "{{{{ db_password }}}}"
          - name: conf
            copy:
              src: files/app.conf
              dest: "{dest_dir}/{{{{ db_password }}}}.conf"
        """,
    )
    played = server.cli("play", str(book), "--format", "json")
    assert played.returncode == 0, played.stdout + played.stderr
    assert value not in played.stdout
    assert (dest_dir / f"{value}.conf").read_text() == "port = 8080\n"
    run_id = min(r["id"] for r in server.get("/api/runs", limit=2)["runs"])
    assert [ln["text"] for ln in server.log_lines(run_id)] == ["arg=**** env=****"]

    # the allowlist refuses a playbook command with the value rendered into it, quoting it
    refuse = write(
        book_dir / "refuse.yml",
        f"""\
        name: refuse
        hosts: sw2
        vars:
          db_password: {value}
        secrets: [db_password]
        tasks:
          - name: quoted
            shell: uptime --since "{{{{ db_password }}}}"
        """,
    )
    refused_play = server.cli("play", str(refuse), "--format", "json")
    assert refused_play.returncode != 0 and value not in refused_play.stdout
    (quoted,) = server.get("/api/runs", limit=1)["runs"]
    assert quoted["reason"].startswith("refused by the agent: 'uptime --since ****'"), quoted

    # a fetch of a file holding the value (a fetch takes no secrets: its output names the path
    # and checksum, never the content)
    holder = write(tmp_path / "host" / "token.txt", f"token={value}\n")
    fetched = server.cli("fetch", "sw1", str(holder), str(tmp_path / "got"))
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    assert value not in fetched.stdout
    (fetch_run,) = [r for r in server.get("/api/runs", limit=1)["runs"]]

    # Files meant to hold the value: none once the jobs are over. While a job with secrets is
    # unfinished, STATE_DIR/secrets/<job id>.json keeps them (0600) so a restarted server can
    # still pass and mask them; it is deleted when the job ends.
    # An agent keeps a run's raw output in its spool until the server has stored it (an
    # un-numbered exec, like a copy's checksum probe, is not acknowledged: it goes by age; it is
    # still swept below).
    wait_until(
        lambda: (
            not [
                p
                for p in agent_dir.rglob("spool/*")
                if p.suffix in (".out", ".done") and not p.name.startswith("adhoc-")
            ]
        ),
        what="the agents' spools acknowledged",
    )
    # an export with the logs, and the webhook bodies of every finished job
    export = tmp_path / "export.jsonl"
    assert server.cli("export", "--include-logs", "-o", str(export)).returncode == 0
    assert "****" in export.read_text() and value not in export.read_text()
    jobs = len({r["job"] for r in server.get("/api/runs", limit=100)["runs"]})
    assert jobs == 5
    wait_until(lambda: len(receiver.requests) >= jobs, what="a webhook per job")
    assert [body for _, body in receiver.requests if value.encode() in body] == []

    kept = server.state_dir / "secrets"
    assert not kept.exists() or list(kept.iterdir()) == []
    allowed: dict[Path, str] = {
        server.state_dir / "fetched" / str(fetch_run["id"]) / "token.txt": (
            "the fetched file itself, kept for download as asked"
        ),
    }
    for bundle in (server.state_dir / "bundles").glob("*/*.yml"):
        allowed[bundle] = "a submitted playbook, which has the value in its vars, kept to run it"
    for path in allowed:
        assert value in path.read_text()
    hits = _database_hits(server.db_url, value)
    assert hits == [], "\n".join(hits)
    assert _file_hits(server.state_dir, value, allowed) == []
    assert _file_hits(agent_dir, value, allowed) == []


def test_vault_values_masked_and_never_stored(
    start_server: ServerFactory, start_agent: AgentFactory, tmp_path: Path
) -> None:
    """A vaulted group_vars file (made by ansible-vault, vault id `prod`) and a vaulted vars file
    sent with the playbook: the server decrypts them with its --vault-id and
    --vault-password-file; the job's output and stored command show ****, an ad hoc command's
    output on the host too, and the values are in no column and no file of either state dir
    (the sent vars file stays encrypted)."""
    from tests.test_vault import ansible

    group_value = f"vaulted-{secrets.token_hex(8)}"
    file_value = f"filed-{secrets.token_hex(8)}"
    write(tmp_path / "prod.pw", "prod password\n")
    write(tmp_path / "default.pw", "default password\n")
    inventory = write(tmp_path / "inv" / "hosts.ini", "[hosts]\nsw1\n")
    group_vars = write(
        tmp_path / "inv" / "group_vars" / "hosts.yml", f"db_password: {group_value}\n"
    )
    ansible("ansible-vault", "encrypt", "--vault-id", "prod@prod.pw", str(group_vars), cwd=tmp_path)
    vars_file = write(tmp_path / "book" / "api.yml", f"api_key: {file_value}\n")
    ansible(
        "ansible-vault",
        "encrypt",
        "--vault-password-file",
        "default.pw",
        str(vars_file),
        cwd=tmp_path,
    )
    book = write(
        tmp_path / "book" / "vaulted.yml",
        """\
        name: vaulted
        hosts: hosts
        vars_files: [api.yml]
        tasks:
          - name: show
            shell: echo "db={{ db_password }} api={{ api_key }}"; echo "{{ db_password }}" >&2
        """,
    )
    server = start_server(
        inventory,
        "--vault-id",
        f"prod@{tmp_path / 'prod.pw'}",
        "--vault-password-file",
        str(tmp_path / "default.pw"),
    )
    agent_dir = tmp_path / "agents"
    start_agent(server, "sw1")

    played = server.cli("play", str(book), "--format", "json")
    assert played.returncode == 0, played.stdout + played.stderr
    assert group_value not in played.stdout and file_value not in played.stdout
    (run,) = server.get("/api/runs", limit=5)["runs"]
    assert run["state"] == "success", run
    assert sorted(ln["text"] for ln in server.log_lines(run["id"])) == [
        "****",
        "db=**** api=****",
    ]
    assert run["command"] == 'echo "db=**** api=****"; echo "****" >&2'

    # a vars file the server has no password for: refused with the file and line, nothing runs
    write(tmp_path / "other.pw", "another password\n")
    other = write(tmp_path / "book" / "other.yml", "other: 1\n")
    ansible("ansible-vault", "encrypt", "--vault-id", "x@other.pw", str(other), cwd=tmp_path)
    refused = write(
        tmp_path / "book" / "refused.yml",
        "hosts: hosts\nvars_files: [other.yml]\ntasks: [{name: a, shell: 'true'}]\n",
    )
    runs_before = len(server.get("/api/runs", limit=100)["runs"])
    failed = server.cli("play", str(refused))
    assert failed.returncode == 2, failed.stdout + failed.stderr
    assert (
        "other.yml:1:1: cannot decrypt the vault file with the given password (vault id 'x')"
        in failed.stderr
    ), failed.stderr
    assert "Traceback" not in failed.stderr
    assert len(server.get("/api/runs", limit=100)["runs"]) == runs_before

    # an ad hoc command on a host with vault values: they are masked in its output too
    holder = write(tmp_path / "host" / "conf.txt", f"password={group_value}\n")
    adhoc = server.cli("run", "sw1", "-a", f"cat {holder}")
    assert adhoc.returncode == 0, adhoc.stdout + adhoc.stderr
    assert group_value not in adhoc.stdout and "password=****" in adhoc.stdout
    # an ad hoc command templated with a vault value would be stored in clear: refused
    templated = server.cli("run", "sw1", "-e", "x=1", "-a", "echo {{ db_password }}")
    assert templated.returncode == 2, templated.stdout + templated.stderr
    assert "would hold a value from an Ansible Vault" in templated.stderr, templated.stderr
    assert group_value not in templated.stdout + templated.stderr

    wait_until(
        lambda: not [p for p in agent_dir.rglob("spool/*") if p.suffix in (".out", ".done")],
        what="the agent's spool acknowledged",
    )
    kept = server.state_dir / "secrets"
    assert not kept.exists() or list(kept.iterdir()) == []
    for value in (group_value, file_value):
        assert _database_hits(server.db_url, value) == []
        assert _file_hits(server.state_dir, value, {}) == []
        assert _file_hits(agent_dir, value, {}) == []


def test_no_credential_value_anywhere_after_jobs_that_used_it(
    start_server: ServerFactory,
    start_agent: AgentFactory,
    tmp_path: Path,
) -> None:
    """A credential from the store, set through the CLI's stdin and used by an ad hoc command
    (`--secret NAME`) and a playbook (`secrets: [name]`, argument and env), is in no column (the
    table holds its sealed form only), no log line, no export and no file of either state dir."""
    value = f"cr3d-{secrets.token_hex(8)}"
    inventory = write(tmp_path / "inv.ini", "[hosts]\ncs1\n")
    server = start_server(inventory)
    agent_dir = tmp_path / "agents"
    start_agent(server, "cs1")
    made = server.cli("secrets", "set", "db_password", input=value + "\n")
    assert made.returncode == 0, made.stderr

    adhoc = server.cli(
        "run",
        "cs1",
        "-a",
        'echo "v=$DB_PASSWORD"; echo "$DB_PASSWORD" >&2',
        "--secret",
        "db_password",
    )
    assert adhoc.returncode == 0, adhoc.stderr
    assert value not in adhoc.stdout and "v=****" in adhoc.stdout

    book_dir = tmp_path / "book"
    script = write(book_dir / "show.sh", '#!/bin/sh\necho "arg=$1 env=$PW"\n')
    script.chmod(0o755)
    book = write(
        book_dir / "cred.yml",
        """\
        name: cred
        hosts: hosts
        secrets: [db_password]
        tasks:
          - name: show
            script: show.sh "{{ db_password }}"
            env:
              PW: "{{ db_password }}"
          - name: echo
            shell: echo "pw={{ db_password }}"
        """,
    )
    played = server.cli("play", str(book), "--format", "json")
    assert played.returncode == 0, played.stdout + played.stderr
    assert value not in played.stdout
    texts = sorted(
        ln["text"]
        for r in server.get("/api/runs", limit=2)["runs"]
        for ln in server.log_lines(r["id"])
    )
    assert texts == ["arg=**** env=****", "pw=****"]

    wait_until(
        lambda: (
            not [
                p
                for p in agent_dir.rglob("spool/*")
                if p.suffix in (".out", ".done") and not p.name.startswith("adhoc-")
            ]
        ),
        what="the agent's spool acknowledged",
    )
    export = tmp_path / "export.jsonl"
    assert server.cli("export", "--include-logs", "-o", str(export)).returncode == 0
    assert "****" in export.read_text() and value not in export.read_text()
    kept = server.state_dir / "secrets"
    wait_until(
        lambda: not kept.exists() or list(kept.iterdir()) == [], what="the jobs' secrets dropped"
    )
    assert _database_hits(server.db_url, value) == []
    assert _file_hits(server.state_dir, value, {}) == []
    assert _file_hits(agent_dir, value, {}) == []
