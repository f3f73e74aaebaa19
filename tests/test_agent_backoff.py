"""An agent's reconnect backoff while its server is not listening (killed, starting again)."""

from __future__ import annotations

import re
import time
from datetime import datetime
from pathlib import Path

from easytask.agent.link import REFUSED_BACKOFF_MAX, Backoff, NoServerListening, no_server
from tests.conftest import AgentFactory, ServerFactory
from tests.support import free_port, wait_until

STAMP = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) WARNING easytask\.agent: cannot connect"
)
TRIES = 8  # with a backoff doubling from 0.5 s to --backoff-max 60 s the 8th would come after 32 s


def refused_tries(log: Path, since: int) -> list[float]:
    """The times of the agent's failed connection tries logged after byte `since` of its log."""
    text = log.read_bytes()[since:].decode(errors="replace")
    return [
        datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        for m in (STAMP.match(line) for line in text.splitlines())
        if m
    ]


def test_agent_retries_soon_while_no_server_listens(
    start_server: ServerFactory, start_agent: AgentFactory
) -> None:
    """kill -9 of the server, its port left closed: the agent (`--backoff-max 60`) keeps trying
    at least every REFUSED_BACKOFF_MAX x 1.5 s (a try costs nobody anything while nothing
    listens), and is online again soon after the server is started again on the port."""
    agents_addr = f"127.0.0.1:{free_port()}"
    server = start_server(agents=agents_addr)
    agent = start_agent(server, "back1", "--backoff-max", "60")
    since = agent.log_path.stat().st_size
    server.proc.kill9()
    wait_until(
        lambda: len(refused_tries(agent.log_path, since)) >= TRIES,
        timeout=60,
        what=f"{TRIES} refused connection tries",
    )
    tries = refused_tries(agent.log_path, since)
    gaps = [b - a for a, b in zip(tries, tries[1:], strict=False)]
    # the jitter is at most 1.5 x the backoff; a second more for the try itself
    assert max(gaps) < REFUSED_BACKOFF_MAX * 1.5 + 1, gaps
    server2 = start_server(state_dir=server.state_dir, agents=agents_addr)
    up = time.monotonic()
    wait_until(lambda: server2.agent_status("back1") == "online", timeout=30, what="online")
    assert time.monotonic() - up < REFUSED_BACKOFF_MAX * 1.5 + 5


def test_backoff_is_short_only_while_no_server_listens() -> None:
    """Doubling up to --backoff-max after timeouts; at most REFUSED_BACKOFF_MAX (x 1.5 jitter)
    as soon as a try is refused, also right after long waits; from the shortest after a reset."""
    backoff = Backoff(0.5, 60.0)
    waits = [backoff.next_delay(refused=False) for _ in range(12)]
    assert 0.25 <= waits[0] <= 0.75 and max(waits[-3:]) >= 30
    assert all(backoff.next_delay(refused=True) <= REFUSED_BACKOFF_MAX * 1.5 for _ in range(20))
    assert backoff.next_delay(refused=False) <= 2 * REFUSED_BACKOFF_MAX * 1.5
    backoff.reset()
    assert backoff.next_delay(refused=False) <= 0.75
    refused = ConnectionRefusedError(111, "Connect call failed")
    assert isinstance(no_server([("a:1", refused), ("b:2", refused)]), NoServerListening)
    mixed = no_server([("a:1", refused), ("b:2", TimeoutError())])
    assert not isinstance(mixed, NoServerListening) and "b:2: TimeoutError" in str(mixed)
