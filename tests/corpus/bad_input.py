"""Bad input for a live server, as data (tests/test_bad_input.py sends every case).

Each HTTP case is one request and what must come back: a 4xx status and a substring of the
message naming what is wrong. `{run}` and `{job}` in a path stand for a stored run and job.
Search cases are phrases that must be taken as text (an honest, never wider, answer) or refused
with 400. Hello cases are what a peer on the agent port says, and the refusal it must get.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

LONG = "x" * 100_000
SURROGATE = b'"\\ud800"'  # JSON for a lone surrogate: valid JSON, not valid text


def raw_json(template: str, **values: bytes) -> bytes:
    """A JSON body with raw bytes in it (`$name` in the template)."""
    out = template.encode()
    for key, value in values.items():
        out = out.replace(f"${key}".encode(), value)
    return out


@dataclass(frozen=True)
class Case:
    """One request and the refusal it must get."""

    id: str
    method: str
    path: str
    json: Any = None
    content: bytes | None = None
    params: dict[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    status: int | tuple[int, ...] = 400
    says: str = ""


def job(**body: Any) -> dict[str, Any]:
    """A job body: a pattern and command that would be fine, with `body` on top."""
    return {"pattern": "web1", "command": "true", **body}


def playbook(text: str, **body: Any) -> dict[str, Any]:
    return {"text": text, **body}


GOOD_PLAY = "hosts: web1\ntasks:\n  - name: t\n    command: 'true'\n"

# -- API bodies: shape, types, sizes, text that is not text --------------------------------
BODIES = [
    Case("jobs-not-json", "POST", "/api/jobs", content=b"{pattern:", says="body is not JSON"),
    Case("jobs-array", "POST", "/api/jobs", json=[1, 2], says="must be a JSON object"),
    Case("jobs-string", "POST", "/api/jobs", json="web1", says="must be a JSON object"),
    Case("jobs-empty", "POST", "/api/jobs", json={}, says="pattern is required"),
    Case("jobs-no-command", "POST", "/api/jobs", json={"pattern": "web1"}, says="command"),
    Case("jobs-bad-utf8", "POST", "/api/jobs", content=b'{"pattern": "\xff\xfe"}', says="JSON"),
    Case(
        "jobs-lone-surrogate-command",
        "POST",
        "/api/jobs",
        content=raw_json('{"pattern": "web1", "command": $s}', s=SURROGATE),
        says="command",
    ),
    Case(
        "jobs-lone-surrogate-key",
        "POST",
        "/api/jobs",
        content=raw_json('{"pattern": "web1", "command": "true", $s: 1}', s=SURROGATE),
        says="not valid",
    ),
    Case("jobs-nul-command", "POST", "/api/jobs", json=job(command="echo a\x00b"), says="NUL"),
    Case("jobs-nul-name", "POST", "/api/jobs", json=job(name="n\x00"), says="NUL"),
    Case("jobs-forks-text", "POST", "/api/jobs", json=job(forks="many"), says="many"),
    Case("jobs-forks-negative", "POST", "/api/jobs", json=job(forks=-3), says="forks"),
    Case(
        "jobs-forks-huge",
        "POST",
        "/api/jobs",
        content=b'{"pattern": "web1", "command": "true", "forks": 1e400}',
        says="too large",
    ),
    Case("jobs-forks-list", "POST", "/api/jobs", json=job(forks=[1]), says="forks"),
    Case("jobs-timeout-words", "POST", "/api/jobs", json=job(timeout="soon"), says="soon"),
    Case("jobs-timeout-negative", "POST", "/api/jobs", json=job(timeout="-5s"), says="timeout"),
    Case(
        "jobs-timeout-huge", "POST", "/api/jobs", json=job(timeout="9" * 400 + "d"), says="timeout"
    ),
    Case("jobs-timeout-object", "POST", "/api/jobs", json=job(timeout={"s": 1}), says="duration"),
    Case(
        "jobs-pending-words",
        "POST",
        "/api/jobs",
        json=job(pending_timeout="later"),
        says="pending_timeout",
    ),
    Case("jobs-forks-too-many", "POST", "/api/jobs", json=job(forks=10**12), says="forks"),
    Case(
        "jobs-timeout-nan",
        "POST",
        "/api/jobs",
        content=b'{"pattern": "web1", "command": "true", "timeout": NaN}',
        says="NaN",
    ),
    Case("jobs-deep", "POST", "/api/jobs", content=b"[" * 100_000 + b"]" * 100_000, says="nested"),
    Case("jobs-secrets-list", "POST", "/api/jobs", json=job(secrets=["A"]), says="secrets"),
    Case("jobs-secrets-bad-name", "POST", "/api/jobs", json=job(secrets={"A B": "x"}), says="A B"),
    Case("jobs-kind-unknown", "POST", "/api/jobs", json=job(kind="rm"), says="kind must be"),
    Case("jobs-kind-list", "POST", "/api/jobs", json=job(kind=["copy"]), says="kind must be"),
    Case(
        "jobs-too-large",
        "POST",
        "/api/jobs",
        json=job(command=LONG * 11),
        status=413,
        says="too large",
    ),
    Case("users-empty", "POST", "/api/users", json={}, says="name"),
    Case(
        "users-bad-name",
        "POST",
        "/api/users",
        json={"name": "a b;c", "password": "x" * 12},
        says="name",
    ),
    Case(
        "users-nul-name",
        "POST",
        "/api/users",
        json={"name": "a\x00", "password": "x" * 12},
        says="NUL",
    ),
    Case(
        "users-bad-role",
        "POST",
        "/api/users",
        json={"name": "eve", "role": "root", "password": "x" * 12},
        says="role",
    ),
    Case(
        "users-short-password",
        "POST",
        "/api/users",
        json={"name": "eve", "password": "x"},
        says="password",
    ),
    Case(
        "users-password-number",
        "POST",
        "/api/users",
        json={"name": "eve", "password": 123456789},
        says="password",
    ),
    Case(
        "users-bad-scope",
        "POST",
        "/api/users",
        json={"name": "eve", "password": "x" * 12, "scope": "web["},
        says="scope",
    ),
    Case("users-update-role", "POST", "/api/users/admin", json={"role": "god"}, says="role"),
    Case(
        "users-update-disabled",
        "POST",
        "/api/users/admin",
        json={"disabled": "yes"},
        says="disabled",
    ),
    Case(
        "users-update-unknown",
        "POST",
        "/api/users/nobody%00",
        json={"role": "viewer"},
        status=(400, 404),
        says="NUL",
    ),
    Case("tokens-control-name", "POST", "/api/tokens", json={"name": "a\nb"}, says="token name"),
    Case("tokens-ttl-negative", "POST", "/api/tokens", json={"ttl": "-1h"}, says="ttl"),
    Case("tokens-ttl-forever", "POST", "/api/tokens", json={"ttl": "forever"}, says="ttl"),
    Case(
        "tokens-ttl-huge", "POST", "/api/tokens", json={"ttl": "99999999999999999999d"}, says="ttl"
    ),
    Case("tokens-ttl-list", "POST", "/api/tokens", json={"ttl": [1]}, says="ttl"),
    Case(
        "tokens-other-user",
        "POST",
        "/api/tokens",
        json={"user": "nobody"},
        status=(400, 404),
        says="nobody",
    ),
    Case("tokens-revoke-bad-id", "POST", "/api/tokens/abc/revoke", status=404, says="token_id"),
    Case(
        "tokens-revoke-huge-id",
        "POST",
        "/api/tokens/99999999999999999999/revoke",
        status=404,
        says="token_id must be a number",
    ),
    Case(
        "login-not-json",
        "POST",
        "/api/login",
        content=b"name=admin",
        headers={"authorization": ""},
        says="JSON",
    ),
    Case(
        "login-no-password",
        "POST",
        "/api/login",
        json={"name": "admin"},
        headers={"authorization": ""},
        says="required",
    ),
    Case(
        "login-password-object",
        "POST",
        "/api/login",
        json={"name": "admin", "password": {}},
        headers={"authorization": ""},
        says="required",
    ),
    Case(
        "login-too-large",
        "POST",
        "/api/login",
        json={"name": "admin", "password": LONG},
        headers={"authorization": ""},
        status=413,
        says="too large",
    ),
    Case(
        "login-nul-name",
        "POST",
        "/api/login",
        json={"name": "ad\x00min", "password": "x" * 12},
        headers={"authorization": ""},
        says="NUL",
    ),
    Case(
        "agents-accept-unknown",
        "POST",
        "/api/agents/nobody/accept",
        json={},
        status=404,
        says="nobody",
    ),
    Case(
        "agents-accept-fingerprint-int",
        "POST",
        "/api/agents/nobody/accept",
        json={"fingerprint": 5},
        says="fingerprint",
    ),
    Case(
        "agents-bad-action",
        "POST",
        "/api/agents/nobody/explode",
        json={},
        status=(400, 404),
        says="unknown action",
    ),
    Case(
        "prune-bad-retention", "POST", "/api/prune", json={"retention": "later"}, says="retention"
    ),
    Case(
        "prune-negative-retention",
        "POST",
        "/api/prune",
        json={"retention": "-1d"},
        says="retention",
    ),
]

# -- enrolment tokens asked of the API ----------------------------------------------------
ENROL_TOKENS = [
    Case("enrol-uses-text", "POST", "/api/agents/tokens", json={"uses": "lots"}, says="lots"),
    Case("enrol-uses-negative", "POST", "/api/agents/tokens", json={"uses": -1}, says="uses"),
    Case("enrol-uses-huge", "POST", "/api/agents/tokens", json={"uses": 10**30}, says="uses"),
    Case("enrol-uses-list", "POST", "/api/agents/tokens", json={"uses": [1]}, says="uses"),
    Case(
        "enrol-uses-infinite",
        "POST",
        "/api/agents/tokens",
        content=b'{"uses": 1e400}',
        says="too large",
    ),
    Case("enrol-ttl-negative", "POST", "/api/agents/tokens", json={"ttl": "-1h"}, says="ttl"),
    Case("enrol-ttl-words", "POST", "/api/agents/tokens", json={"ttl": "a while"}, says="ttl"),
    Case("enrol-ttl-huge", "POST", "/api/agents/tokens", json={"ttl": "9" * 40 + "d"}, says="ttl"),
    Case("enrol-ttl-nul", "POST", "/api/agents/tokens", json={"ttl": "1h\x00"}, says="NUL"),
]

# -- host patterns ---------------------------------------------------------------------------
PATTERNS = [
    "[",
    "web[1:",
    "web[a:z]",
    "~(",
    "~[",
    "&",
    "!",
    "web:&",
    "web:!",
    ":::",
    "nohost",
    "web1\x00",
    "web1\nweb2",
    "web[3:1]",
    "web\t1",
    "web1,\x1b[2J",
    "ω" * 1000,
    "a" * 10_000,
    "\ud800",
]

# -- playbooks submitted through the API ----------------------------------------------------
BILLION_LAUGHS = 'a: &a ["x","x","x","x","x","x","x","x","x"]\n' + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},"
    f"*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},"
    f"*{chr(97 + i)}]\n"
    for i in range(8)
)
PLAYBOOKS = [
    Case("play-no-text", "POST", "/api/playbooks/run", json={}, says="text"),
    Case("play-text-number", "POST", "/api/playbooks/run", json={"text": 5}, says="text"),
    Case(
        "play-not-yaml",
        "POST",
        "/api/playbooks/run",
        json=playbook("hosts: [\n"),
        says="playbook.yml",
    ),
    Case(
        "play-a-list",
        "POST",
        "/api/playbooks/run",
        json=playbook("- hosts: web1\n  tasks: []\n"),
        says="not a list",
    ),
    Case(
        "play-no-tasks", "POST", "/api/playbooks/run", json=playbook("hosts: web1\n"), says="tasks"
    ),
    Case(
        "play-scalar",
        "POST",
        "/api/playbooks/run",
        json=playbook("just words\n"),
        says="playbook.yml",
    ),
    Case(
        "play-tabs",
        "POST",
        "/api/playbooks/run",
        json=playbook("hosts: web1\n\ttasks: []\n"),
        says="playbook.yml",
    ),
    Case(
        "play-python-tag",
        "POST",
        "/api/playbooks/run",
        json=playbook("hosts: !!python/object/apply:os.system ['true']\ntasks: []\n"),
        says="playbook.yml",
    ),
    Case(
        "play-billion-laughs",
        "POST",
        "/api/playbooks/run",
        json=playbook(BILLION_LAUGHS),
        says="playbook.yml",
    ),
    Case(
        "play-deep",
        "POST",
        "/api/playbooks/run",
        json=playbook("[" * 5000 + "]" * 5000),
        says="playbook.yml",
    ),
    Case(
        "play-unknown-key",
        "POST",
        "/api/playbooks/run",
        json=playbook(GOOD_PLAY + "taskz: []\n"),
        says="taskz",
    ),
    Case(
        "play-bad-pattern",
        "POST",
        "/api/playbooks/run",
        json=playbook("hosts: 'web['\ntasks:\n  - name: t\n    command: 'true'\n"),
        says="web[",
    ),
    Case(
        "play-no-hosts",
        "POST",
        "/api/playbooks/run",
        json=playbook("hosts: nohost\ntasks:\n  - name: t\n    command: 'true'\n"),
        says="nohost",
    ),
    Case(
        "play-unknown-module",
        "POST",
        "/api/playbooks/run",
        json=playbook("hosts: web1\ntasks:\n  - name: t\n    explode: now\n"),
        says="no action",
    ),
    Case(
        "play-duplicate-key",
        "POST",
        "/api/playbooks/run",
        json=playbook("hosts: web1\nhosts: web2\ntasks: []\n"),
        says="hosts",
    ),
    Case(
        "play-nul", "POST", "/api/playbooks/run", json=playbook(GOOD_PLAY + "#\x00\n"), says="NUL"
    ),
    Case(
        "play-surrogate",
        "POST",
        "/api/playbooks/run",
        content=raw_json('{"text": $s}', s=SURROGATE),
        says="text",
    ),
    Case(
        "play-name-nul",
        "POST",
        "/api/playbooks/run",
        json=playbook(GOOD_PLAY, name="p\x00.yml"),
        says="NUL",
    ),
    Case(
        "play-name-escape",
        "POST",
        "/api/playbooks/run",
        json=playbook(GOOD_PLAY, name="../../etc/p.yml"),
        says="../../etc/p.yml",
    ),
    Case(
        "play-name-absolute",
        "POST",
        "/api/playbooks/run",
        json=playbook(GOOD_PLAY, name="/etc/cron.d/p.yml"),
        says="/etc/cron.d/p.yml",
    ),
    Case(
        "play-vars-file-escape",
        "POST",
        "/api/playbooks/run",
        json=playbook(
            "hosts: web1\nvars_files: [../../../etc/shadow]\ntasks:\n  - name: t\n    command: 'true'\n"
        ),
        says="outside",
    ),
    Case(
        "play-script-absolute",
        "POST",
        "/api/playbooks/run",
        json=playbook("hosts: web1\ntasks:\n  - name: t\n    script: /etc/passwd\n"),
        says="outside",
    ),
    Case(
        "play-script-escape",
        "POST",
        "/api/playbooks/run",
        json=playbook("hosts: web1\ntasks:\n  - name: t\n    script: ../../../../../etc/passwd\n"),
        says="outside",
    ),
    Case(
        "play-copy-escape",
        "POST",
        "/api/playbooks/run",
        json=playbook(
            "hosts: web1\ntasks:\n  - name: t\n    copy: {src: ../../admin.password, dest: /tmp/x}\n"
        ),
        says="outside",
    ),
    Case(
        "play-files-list",
        "POST",
        "/api/playbooks/run",
        json=playbook(GOOD_PLAY, files=["a"]),
        says="files",
    ),
    Case(
        "play-files-not-base64",
        "POST",
        "/api/playbooks/run",
        json=playbook(GOOD_PLAY, files={"a.sh": "!!!"}),
        says="base64",
    ),
    Case(
        "play-files-escape",
        "POST",
        "/api/playbooks/run",
        json=playbook(GOOD_PLAY, files={"../../x.sh": "eA=="}),
        says="../../x.sh",
    ),
    Case(
        "play-files-absolute",
        "POST",
        "/api/playbooks/run",
        json=playbook(GOOD_PLAY, files={"/etc/cron.d/x": "eA=="}),
        says="/etc/cron.d/x",
    ),
    Case(
        "play-files-nul",
        "POST",
        "/api/playbooks/run",
        json=playbook(GOOD_PLAY, files={"a\x00.sh": "eA=="}),
        says="NUL",
    ),
    Case(
        "play-extra-vars-list",
        "POST",
        "/api/playbooks/run",
        json=playbook(GOOD_PLAY, extra_vars=[1]),
        says="extra_vars",
    ),
    Case(
        "play-limit-list",
        "POST",
        "/api/playbooks/run",
        json=playbook(GOOD_PLAY, limit=["web1"]),
        says="limit",
    ),
    Case(
        "play-limit-bad",
        "POST",
        "/api/playbooks/run",
        json=playbook(GOOD_PLAY, limit="web["),
        says="web[",
    ),
    Case(
        "play-too-large",
        "POST",
        "/api/playbooks/run",
        json=playbook("#" + "x" * (64 << 20)),
        status=413,
        says="too large",
    ),
    Case(
        "playfile-escape",
        "POST",
        "/api/playbooks/..%2f..%2fetc%2fpasswd/run",
        json={},
        status=(400, 404),
        says="not found",
    ),
    Case(
        "playfile-absolute",
        "POST",
        "/api/playbooks/%2fetc%2fpasswd/run",
        json={},
        status=(400, 404),
        says="not found",
    ),
    Case(
        "playfile-nul",
        "POST",
        "/api/playbooks/a%00.yml/run",
        json={},
        status=(400, 404),
        says="NUL",
    ),
    Case(
        "playfile-missing",
        "POST",
        "/api/playbooks/nothing.yml/run",
        json={},
        status=404,
        says="nothing.yml",
    ),
]

# -- file paths: copy, script, fetch, checksum, uploads -------------------------------------
FILES = [
    Case(
        "copy-name-escape",
        "POST",
        "/api/jobs",
        json=job(kind="copy", copy={"name": "../../x", "data": "eA==", "dest": "/tmp/x"}),
        says="../../x",
    ),
    Case(
        "copy-name-absolute",
        "POST",
        "/api/jobs",
        json=job(kind="copy", copy={"name": "/etc/passwd", "data": "eA==", "dest": "/tmp/x"}),
        says="/etc/passwd",
    ),
    Case(
        "copy-name-nul",
        "POST",
        "/api/jobs",
        json=job(kind="copy", copy={"name": "a\x00b", "data": "eA==", "dest": "/tmp/x"}),
        says="NUL",
    ),
    Case(
        "copy-name-empty",
        "POST",
        "/api/jobs",
        json=job(kind="copy", copy={"name": "", "data": "eA==", "dest": "/tmp/x"}),
        says="must be relative",
    ),
    Case(
        "copy-dest-nul",
        "POST",
        "/api/jobs",
        json=job(kind="copy", copy={"name": "a", "data": "eA==", "dest": "/tmp/\x00x"}),
        says="NUL",
    ),
    Case(
        "copy-no-dest",
        "POST",
        "/api/jobs",
        json=job(kind="copy", copy={"name": "a", "data": "eA=="}),
        says="copy.dest",
    ),
    Case(
        "copy-bad-mode",
        "POST",
        "/api/jobs",
        json=job(kind="copy", copy={"name": "a", "data": "eA==", "dest": "/x", "mode": "rwx"}),
        says="copy.mode",
    ),
    Case(
        "copy-not-base64",
        "POST",
        "/api/jobs",
        json=job(kind="copy", copy={"name": "a", "data": "%%%", "dest": "/x"}),
        says="base64",
    ),
    Case(
        "copy-dir-escape",
        "POST",
        "/api/jobs",
        json=job(kind="copy", copy={"name": "d", "files": {"../../y": "eA=="}, "dest": "/x"}),
        says="../../y",
    ),
    Case(
        "copy-bad-upload-id",
        "POST",
        "/api/jobs",
        json=job(kind="copy", copy={"name": "a", "upload": "../../etc", "dest": "/x"}),
        says="not an upload id",
    ),
    Case(
        "copy-missing-upload",
        "POST",
        "/api/jobs",
        json=job(kind="copy", copy={"name": "a", "upload": "0" * 16, "dest": "/x"}),
        says="no uploaded file",
    ),
    Case(
        "copy-spec-string",
        "POST",
        "/api/jobs",
        json=job(kind="copy", copy="/etc/passwd"),
        says="kind must be",
    ),
    Case(
        "script-name-escape",
        "POST",
        "/api/jobs",
        json=job(kind="script", script={"name": "../s.sh", "data": "eA=="}),
        says="../s.sh",
    ),
    Case("fetch-no-path", "POST", "/api/jobs", json=job(kind="fetch", fetch={}), says="fetch.path"),
    Case(
        "fetch-nul",
        "POST",
        "/api/jobs",
        json=job(kind="fetch", fetch={"path": "/etc/\x00x"}),
        says="NUL",
    ),
    Case(
        "fetch-dotdot",
        "POST",
        "/api/jobs",
        json=job(kind="fetch", fetch={"path": "/var/.."}),
        says="fetch.path",
    ),
    Case(
        "fetch-root",
        "POST",
        "/api/jobs",
        json=job(kind="fetch", fetch={"path": "/"}),
        says="fetch.path",
    ),
    Case(
        "fetch-dot",
        "POST",
        "/api/jobs",
        json=job(kind="fetch", fetch={"path": "."}),
        says="fetch.path",
    ),
    Case(
        "checksum-no-path",
        "POST",
        "/api/jobs",
        json=job(kind="checksum", checksum={}),
        says="checksum.path",
    ),
    Case(
        "checksum-nul",
        "POST",
        "/api/jobs",
        json=job(kind="checksum", checksum={"path": "/etc/\x00"}),
        says="NUL",
    ),
    Case(
        "checksum-bad-expect",
        "POST",
        "/api/jobs",
        json=job(kind="checksum", checksum={"path": "/etc/hosts", "expect": "abc"}),
        says="SHA-256",
    ),
    Case("upload-no-name", "POST", "/api/uploads", content=b"x", says="name"),
    Case(
        "upload-name-escape",
        "POST",
        "/api/uploads",
        params={"name": "../x"},
        content=b"x",
        says="name",
    ),
    Case(
        "upload-name-absolute",
        "POST",
        "/api/uploads",
        params={"name": "/etc/x"},
        content=b"x",
        says="name",
    ),
    Case(
        "upload-name-dotdot",
        "POST",
        "/api/uploads",
        params={"name": ".."},
        content=b"x",
        says="name",
    ),
    Case(
        "upload-name-nul",
        "POST",
        "/api/uploads",
        params={"name": "a\x00b"},
        content=b"x",
        says="NUL",
    ),
    Case("fetched-no-file", "GET", "/api/runs/{run}/fetched", status=404, says="fetched no file"),
    Case("fetched-bad-id", "GET", "/api/runs/..%2f..%2fetc/fetched", status=404, says="not found"),
]

# -- query parameters: limits, dates, cursors, ids ------------------------------------------
QUERIES = [
    Case("runs-limit-negative", "GET", "/api/runs", params={"limit": "-1"}, says="limit"),
    Case("runs-limit-zero", "GET", "/api/runs", params={"limit": "0"}, says="limit"),
    Case("runs-limit-float", "GET", "/api/runs", params={"limit": "1e3"}, says="limit"),
    Case(
        "runs-since-bad",
        "GET",
        "/api/runs",
        params={"since": "yesterday-ish"},
        says="yesterday-ish",
    ),
    Case(
        "runs-since-month-13", "GET", "/api/runs", params={"since": "2024-13-01"}, says="2024-13-01"
    ),
    Case(
        "runs-since-huge-duration",
        "GET",
        "/api/runs",
        params={"since": "9" * 30 + "d"},
        says="999999",
    ),
    Case(
        "runs-until-year-0", "GET", "/api/runs", params={"until": "0000-01-01"}, says="0000-01-01"
    ),
    Case("runs-before-text", "GET", "/api/runs", params={"before": "abc"}, says="before"),
    Case("runs-before-huge", "GET", "/api/runs", params={"before": "9" * 30}, says="before"),
    Case("runs-after-negative", "GET", "/api/runs", params={"after": "-5"}, says="after"),
    Case("runs-job-huge", "GET", "/api/runs", params={"job": "9" * 30}, says="job"),
    Case("runs-status-bad", "GET", "/api/runs", params={"status": "exploded"}, says="status"),
    Case("runs-nul", "GET", "/api/runs", params={"host": "a\x00"}, says="NUL"),
    Case("run-id-huge", "GET", "/api/runs/" + "9" * 30, status=404, says="run_id must be a number"),
    Case("run-id-negative", "GET", "/api/runs/-1", status=404, says="run_id must be a number"),
    Case("job-id-huge", "GET", "/api/jobs/" + "9" * 30, status=404, says="job_id must be a number"),
    Case(
        "job-kill-huge",
        "POST",
        "/api/jobs/" + "9" * 30 + "/kill",
        status=404,
        says="job_id must be a number",
    ),
    Case(
        "run-log-limit-negative", "GET", "/api/runs/{run}/log", params={"limit": "-1"}, says="limit"
    ),
    Case("run-log-limit-text", "GET", "/api/runs/{run}/log", params={"limit": "all"}, says="all"),
    Case(
        "run-log-after-huge", "GET", "/api/runs/{run}/log", params={"after": "9" * 30}, says="after"
    ),
    Case("run-log-level-bad", "GET", "/api/runs/{run}/log", params={"level": "LOUD"}, says="LOUD"),
    Case(
        "run-log-id-huge",
        "GET",
        "/api/runs/" + "9" * 30 + "/log",
        status=404,
        says="run_id must be a number",
    ),
    Case(
        "run-lines-after-bad",
        "GET",
        "/api/runs/{run}/lines",
        params={"after_seq": "x"},
        says="after_seq",
    ),
    Case(
        "run-lines-limit-negative",
        "GET",
        "/api/runs/{run}/lines",
        params={"limit": "-7"},
        says="limit",
    ),
    Case(
        "run-search-limit-zero",
        "GET",
        "/api/runs/{run}/search",
        params={"q": "a", "limit": "0"},
        says="limit",
    ),
    Case("audit-limit-negative", "GET", "/api/audit", params={"limit": "-1"}, says="limit"),
    Case("audit-limit-text", "GET", "/api/audit", params={"limit": "many"}, says="many"),
    Case("audit-before-huge", "GET", "/api/audit", params={"before": "9" * 30}, says="before"),
    Case("audit-before-negative", "GET", "/api/audit", params={"before": "-1"}, says="before"),
    Case("audit-since-bad", "GET", "/api/audit", params={"since": "2024-02-30"}, says="2024-02-30"),
    Case("export-format-bad", "GET", "/api/export", params={"format": "exe"}, says="format"),
    Case("export-since-bad", "GET", "/api/export", params={"since": "someday"}, says="someday"),
    Case(
        "events-after-bad",
        "GET",
        "/api/runs/{run}/events",
        params={"after": "x", "follow": "0"},
        says="after",
    ),
    Case(
        "events-last-id-bad",
        "GET",
        "/api/runs/{run}/events",
        params={"follow": "0"},
        headers={"last-event-id": "-1"},
        says="event id",
    ),
    Case("tokens-user-nul", "GET", "/api/tokens", params={"user": "a\x00"}, says="NUL"),
    Case("hosts-pattern-nul", "GET", "/api/hosts", params={"pattern": "a\x00"}, says="NUL"),
    Case(
        "deliveries-huge",
        "GET",
        "/api/jobs/" + "9" * 30 + "/deliveries",
        status=404,
        says="job_id must be a number",
    ),
]

# limits past the most a page holds are taken as that most (an honest, shorter answer)
CAPPED = [
    ("/api/runs", {"limit": "9" * 30}),
    ("/api/audit", {"limit": "9" * 30}),
    ("/api/runs/{run}/log", {"limit": "9" * 30}),
    ("/api/runs/{run}/lines", {"limit": "9" * 30}),
    ("/api/runs/{run}/search", {"q": "a", "limit": "9" * 30}),
]

# -- header values -------------------------------------------------------------------------
HEADERS = [
    Case(
        "bearer-non-ascii",
        "GET",
        "/api/runs",
        headers={"authorization": "Bearer tökén"},
        status=401,
        says="token",
    ),
    Case(
        "bearer-long",
        "GET",
        "/api/runs",
        headers={"authorization": "Bearer " + "a" * 7000},
        status=401,
        says="token",
    ),
    Case(
        "bearer-empty",
        "GET",
        "/api/runs",
        headers={"authorization": "Bearer"},
        status=401,
        says="bearer",
    ),
    Case(
        "basic-auth",
        "GET",
        "/api/runs",
        headers={"authorization": "Basic YTpi"},
        status=401,
        says="bearer",
    ),
    Case(
        "metrics-non-ascii",
        "GET",
        "/metrics",
        headers={"authorization": "Bearer ñ"},
        status=401,
        says="token",
    ),
    Case(
        "cookie-garbage",
        "GET",
        "/api/runs",
        headers={"authorization": "", "cookie": "easytask_session=%ff%00.abc"},
        status=401,
        says="bearer",
    ),
    Case(
        "client-kind-long",
        "POST",
        "/api/jobs",
        json=job(pattern="nohost"),
        headers={"x-easytask-client": "c" * 7000},
        says="nohost",
    ),
    Case(
        "content-type-lies",
        "POST",
        "/api/jobs",
        content=b"\x00\x01\x02",
        headers={"content-type": "application/json"},
        says="JSON",
    ),
]


def header_bytes(value: bytes) -> bytes:
    """An HTTP request whose one header carries raw bytes (CR, LF, NUL, 8-bit)."""
    return (
        b"GET /api/runs HTTP/1.1\r\nHost: x\r\nX-Test: " + value + b"\r\nConnection: close\r\n\r\n"
    )


RAW_HEADERS = {
    "header-bare-cr": header_bytes(b"a\rb"),
    "header-nul": header_bytes(b"a\x00b"),
    "header-crlf-split": b"GET /api/runs HTTP/1.1\r\nHost: x\r\nX-Test: a\r\n b\r\n\r\n",
    "header-huge": header_bytes(b"a" * 200_000),
    "header-latin1": header_bytes("é".encode("latin-1")),
    "request-line-huge": b"GET /api/runs?q=" + b"a" * 200_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "request-line-garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
}

# -- full-text search: text to look for, never syntax ----------------------------------------
SEARCHES = [
    '"unterminated',
    'say "unterminated',
    "NEAR(a b",
    "x * y",
    "* y -",
    "text:needle",
    "a_b \\ c",
    '"',
    "NEAR(",
    "*",
    "-",
    "-needle",
    "needle*",
    "^needle",
    "a AND",
    "OR",
    "NOT needle",
    "(",
    ")",
    "{text}: x",
    "a:b:c",
    "'; DROP TABLE run; --",
    "%",
    "_",
    "\\",
    "&|!<->:*",
    "\ufffd",
    "ω" * 3000,
    "needle " * 3000,
    "\ud800",
    "\udfff x",
]
SEARCH_NUL = ["a\x00b", "\x00"]


# -- console forms (sent with the session's CSRF token, as a browser would) ------------------
@dataclass(frozen=True)
class Form:
    """One console form post and the refusal page it must get."""

    id: str
    path: str
    fields: dict[str, str]
    status: int | tuple[int, ...] = 400
    says: str = ""
    csrf: str | None = "session"  # "session": the page's token; None: left out; else sent as is
    content: bytes | None = None


FORMS = [
    Form("adhoc-no-pattern", "/adhoc", {"command": "true"}, says="host pattern is required"),
    Form("adhoc-no-command", "/adhoc", {"pattern": "web1"}, says="command is required"),
    Form("adhoc-bad-pattern", "/adhoc", {"pattern": "web[", "command": "true"}, says="web["),
    Form("adhoc-nohost", "/adhoc", {"pattern": "nohost", "command": "true"}, says="nohost"),
    Form("adhoc-nul-pattern", "/adhoc", {"pattern": "web1\x00", "command": "true"}, says="NUL"),
    Form("adhoc-nul-command", "/adhoc", {"pattern": "web1", "command": "a\x00b"}, says="NUL"),
    Form(
        "adhoc-bad-timeout",
        "/adhoc",
        {"pattern": "web1", "command": "true", "timeout": "x"},
        says="x",
    ),
    Form(
        "adhoc-negative-timeout",
        "/adhoc",
        {"pattern": "web1", "command": "true", "timeout": "-1s"},
        says="timeout",
    ),
    Form("adhoc-copy-kind", "/adhoc", {"pattern": "web1", "kind": "copy"}, says="JavaScript"),
    Form("adhoc-unknown-kind", "/adhoc", {"pattern": "web1", "kind": "<script>"}, says="<script>"),
    Form(
        "adhoc-checksum-nul",
        "/adhoc",
        {"pattern": "web1", "kind": "checksum", "path": "/\x00"},
        says="NUL",
    ),
    Form(
        "adhoc-checksum-expect",
        "/adhoc",
        {"pattern": "web1", "kind": "checksum", "path": "/etc/hosts", "expect": "zz"},
        says="SHA-256",
    ),
    Form("adhoc-long-pattern", "/adhoc", {"pattern": "a" * 60_000, "command": "true"}, says="aaaa"),
    Form(
        "adhoc-too-large",
        "/adhoc",
        {"pattern": "web1", "command": "x" * 70_000},
        status=413,
        says="too large",
    ),
    Form("adhoc-bad-utf8", "/adhoc", {}, content=b"pattern=web1&command=%ff%fe%00", says="NUL"),
    Form(
        "adhoc-no-csrf",
        "/adhoc",
        {"pattern": "web1", "command": "true"},
        csrf=None,
        status=403,
        says="CSRF",
    ),
    Form(
        "adhoc-wrong-csrf",
        "/adhoc",
        {"pattern": "web1", "command": "true"},
        csrf="forged",
        status=403,
        says="CSRF",
    ),
    Form("agent-unknown-action", "/agents/nobody/explode", {}, status=404, says="unknown action"),
    Form("agent-accept-unknown", "/agents/nobody/accept", {}, status=404, says="nobody"),
    Form(
        "agent-accept-nul",
        "/agents/nobody/accept",
        {"fingerprint": "SHA256:\x00"},
        status=(400, 404),
        says="NUL",
    ),
    Form("logout-no-csrf", "/logout", {}, csrf=None, status=403, says="CSRF"),
]

# sign-in form posts (a fresh session each: GET /login for its token first)
LOGIN_FORMS = [
    Form(
        "login-nul-name",
        "/login",
        {"username": "ad\x00min", "password": "x" * 12},
        status=(400, 401),
        says="NUL",
    ),
    Form(
        "login-long-name",
        "/login",
        {"username": "a" * 60_000, "password": "x"},
        status=(400, 401),
        says="Wrong user name",
    ),
    Form(
        "login-no-csrf",
        "/login",
        {"username": "admin", "password": "x"},
        csrf=None,
        status=403,
        says="expired",
    ),
    Form(
        "login-too-large",
        "/login",
        {"username": "admin", "password": "x" * 70_000},
        status=413,
        says="too large",
    ),
    Form(
        "login-bad-next",
        "/login",
        {"username": "admin", "password": "wrong-password", "next": "//evil.example/"},
        status=401,
        says="Wrong",
    ),
]


# -- agent hellos ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hello:
    """What a peer on the agent port says: the name in its SSH version string, its hello reply
    (bytes as sent, or an object sent as JSON), and the refusal reason it must get."""

    id: str
    reply: Any
    says: str
    # the name in the SSH version string and the hello: "same" is the case's own name; None is
    # no name (the peer is not an EasyTask agent)
    version_name: str | None = "same"


def hello(**fields: Any) -> dict[str, Any]:
    """A hello a real agent could send, with `fields` on top ("name" is filled in)."""
    return {"version": "0.1.0", "groups": [], "slots": 2, "facts": {"cpus": 2}, **fields}


HELLOS = [
    Hello("not-an-agent", hello(), "not an EasyTask agent", version_name=None),
    Hello("not-json", b"{hello\n", "hello"),
    Hello("no-answer", b"", "hello"),
    Hello("a-list", [1, 2], "must be an object"),
    Hello("name-mismatch", hello(name="someone-else"), "someone-else"),
    Hello("error-reply", {"error": "go away"}, "go away"),
    Hello("slots-text", hello(slots="many"), "slots"),
    Hello("slots-negative", hello(slots=-1), "slots"),
    Hello("slots-huge", hello(slots=10**12), "slots"),
    Hello("groups-text", hello(groups="web"), "groups"),
    Hello("groups-numbers", hello(groups=[1]), "groups[0]"),
    Hello("groups-nul", hello(groups=["we\x00b"]), "groups[0]"),
    Hello("version-long", hello(version="v" * 1000), "version"),
    Hello("facts-list", hello(facts=[1]), "facts"),
    Hello("facts-load", hello(facts={"load": {"a": 1}}), "facts.load"),
    Hello("facts-nan", b'{"name": "$NAME", "facts": {"load": [NaN]}}\n', "facts.load[0]"),
    Hello("facts-deep", hello(facts={"x": {"y": {"z": 1}}}), "facts.x"),
    Hello("facts-huge", hello(facts={f"k{i}": "v" * 250 for i in range(64)}), "bytes"),
    Hello("surrogate-version", b'{"name": "$NAME", "version": "\\ud800"}\n', "version"),
    Hello("name-shell", hello(), "not valid", version_name="web1;curl x|sh"),
    Hello("name-comma", hello(), "not valid", version_name="web1,web2"),
    Hello("groups-comma", hello(groups=["web,prod"]), "groups"),
    Hello("groups-shell", hello(groups=["prod;curl x|sh"]), "groups"),
    Hello("enroll-wrong", hello(enroll="not-a-token"), "enrolment token"),
    Hello("enroll-number", hello(enroll=12345), "enroll"),
    Hello("enroll-object", hello(enroll={"token": "x"}), "enroll"),
    Hello("enroll-nul", hello(enroll="a\x00b"), "enroll"),
    Hello("enroll-huge", hello(enroll="t" * 100_000), "enroll"),
    Hello("enroll-surrogate", b'{"name": "$NAME", "enroll": "\\udfff"}\n', "enroll"),
]


def hello_bytes(case: Hello, name: str) -> bytes:
    """The bytes a hello case answers with."""
    if isinstance(case.reply, bytes):
        return case.reply.replace(b"$NAME", name.encode())
    reply = case.reply
    if isinstance(reply, dict) and "version" in reply and "name" not in reply:
        reply = {"name": name, **reply}
    return (json.dumps(reply) + "\n").encode()
