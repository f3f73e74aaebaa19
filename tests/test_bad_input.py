"""A corpus of bad input (tests/corpus/bad_input.py) against one live server: every case gets a
clear 4xx with a message (a peer on the agent port: a refusal with its reason), the server stays
up, and nothing is stored but the refusal events the design records."""

from __future__ import annotations

import asyncio
import html
import shlex
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncssh
import httpx
import pytest
from sqlalchemy import bindparam, text

from easytask.store.db import make_engine
from tests.browser.support import FIELD_CSRF, Browserless, admin_password
from tests.conftest import ServerFactory, write
from tests.corpus.bad_input import (
    BODIES,
    CAPPED,
    ENROL_TOKENS,
    FILES,
    FORMS,
    HEADERS,
    HELLOS,
    LOGIN_FORMS,
    PATTERNS,
    PLAYBOOKS,
    QUERIES,
    RAW_HEADERS,
    SEARCH_NUL,
    SEARCHES,
    Case,
    Form,
    Hello,
    hello_bytes,
)
from tests.support import Procs, ServerHandle, launch_agent, wait_until

# Rows a refused input must not add to; the audit log may gain only refusal events.
WATCHED = (
    "job",
    "run",
    "runevent",
    "log_line",
    '"user"',
    "apitoken",
    "enrolltoken",
    "schedule",
    "agent",
    "job_webhook",
    "revoked_session",
)
REFUSAL_EVENTS = ("agent.refused", "job.refused", "login.failed")

INVENTORY = """\
[web]
web1 easytask_connection=ssh ansible_host=127.0.0.1 ansible_port=1
web2 easytask_connection=ssh ansible_host=127.0.0.1 ansible_port=1
"""


# what the module's one run prints: text full of search syntax
OUTPUT = [
    'say "unterminated',
    "NEAR(a b",
    "x * y - z",
    "needle* and -needle",
    "a AND OR NOT (b)",
    "{text}: x and text:needle",
    "100% of a_b \\ c",
]


class Live:
    """The module's server with one agent and one run, its database and what it holds."""

    def __init__(self, server: ServerHandle, procs: Procs, agent_dir: Path) -> None:
        self.server = server
        self.engine = make_engine(server.db_url)
        launch_agent(procs, server, "a1", agent_dir, "--keepalive", "1")
        job = server.submit("a1", "printf '%s\\n' " + " ".join(shlex.quote(t) for t in OUTPUT))
        self.job = job["job"]["id"]
        self.run = job["runs"][0]["id"]
        assert server.wait_job(self.job)["job"]["state"] == "success"
        self.lines = {ln["seq"]: ln["text"] for ln in server.log_lines(self.run)}
        assert sorted(self.lines.values()) == sorted(OUTPUT), self.lines
        self.console = Browserless(server)
        assert self.console.login("admin", admin_password(server)).status_code == 303

    def stored(self, reads: tuple[str, ...] = ()) -> dict[str, int]:
        """Row counts of the watched tables, audit events other than refusals (and `reads`,
        audited reads such as exports) and files kept."""
        with self.engine.connect() as conn:
            counts = {
                t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in WATCHED
            }
            counts["audit"] = conn.execute(
                text("SELECT count(*) FROM audit_event WHERE action NOT IN :refusals").bindparams(
                    bindparam("refusals", expanding=True)
                ),
                {"refusals": [*REFUSAL_EVENTS, *reads]},
            ).scalar_one()
        state = self.server.state_dir
        for folder in ("uploads", "fetched", "bundles"):
            counts[folder] = (
                sum(1 for _ in (state / folder).rglob("*")) if (state / folder).exists() else 0
            )
        return counts

    def healthy(self) -> None:
        """The server process lives and answers /healthz."""
        assert self.server.proc.alive(), self.server.proc.tail()
        resp = httpx.get(self.server.url + "/healthz", timeout=10)
        assert resp.status_code == 200 and resp.json() == {"status": "ok"}

    def close(self) -> None:
        self.console.close()
        self.engine.dispose()


