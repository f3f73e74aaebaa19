"""The live events viewers receive (hub, other servers, SSE): one builder per kind."""

from __future__ import annotations

from typing import Any


def line(
    run_id: int, host: str | None, seq: int, ts: float, stream: str, level: str, text: str
) -> dict[str, Any]:
    """One output line of a run (`host` None: the form a browser is sent, which names none)."""
    if host is None:
        return {
            "t": "line",
            "run": run_id,
            "seq": seq,
            "ts": ts,
            "stream": stream,
            "level": level,
            "text": text,
        }
    return {
        "t": "line",
        "run": run_id,
        "host": host,
        "seq": seq,
        "ts": ts,
        "stream": stream,
        "level": level,
        "text": text,
    }


def run_state(run_id: int | None, host: str, state: str) -> dict[str, Any]:
    """A run moved to a new state (dispatched, running…)."""
    return {"t": "run", "run": run_id, "host": host, "state": state}


def run_finished(
    run_id: int | None,
    host: str,
    state: str,
    *,
    reason: str,
    exit_code: int | None,
    duration: float | None,
    seq: int,
) -> dict[str, Any]:
    """A run reached its final state; `seq` is its last output line's."""
    return {
        "t": "run",
        "run": run_id,
        "host": host,
        "state": state,
        "reason": reason,
        "exit_code": exit_code,
        "duration": duration,
        "seq": seq,
    }


def run_row(row: dict[str, Any]) -> dict[str, Any]:
    """A run's whole stored row (as `store.serialize.run_dict` gives it), sent when a stream
    starts or catches up."""
    return {"t": "run", **row}


def run_end(run_id: int, state: str, exit_code: int | None) -> dict[str, Any]:
    """The last event of one run's stream: it ended, nothing follows."""
    return {"t": "end", "run": run_id, "state": state, "exit_code": exit_code}


def job_state(job_id: int, state: str) -> dict[str, Any]:
    """A job reached its final state."""
    return {"t": "job", "job": job_id, "state": state}


def job_notice(job_id: int | None, text: str) -> dict[str, Any]:
    """Something that concerns every run of a job (a playbook stopped, …)."""
    return {"t": "notice", "job": job_id, "text": text}


def run_notice(run_id: int, host: str, text: str) -> dict[str, Any]:
    """Something about one run's output that is not a line of it."""
    return {"t": "notice", "run": run_id, "host": host, "text": text}


def agent_state(name: str, state: str) -> dict[str, Any]:
    """An agent's status changed (online, offline, pending, revoked…)."""
    return {"t": "agent", "name": name, "state": state}
