"""Secret masking: declared secrets never reach stored output, the console, the CLI or exports."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from easytask.masking import Masker, env_prefix, lift_exports
from easytask.playbook import PlaybookErrors, load_playbook
from tests.conftest import AgentFactory, ServerFactory, write
from tests.support import SSHD, ServerHandle, db_execute, easytask_cmd, free_port, wait_until

SECRET = "s3cr3t-Value-9f2"


@pytest.fixture
def agent_server(start_server: ServerFactory, start_agent: AgentFactory) -> ServerHandle:
    server = start_server()
    start_agent(server, "sec1")
    return server


def _stored_anywhere(server: ServerHandle, needle: str) -> list[str]:
    """Every table and column of the database whose text holds the needle."""
    from sqlalchemy import inspect

    from easytask.store.db import make_engine

    engine = make_engine(server.db_url)
    try:
        tables = {
            t: [c["name"] for c in inspect(engine).get_columns(t)]
            for t in inspect(engine).get_table_names()
        }
    finally:
        engine.dispose()
    found = []
    for table, columns in tables.items():
        for column in columns:
            hit = db_execute(
                server.db_url,
                f'SELECT 1 FROM "{table}" WHERE CAST("{column}" AS TEXT) LIKE :p LIMIT 1',
                {"p": f"%{needle}%"},
            )
            if hit:
                found.append(f"{table}.{column}")
    return found


def test_masker_masks_every_value_longest_first() -> None:
    """Each occurrence of any value becomes ****; a value holding another is masked whole."""
    mask = Masker(["abc", "abcdef", "two\nlines", ""])
    assert mask("x abcdef y abc z") == "x **** y **** z"
    assert mask("two and lines") == "**** and ****"
    assert mask("nothing here") == "nothing here"
    assert not Masker([])


def test_adhoc_secret_is_exported_to_the_command_and_masked(
    agent_server: ServerHandle, tmp_path: Path
) -> None:
    """`run --secret NAME=VALUE`: the command sees $NAME, every stored and shown line has ****."""
    result = agent_server.cli(
        "run",
        "sec1",
        "-a",
        'echo "token=$API_TOKEN"; echo "$API_TOKEN" >&2; echo "len=${#API_TOKEN}"',
        "--secret",
        f"API_TOKEN={SECRET}",
    )
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout and "token=****" in result.stdout
    job = agent_server.get("/api/runs", limit=1)["runs"][0]
    texts = [ln["text"] for ln in agent_server.log_lines(job["id"])]
    assert sorted(texts) == sorted(["token=****", "****", f"len={len(SECRET)}"])
    export = tmp_path / "e.jsonl"
    assert agent_server.cli("export", "--include-logs", "-o", str(export)).returncode == 0
    assert SECRET not in export.read_text() and "token=****" in export.read_text()
    audit = agent_server.get("/api/audit", action="job.submit")["events"][0]
    assert audit["detail"]["secrets"] == ["API_TOKEN"]
    assert _stored_anywhere(agent_server, SECRET) == []


def test_secret_from_the_environment(agent_server: ServerHandle) -> None:
    """`--secret-env NAME` takes the value from the CLI's environment; a missing one is a usage
    error."""
    env_value = "from-env-" + SECRET
    env = {**agent_server.env(), "DB_PASS": env_value}
    result = subprocess.run(
        easytask_cmd("run", "sec1", "-a", "echo pw=$DB_PASS", "--secret-env", "DB_PASS"),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=os.getcwd(),
    )
    assert result.returncode == 0, result.stderr
    assert "pw=****" in result.stdout and env_value not in result.stdout
    missing = agent_server.cli("run", "sec1", "-a", "true", "--secret-env", "NOPE_NOT_SET")
    assert missing.returncode == 2 and "no such environment variable" in missing.stderr
    bad = agent_server.http.post(
        "/api/jobs", json={"pattern": "sec1", "command": "true", "secrets": {"1x": "v"}}
    )
    assert bad.status_code == 400 and "not a shell variable name" in bad.json()["error"]
    assert _stored_anywhere(agent_server, env_value) == []


def test_playbook_secret_vars_are_masked(agent_server: ServerHandle, tmp_path: Path) -> None:
    """A playbook's `secrets:` names vars whose values are masked in output and stored commands."""
    book = write(
        tmp_path / "deploy.yml",
        f"""\
        name: deploy
        hosts: sec1
        vars:
          db_password: {SECRET}
          api_key: "{{{{ db_password }}}}-suffix"
        secrets: [db_password, api_key]
        tasks:
          - name: use
            shell: echo "pw={{{{ db_password }}}} key={{{{ api_key }}}}"
        """,
    )
    result = agent_server.cli("play", str(book))
    assert result.returncode == 0, result.stderr + result.stdout
    assert SECRET not in result.stdout
    run = agent_server.get("/api/runs", limit=1)["runs"][0]
    assert [ln["text"] for ln in agent_server.log_lines(run["id"])] == ["pw=**** key=****"]
    assert SECRET not in agent_server.get(f"/api/runs/{run['id']}")["run"]["command"]
    extra = "override-" + SECRET
    result = agent_server.cli("play", str(book), "-e", f"db_password={extra}")
    assert result.returncode == 0 and extra not in result.stdout
    assert _stored_anywhere(agent_server, SECRET) == []
    assert _stored_anywhere(agent_server, extra) == []