@pytest.fixture(scope="module")
def live(
    start_module_server: ServerFactory,
    module_procs: Procs,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Live]:
    inventory = write(tmp_path_factory.mktemp("inventory") / "hosts.ini", INVENTORY)
    live = Live(start_module_server(inventory), module_procs, tmp_path_factory.mktemp("a1"))
    yield live
    live.close()


def _unchanged(live: Live, reads: tuple[str, ...] = ()) -> Iterator[Live]:
    before = live.stored(reads)
    yield live
    live.healthy()
    after = live.stored(reads)
    assert {k: (before[k], v) for k, v in after.items() if v != before[k]} == {}


@pytest.fixture
def unchanged(live: Live) -> Iterator[Live]:
    """The case stores nothing and leaves the server up."""
    yield from _unchanged(live)


@pytest.fixture
def unchanged_but_exports(live: Live) -> Iterator[Live]:
    """As `unchanged`, but an export answered is on the audit record, as every export is."""
    yield from _unchanged(live, ("export", "export.done"))


def message(resp: httpx.Response) -> str:
    """The refusal's message: the API's `error`, or a page's text."""
    if resp.headers.get("content-type", "").startswith("application/json"):
        return str(resp.json().get("error") or "")
    return html.unescape(resp.text)


def expect(resp: httpx.Response, status: int | tuple[int, ...], says: str, what: str) -> None:
    allowed = status if isinstance(status, tuple) else (status,)
    assert resp.status_code in allowed, (what, resp.status_code, resp.text[:500])
    said = message(resp)
    assert said.strip(), (what, "no message")
    assert says.lower() in said.lower(), (what, says, said[:500])


API_CASES = [*BODIES, *ENROL_TOKENS, *PLAYBOOKS, *FILES, *QUERIES, *HEADERS]


@pytest.mark.parametrize("case", API_CASES, ids=[c.id for c in API_CASES])
def test_api_refuses_bad_input(unchanged: Live, case: Case) -> None:
    live = unchanged
    headers: dict[str, Any] = {**live.server.http.headers, **case.headers}
    # raw bytes: httpx sends only ASCII text as is
    headers = {k: v.encode() if isinstance(v, str) else v for k, v in headers.items() if v != ""}
    if case.content is not None and "content-type" not in headers:
        headers["content-type"] = b"application/json"
    resp = httpx.request(
        case.method,
        live.server.url + case.path.format(run=live.run, job=live.job) + query(case.params or {}),
        json=case.json,
        content=case.content,
        headers=headers,
        timeout=60,
    )
    expect(resp, case.status, case.says, case.id)


def query(params: dict[str, str]) -> str:
    """A query string with every character percent-encoded as UTF-8 (a lone surrogate as the
    invalid bytes it would be), so text no client library would send still reaches the server."""
    if not params:
        return ""
    return "?" + "&".join(
        f"{k}={quote(v, safe='', errors='surrogatepass')}" for k, v in params.items()
    )


def form_bytes(fields: dict[str, str]) -> bytes:
    """A url-encoded form the same way (see `query`)."""
    return query(fields)[1:].encode()


@pytest.mark.parametrize(("path", "params"), CAPPED, ids=[p for p, _ in CAPPED])
def test_limits_past_the_most_are_capped(
    unchanged: Live, path: str, params: dict[str, str]
) -> None:
    """A limit past the most a page holds is answered with that most, not refused, not 500."""
    live = unchanged
    resp = live.server.http.get(path.format(run=live.run) + query(params))
    assert resp.status_code == 200, (path, resp.text[:300])


