"""Text from hosts and the server reaches a terminal with its control characters escaped."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from easytask.cli import jobs as cli_jobs
from easytask.cli import manage as cli_manage
from easytask.cli.common import escape_controls, print_json, print_table
from easytask.cli.jobs import RunView
from tests.conftest import AgentFactory, ServerFactory, write
from tests.support.cli import answer_with, run_cli

# (text as received, as shown)
CASES = [
    ("plain text", "plain text"),
    ("tab\tkept", "tab\tkept"),
    ("\x1b[2J", "\\x1b[2J"),  # clear the screen
    ("\x1b]0;pwned\x07", "\\x1b]0;pwned\\x07"),  # OSC: set the window title, BEL ends it
    ("\x1b]52;c;ZXZpbA==\x1b\\", "\\x1b]52;c;ZXZpbA==\\x1b\\"),  # OSC 52: write the clipboard
    ("\x9b31m", "\\x9b31m"),  # the one-character C1 CSI
    ("\x9d0;x\x9c", "\\x9d0;x\\x9c"),  # C1 OSC and ST
    ("safe\bXX", "safe\\x08XX"),  # backspace over what was printed
    ("50%\r100%", "50%\\r100%"),  # carriage return inside a line
    ("one\ntwo", "one\\ntwo"),
    ("\x00nul", "\\x00nul"),
    ("del\x7f", "del\\x7f"),
    ("\x80\x9f", "\\x80\\x9f"),  # the edges of C1
    ("nbsp\xa0é ü ✓ 日本", "nbsp\xa0é ü ✓ 日本"),  # printable Unicode as it is
    ("C:\\dir\\x1b", "C:\\dir\\x1b"),  # a backslash is text
    ("", ""),
]


@pytest.mark.parametrize(("text", "shown"), CASES, ids=[repr(c[0])[:24] for c in CASES])
def test_escape_controls(text: str, shown: str) -> None:
    assert escape_controls(text) == shown


def test_every_control_character_is_shown_as_repr_shows_it() -> None:
    """C0 (but tab), DEL and C1: each written as in Python's repr; everything printable kept."""
    for code in range(0x100):
        char = chr(code)
        if code < 0x20 and char != "\t" or 0x7F <= code <= 0x9F:
            assert escape_controls(char) == repr(char)[1:-1], hex(code)
        else:
            assert escape_controls(char) == char, hex(code)


def test_newlines_kept_on_request() -> None:
    """Multi-line messages (errors) keep their line breaks, nothing else."""
    assert escape_controls("a\nb\x1b[Hc\r", newlines=True) == "a\nb\\x1b[Hc\\r"


def test_table_cells_are_escaped() -> None:
    out = io.StringIO()
    print_table([("web1\x1b[2J", "failed", "refused: \x1b]0;x\x07")], ("HOST", "STATE", "WHY"), out)
    assert "\x1b" not in out.getvalue() and "\x07" not in out.getvalue()
    assert "web1\\x1b[2J" in out.getvalue()
    assert "refused: \\x1b]0;x\\x07" in out.getvalue()


def test_json_output_has_no_control_characters() -> None:
    """`--format json` is safe as it is: every control character becomes a \\u escape."""
    text = "".join(chr(c) for c in range(0x100))
    out = io.StringIO()
    print_json({"text": text}, out)
    assert escape_controls(out.getvalue(), newlines=True) == out.getvalue()
    assert json.loads(out.getvalue())["text"] == text


def _event(text: str, stream: str = "stdout") -> dict[str, Any]:
    return {"t": "line", "run": 1, "seq": 1, "host": "web1", "stream": stream, "text": text}


@pytest.mark.parametrize("stream", ["stdout", "stderr", "system"])
def test_live_output_escaped_unless_raw(stream: str) -> None:
    """`run`/`play`/`logs -f` lines: escaped by default, as they are with --raw."""
    out = io.StringIO()
    RunView(out, ["web1"]).line(_event("\x1b]0;pwned\x07\x1b[2J", stream))
    assert "\x1b" not in out.getvalue()
    assert "\\x1b]0;pwned\\x07\\x1b[2J" in out.getvalue()
    raw = io.StringIO()
    RunView(raw, ["web1"], raw=True).line(_event("\x1b]0;pwned\x07\x1b[2J", stream))
    assert "\x1b]0;pwned\x07\x1b[2J" in raw.getvalue()