def test_secrets_must_name_variables(tmp_path: Path) -> None:
    """`secrets:` is a list of variable names; anything else is an error at its line."""
    path = write(
        tmp_path / "bad.yml",
        """\
        name: bad
        hosts: all
        secrets: [good_name, 9bad]
        tasks:
          - name: t
            command: "true"
        """,
    )
    with pytest.raises(PlaybookErrors) as caught:
        load_playbook(path)
    assert str(caught.value.errors[0]) == f"{path}:3:22: secrets: '9bad' is not a variable name"


def test_masking_survives_a_server_restart(
    start_server: ServerFactory, start_agent: AgentFactory, tmp_path: Path
) -> None:
    """kill -9 of the server mid-run: the re-attached output is still masked; the kept secret
    (0600, in the state dir) goes when the job ends."""
    agents_addr = f"127.0.0.1:{free_port()}"
    server = start_server(agents=agents_addr)
    start_agent(server, "sec2")
    go = tmp_path / "go"
    command = f'echo "first $TOK"; while [ ! -e {go} ]; do sleep 0.1; done; echo "second $TOK"'
    job = server.submit("sec2", command, secrets={"TOK": SECRET})
    job_id, run_id = job["job"]["id"], job["runs"][0]["id"]
    wait_until(
        lambda: [ln["text"] for ln in server.log_lines(run_id)] == ["first ****"],
        what="first line",
    )
    kept = server.state_dir / "secrets" / f"{job_id}.json"
    assert kept.stat().st_mode & 0o777 == 0o600
    server.proc.kill9()
    wait_until(lambda: not server.proc.alive(), what="server gone")
    server2 = start_server(state_dir=server.state_dir, agents=agents_addr)
    go.touch()
    assert server2.wait_job(job_id, timeout=60)["job"]["state"] == "success"
    texts = [ln["text"] for ln in server2.log_lines(run_id) if ln["stream"] != "system"]
    assert texts == ["first ****", "second ****"]
    assert not kept.exists()
    assert _stored_anywhere(server2, SECRET) == []


def _argv_holding(*needles: bytes) -> list[str]:
    """Every process of this machine whose command line holds one of the needles."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes()
        except OSError:  # ended meanwhile, or not ours to read
            continue
        if any(n in argv for n in needles):
            shown = argv.replace(bytes(1), b" ")[:200]
            found.append(f"{proc.name}: {shown!r}")
    return found


def _env_playbook(host: str, token: str, command: str) -> str:
    """A playbook whose one task gets the secret var `token` rendered into its `env:`."""
    return f"""\
name: envs
hosts: {host}
vars:
  token: {token}
secrets: [token]
tasks:
  - name: use
    env:
      TOKEN: "{{{{ token }}}}"
      PLAIN: visible value
    shell: '{command}'