@pytest.mark.parametrize("pattern", PATTERNS, ids=range(len(PATTERNS)))
def test_bad_host_patterns_are_refused_everywhere(unchanged: Live, pattern: str) -> None:
    """A pattern that is malformed or matches nothing: 400 from jobs, hosts, playbooks' limit
    and the console's ad hoc form, naming the problem."""
    live = unchanged
    http = live.server.http
    console = live.console
    console.refresh_csrf()
    json_type = {"content-type": "application/json"}
    for resp in (
        http.post(
            "/api/jobs",
            content=_json_bytes({"pattern": pattern, "command": "1"}),
            headers=json_type,
        ),
        http.get("/api/hosts" + query({"pattern": pattern})),
        http.post(
            "/api/playbooks/run",
            content=_json_bytes(
                {"text": "hosts: all\ntasks:\n  - command: 'true'\n", "limit": pattern}
            ),
            headers=json_type,
        ),
        console.http.post(
            "/adhoc",
            content=form_bytes({"pattern": pattern, "command": "true", "csrf": console.csrf}),
            headers={"content-type": "application/x-www-form-urlencoded"},
        ),
    ):
        assert resp.status_code == 400, (pattern[:50], resp.request.url.path, resp.text[:300])
        assert message(resp).strip()


def _json_bytes(value: Any) -> bytes:
    """JSON as Python writes it, lone surrogates kept as escapes."""
    import json

    return json.dumps(value).encode()


@pytest.mark.parametrize("needle", SEARCHES, ids=range(len(SEARCHES)))
def test_search_boxes_take_text_not_syntax(unchanged_but_exports: Live, needle: str) -> None:
    """FTS syntax, quotes, operators, very long and broken text in every search box: an honest
    answer (no line that lacks the phrase) or a clear 4xx; never 500."""
    live = unchanged_but_exports
    http = live.server.http
    answers = [
        http.get("/api/runs" + query({"q": needle})),
        http.get(f"/api/runs/{live.run}/log" + query({"grep": needle})),
        http.get(f"/api/runs/{live.run}/search" + query({"q": needle})),
        http.get("/api/export" + query({"q": needle})),
        live.console.http.get("/runs" + query({"q": needle})),
    ]
    for resp in answers:
        if resp.status_code != 200:
            assert 400 <= resp.status_code < 500, (resp.request.url.path, resp.status_code)
            assert message(resp).strip(), resp.request.url.path
    runs, log, search = answers[0], answers[1], answers[2]
    holding = {seq for seq, line in live.lines.items() if needle in line}
    if log.status_code == 200:  # exactly the lines holding the phrase as typed
        assert {ln["seq"] for ln in log.json()["lines"]} == holding, needle
    if search.status_code == 200:  # ignoring case: never a line without it
        for match in search.json()["matches"]:
            assert needle.lower() in live.lines[match["seq"]].lower(), (needle, match)
    if runs.status_code == 200 and holding and any(c.isalnum() for c in needle):
        # the runs list finds words (on SQLite through its full-text index): punctuation alone
        # finds nothing there, never more
        assert live.run in [r["id"] for r in runs.json()["runs"]], needle


@pytest.mark.parametrize("needle", SEARCH_NUL, ids=range(len(SEARCH_NUL)))
def test_search_with_nul_is_refused(unchanged: Live, needle: str) -> None:
    live = unchanged
    http = live.server.http
    for resp in (
        http.get("/api/runs" + query({"q": needle})),
        http.get(f"/api/runs/{live.run}/log" + query({"grep": needle})),
        http.get(f"/api/runs/{live.run}/search" + query({"q": needle})),
        http.get("/api/export" + query({"q": needle})),
        live.console.http.get("/runs" + query({"q": needle})),
    ):
        assert resp.status_code == 400 and "NUL" in message(resp), resp.request.url.path


@pytest.mark.parametrize("name", list(RAW_HEADERS), ids=list(RAW_HEADERS))
def test_malformed_requests_on_the_wire_are_refused(unchanged: Live, name: str) -> None:
    """Bytes no client library sends (CR, NUL, folded or huge headers, a TLS hello on the HTTP
    port): a 4xx answer or a closed connection, and the server keeps serving."""
    live = unchanged
    host, port = live.server.url.removeprefix("http://").rstrip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        try:
            sock.sendall(RAW_HEADERS[name])
        except OSError:
            return  # closed before all was read: refused
        reply = b""
        try:
            while chunk := sock.recv(65536):
                reply += chunk
                if b"\r\n\r\n" in reply:
                    break
        except OSError:
            pass
    if reply:
        status = int(reply.split(b" ", 2)[1])
        assert 400 <= status < 500, reply[:300]