class FakeClient:
    """A run's stored log and one agent, with control characters in them."""

    def get(self, path: str, **params: Any) -> Any:
        if path.endswith("/log"):
            return {"lines": [{"stream": "stderr", "text": "bad\x1b[2J\x9b", "seq": 1}]}
        if path == "/api/agents":
            agent = {
                "name": "evil\x1b[31m",
                "status": "pending",
                "since": None,
                "last_seen": None,
                "address": "127.0.0.1",
                "running": 0,
                "slots": 4,
                "facts": {"load": ["\x1b]0;x\x07"]},
                "version": "1\x08",
                "groups": ["g\x1b"],
                "pending": ["p\x1b"],
            }
            return {"agents": [agent]}
        return {"run": {"id": 7, "job": 3, "host": "web1", "state": "success"}}


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeClient:
    return answer_with(monkeypatch, tmp_path, cli_manage, FakeClient())


def test_logs_escaped_unless_raw(client: FakeClient) -> None:
    assert run_cli("logs", "7") == (0, "! bad\\x1b[2J\\x9b\n")
    assert run_cli("logs", "7", "--raw") == (0, "! bad\x1b[2J\x9b\n")
    code, out = run_cli("logs", "7", "--format", "json")
    assert code == 0 and "\x1b" not in out
    assert json.loads(out)[0]["text"] == "bad\x1b[2J\x9b"


def test_agents_table_escaped(client: FakeClient) -> None:
    code, out = run_cli("agents")
    assert code == 0
    assert escape_controls(out, newlines=True) == out
    assert "evil\\x1b[31m" in out and "g\\x1b" in out and "p\\x1b" in out


# printed by a host: set the window title, then clear the screen
ATTACK = r"printf '\033]0;pwned\007\033[2J'"
SENT = "\x1b]0;pwned\x07\x1b[2J"
SHOWN = "\\x1b]0;pwned\\x07\\x1b[2J"


def test_real_run_and_logs_escape_a_hosts_escape_sequences(
    tmp_path: Path, start_server: ServerFactory, start_agent: AgentFactory
) -> None:
    """Through a real server and agent: `run` and `logs` show the sequence escaped, `--raw`
    prints it as the host sent it, JSON carries it escaped."""
    server = start_server(write(tmp_path / "hosts.ini", "web1\n"))
    start_agent(server, "web1")

    result = server.cli("run", "web1", "-a", ATTACK)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"| {SHOWN}" in result.stdout
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout

    result = server.cli("run", "web1", "-a", ATTACK, "--raw")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"| {SENT}\n" in result.stdout

    run_id = str(server.get("/api/runs", limit=1)["runs"][0]["id"])
    result = server.cli("logs", run_id)
    assert (result.returncode, result.stdout) == (0, SHOWN + "\n"), result.stderr
    result = server.cli("logs", run_id, "--raw")
    assert (result.returncode, result.stdout) == (0, SENT + "\n"), result.stderr
    result = server.cli("logs", run_id, "--format", "json")
    assert result.returncode == 0 and "\x1b" not in result.stdout
    assert json.loads(result.stdout)[0]["text"] == SENT


class ChecksumClient:
    """One job of two runs: a host that printed an escape sequence, one refused."""

    def post(self, path: str, body: Any = None) -> Any:
        return {"job": {"id": 1}, "runs": []}

    def events(self, path: str) -> Any:
        yield {"t": "job", "state": "failed"}

    def get(self, path: str, **params: Any) -> Any:
        if path.endswith("/log"):
            return {"lines": [{"stream": "stdout", "text": "\x1b]0;pwned\x07", "seq": 1}]}
        runs = [
            {"id": 1, "host": "web1", "state": "success", "reason": ""},
            {"id": 2, "host": "web2", "state": "failed", "reason": "refused: \x1b[2J"},
        ]
        return {"runs": runs}


def test_checksum_text_escaped_json_as_sent(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    answer_with(monkeypatch, tmp_path, cli_jobs, ChecksumClient())
    code, out = run_cli("checksum", "all", "/etc/motd")
    assert code == 1
    assert "\\x1b]0;pwned\\x07  1 host(s): web1" in out
    assert "error: failed (refused: \\x1b[2J)  1 host(s): web2" in out
    assert escape_controls(out, newlines=True) == out
    code, out = run_cli("checksum", "all", "/etc/motd", "--format", "json")
    assert json.loads(out)["hosts"] == {
        "web1": "\x1b]0;pwned\x07",
        "web2": "error: failed (refused: \x1b[2J)",
    }