"""


def _hold_until_released(tmp_path: Path, *names: str) -> tuple[str, Path, Path]:
    """A command that says it started, waits for a release file, then prints the SHA-256 of
    each variable (the values themselves would be masked, and quoting them would put them in
    its own command line)."""
    started, release = tmp_path / "started", tmp_path / "release"
    digests = "; ".join(f'printf %s "${name}" | sha256sum' for name in names)
    command = f"touch {started}; while [ ! -e {release} ]; do sleep 0.05; done; {digests}"
    return command, started, release


def _sha(value: str) -> str:
    import hashlib

    return hashlib.sha256(value.encode()).hexdigest() + "  -"


def test_agentless_secret_env_is_never_in_a_command_line(
    start_server: ServerFactory, sshd: SSHD, tmp_path: Path
) -> None:
    """On an agentless host the secrets of `run --secret` and a playbook task's `env:` go on
    the channel's stdin: while the command runs no process on the host shows a value in its
    command line (what `ps` shows every user), and the command still sees every variable,
    values of several lines and odd characters included."""
    inventory = write(tmp_path / "inv" / "hosts.ini", f"[plain]\nplain1 {sshd.host_vars()}\n")
    server = start_server(inventory)
    token = "argv-" + SECRET
    multi = 'line one\n  it\'s \\ $HOME `x` "q"\nlast-' + SECRET + "\n"
    (tmp_path / "adhoc").mkdir()
    command, started, release = _hold_until_released(tmp_path / "adhoc", "API_TOKEN", "MULTI")
    job = server.post(
        "/api/jobs",
        {"pattern": "plain1", "command": command, "secrets": {"API_TOKEN": token, "MULTI": multi}},
    )
    try:
        wait_until(started.exists, what="the command started")
        assert _argv_holding(SECRET.encode()) == []
    finally:
        release.touch()
    done = server.wait_job(job["job"]["id"])
    assert done["job"]["state"] == "success", done["runs"]
    run_id = done["runs"][0]["id"]
    assert [ln["text"] for ln in server.log_lines(run_id)] == [_sha(token), _sha(multi)]

    # a playbook task's env (a secret var rendered into it) travels the same way
    (tmp_path / "play").mkdir()
    command, started, release = _hold_until_released(tmp_path / "play", "TOKEN", "PLAIN")
    text = _env_playbook("plain1", token, command)
    job = server.post("/api/playbooks/run", {"text": text})
    try:
        wait_until(started.exists, what="the playbook's command started")
        assert _argv_holding(SECRET.encode()) == []
    finally:
        release.touch()
    done = server.wait_job(job["job"]["id"])
    assert done["job"]["state"] == "success", done["runs"]
    run = server.get(f"/api/runs/{done['runs'][0]['id']}")["run"]
    assert [ln["text"] for ln in server.log_lines(run["id"])] == [
        _sha(token),
        _sha("visible value"),
    ]
    # the stored command still shows what was exported, the secret masked
    assert "export TOKEN=**** PLAIN='visible value'" in run["command"]
    assert _stored_anywhere(server, SECRET) == []


def test_exports_lift_back_into_variables() -> None:
    """What env_prefix writes, lift_exports reads back exactly; a variable a shell acts on at
    its start (IFS, BASH_ENV...) and whatever follows it stay in the command."""
    env = {"A": "plain", "B": "", "C": 'it\'s \\ $x `y` "q"\nline two\n', "D": "é ü"}
    assert lift_exports(env_prefix(env) + "echo hi") == (env, "echo hi")
    rest = env_prefix({"IFS": ":", "E": "e"}) + "echo hi"
    assert lift_exports(env_prefix({"A": "a"}) + rest) == ({"A": "a"}, rest)
    assert lift_exports("export A=$(id)\necho") == ({}, "export A=$(id)\necho")


def test_agent_secret_env_is_never_in_a_command_line(
    agent_server: ServerHandle, tmp_path: Path
) -> None:
    """On an agent's host too: the secrets of `run --secret` and a playbook task's `env:`
    reach the command's environment, never a command line of any process."""
    (tmp_path / "adhoc").mkdir()
    token = "agent-" + SECRET
    command, started, release = _hold_until_released(tmp_path / "adhoc", "API_TOKEN")
    job = agent_server.post(
        "/api/jobs", {"pattern": "sec1", "command": command, "secrets": {"API_TOKEN": token}}
    )
    try:
        wait_until(started.exists, what="the command started")
        assert _argv_holding(SECRET.encode()) == []
    finally:
        release.touch()
    done = agent_server.wait_job(job["job"]["id"])
    assert done["job"]["state"] == "success", done["runs"]
    assert [ln["text"] for ln in agent_server.log_lines(done["runs"][0]["id"])] == [_sha(token)]

    (tmp_path / "play").mkdir()
    command, started, release = _hold_until_released(tmp_path / "play", "TOKEN", "PLAIN")
    text = _env_playbook("sec1", token, command)
    job = agent_server.post("/api/playbooks/run", {"text": text})
    try:
        wait_until(started.exists, what="the playbook's command started")
        assert _argv_holding(SECRET.encode()) == []
    finally:
        release.touch()
    done = agent_server.wait_job(job["job"]["id"])
    assert done["job"]["state"] == "success", done["runs"]
    lines = [ln["text"] for ln in agent_server.log_lines(done["runs"][0]["id"])]
    assert lines == [_sha(token), _sha("visible value")]