@pytest.mark.parametrize("form", FORMS, ids=[f.id for f in FORMS])
def test_console_forms_refuse_bad_fields(unchanged: Live, form: Form) -> None:
    """The console's forms, posted as a browser would (its session's CSRF token from the page)."""
    live = unchanged
    console = live.console
    console.refresh_csrf()
    fields = dict(form.fields)
    if form.csrf == "session":
        fields["csrf"] = console.csrf
    elif form.csrf is not None:
        fields["csrf"] = form.csrf
    content = (
        form_bytes(fields) if form.content is None else form.content + b"&" + form_bytes(fields)
    )
    resp = console.http.post(
        form.path, content=content, headers={"content-type": "application/x-www-form-urlencoded"}
    )
    expect(resp, form.status, form.says, form.id)


@pytest.mark.parametrize("form", LOGIN_FORMS, ids=[f.id for f in LOGIN_FORMS])
def test_sign_in_form_refuses_bad_fields(unchanged: Live, form: Form) -> None:
    """The sign-in form with a fresh session: its token read from the form first."""
    live = unchanged
    client = httpx.Client(base_url=live.server.url, timeout=30, follow_redirects=False)
    try:
        page = client.get("/login")
        token = FIELD_CSRF.search(page.text)
        assert token, page.text
        fields = dict(form.fields)
        if form.csrf == "session":
            fields["csrf"] = token.group(1)
        resp = client.post(
            form.path,
            content=form_bytes(fields),
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        expect(
            resp,
            (*((form.status,) if isinstance(form.status, int) else form.status), 429),
            form.says if resp.status_code != 429 else "",
            form.id,
        )
    finally:
        client.close()


# -- the agent port --------------------------------------------------------------------------


class _Peer(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return False  # the scheduler needs no password here: the hello is the test


async def _say_hello(
    addr: str, version_name: str | None, reply: bytes, key: asyncssh.SSHKey
) -> None:
    """Dial the agent port as an agent would and answer the scheduler's hello with `reply`."""
    host, port = addr.rsplit(":", 1)

    async def answer(process: asyncssh.SSHServerProcess[bytes]) -> None:
        await process.stdin.readline()
        if reply:
            process.stdout.write(reply)
        process.exit(0)

    version = f"EasyTaskAgent_0.1.0 {version_name}" if version_name else "OpenSSH_9.6"
    try:
        conn = await asyncssh.connect_reverse(
            host,
            int(port),
            server_factory=_Peer,
            server_host_keys=[key],
            process_factory=answer,
            encoding=None,
            server_version=version,
            config=None,
            login_timeout=20,
            connect_timeout=10,
        )
    except (OSError, asyncssh.Error):
        return  # refused during key exchange
    async with asyncio.timeout(30):
        await conn.wait_closed()


@pytest.mark.parametrize("case", HELLOS, ids=[h.id for h in HELLOS])
def test_agent_port_refuses_bad_hellos(unchanged: Live, case: Hello) -> None:
    """A peer with a crafted hello is refused with the reason listed (`/api/agents` → refused)
    and audited as `agent.refused`; no agent record is made."""
    live = unchanged
    name = f"h-{case.id}" if case.version_name in ("same", None) else case.version_name
    key = asyncssh.generate_private_key("ssh-ed25519")
    fingerprint = key.get_fingerprint("sha256")
    version_name = None if case.version_name is None else name
    asyncio.run(_say_hello(live.server.agents_addr, version_name, hello_bytes(case, name), key))

    def refusal() -> dict[str, Any] | None:
        found = [
            r for r in live.server.get("/api/agents")["refused"] if r["fingerprint"] == fingerprint
        ]
        return found[-1] if found else None

    refused = wait_until(refusal, timeout=20, what=f"refusal of {case.id}")
    assert case.says.lower() in refused["reason"].lower(), refused
    assert all(a["name"] != name for a in live.server.get("/api/agents")["agents"])
