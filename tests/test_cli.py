"""The command line without a server: argument forms, usage errors, output formats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from easytask.cli import manage as cli_manage
from tests.support.cli import answer_with, run_cli

PLAYBOOK = """\
name: hello
hosts: all
tasks:
  - name: say
    command: echo hi {{ inventory_hostname }}
"""


class FakeClient:
    """Answers the few API calls these commands make; records them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []

    def get(self, path: str, **params: Any) -> Any:
        self.calls.append(("GET", path, params))
        if path.endswith("/log"):
            return {"lines": [{"stream": "stdout", "text": "hello", "seq": 1}]}
        return {"run": {"id": 7, "job": 3, "host": "web1", "state": "success"}}

    def post(self, path: str, body: Any = None) -> Any:
        self.calls.append(("POST", path, body))
        if path == "/api/agents/tokens":
            return {"token": "et_enroll", "uses": 1, "expires_at": None}
        return {"killed": 2}


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeClient:
    return answer_with(monkeypatch, tmp_path, cli_manage, FakeClient())


@pytest.mark.parametrize("target", ["7", "run:7", "r7", "RUN:7"])
def test_logs_takes_a_run_as_kill_does(client: FakeClient, target: str) -> None:
    """`logs run:7` is accepted like `kill run:7`."""
    assert run_cli("logs", target) == (0, "hello\n")
    assert ("GET", "/api/runs/7/log", {"level": None, "grep": None}) in client.calls


def test_logs_refuses_a_job(client: FakeClient, capsys: pytest.CaptureFixture[str]) -> None:
    """A job is not a run: a usage error, nothing asked of the server."""
    assert run_cli("logs", "job:3")[0] == 2
    assert "is not RUN or run:N" in capsys.readouterr().err
    assert client.calls == []


@pytest.mark.parametrize(
    ("target", "path"), [("run:7", "/api/runs/7/kill"), ("j3", "/api/jobs/3/kill")]
)
def test_kill_targets(client: FakeClient, target: str, path: str) -> None:
    assert run_cli("kill", target)[0] == 0
    assert client.calls[0][:2] == ("POST", path)


@pytest.mark.parametrize(
    "argv",
    [
        ["agents", "token", "--format", "json"],
        ["agents", "--format", "json", "token"],
    ],
)
def test_agents_token_as_json(client: FakeClient, argv: list[str]) -> None:
    """`agents token --format json` prints the token as JSON (the option goes either side)."""
    code, out = run_cli(*argv)
    assert code == 0
    assert json.loads(out)["token"] == "et_enroll"


def test_agents_token_as_text(client: FakeClient) -> None:
    assert run_cli("agents", "token") == (0, "et_enroll\n")


def _two_inventories(tmp_path: Path) -> tuple[Path, Path, Path]:
    (tmp_path / "a.ini").write_text("alpha1\n")
    (tmp_path / "b.ini").write_text("beta1\n")
    playbook = tmp_path / "hello.yml"
    playbook.write_text(PLAYBOOK)
    return tmp_path / "a.ini", tmp_path / "b.ini", playbook


def test_play_check_reads_every_inventory(client: FakeClient, tmp_path: Path) -> None:
    """`play --check -i A -i B` plans on the hosts of both."""
    a, b, playbook = _two_inventories(tmp_path)
    code, out = run_cli("play", str(playbook), "--check", "-i", str(a), "-i", str(b))
    assert code == 0, out
    assert "echo hi alpha1" in out
    assert "echo hi beta1" in out


def test_play_check_shows_a_credential_placeholder(client: FakeClient, tmp_path: Path) -> None:
    """`play --check`: a secret nothing local sets comes from the server's credential store,
    shown as a placeholder; one the inventory sets keeps its value."""
    (tmp_path / "inv.ini").write_text("alpha1\nbeta1 token=from-inventory\n")
    book = tmp_path / "cred.yml"
    book.write_text(
        "name: cred\nhosts: all\nsecrets: [token, api_key]\ntasks:\n"
        "  - name: show\n    shell: echo \"{{ api_key }} {{ token | default('-') }}\"\n"
    )
    code, out = run_cli("play", str(book), "--check", "-i", str(tmp_path / "inv.ini"))
    assert code == 0, out
    assert 'echo "<credential api_key> -"' in out
    assert 'echo "<credential api_key> from-inventory"' in out


def test_play_inventory_without_check_is_a_usage_error(
    client: FakeClient, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run uses the server's inventory: -i without --check says so instead of being ignored."""
    a, _, playbook = _two_inventories(tmp_path)
    code, _ = run_cli("play", str(playbook), "-i", str(a))
    assert code == 2
    assert "-i/--inventory is only read with --check or --list-hosts" in capsys.readouterr().err
    assert client.calls == []


def test_play_lists_tasks_and_hosts_without_running(
    client: FakeClient, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`play --list-tasks --list-hosts` print the play's hosts (from -i) and its tasks in order
    with their tags, after --tags and --limit, as ansible-playbook does; nothing is sent."""
    (tmp_path / "inv.ini").write_text("[web]\nweb1\nweb2\n[db]\ndb1\n")
    book = tmp_path / "site.yml"
    book.write_text(
        "name: site\nhosts: web:db\ntasks:\n"
        "  - {name: a, shell: x, tags: deploy}\n"
        "  - {name: b, shell: x, tags: [debug, never]}\n"
        "  - {name: c, shell: x, needs: [], tags: deploy}\n"
        "  - {name: d, shell: x, needs: [a, c]}\n"
    )
    code, out = run_cli(
        "play", str(book), "--list-tasks", "--list-hosts", "-i", str(tmp_path / "inv.ini"),
        "-l", "!web2", "--skip-tags", "debug",
    )  # fmt: skip
    assert code == 0
    assert out == (
        f"\nplaybook: {book}\n\n  play #1 (web:db): site\n"
        "    pattern: web:db\n    hosts (2):\n      web1\n      db1\n"
        "    tasks:\n"
        "      a\tTAGS: [deploy]\tat once\n"
        "      c\tTAGS: [deploy]\tat once\n"
        "      d\tTAGS: []\tneeds a, c\n"
    )
    code, out = run_cli("play", str(book), "--list-tasks", "--tags", "never")
    assert code == 0 and out.endswith("    tasks:\n      b\tTAGS: [debug, never]\tafter a\n")
    assert client.calls == []
