"""Process metrics in the Prometheus text format: counters kept here, gauges read at scrape time."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from easytask.store.models import Run, as_utc

# Per-agent gauges from each agent's newest host sample: (sample field, metric name, help).
HOST_GAUGES = (
    ("cpu", "easytask_agent_cpu_percent", "CPU busy over the agent's last sample interval."),
    ("iowait", "easytask_agent_iowait_percent", "CPU waiting for I/O over that interval."),
    ("load1", "easytask_agent_load1", "1-minute load average of the agent's host."),
    ("load5", "easytask_agent_load5", "5-minute load average of the agent's host."),
    ("load15", "easytask_agent_load15", "15-minute load average of the agent's host."),
    ("mem_used", "easytask_agent_memory_used_bytes", "Memory in use (total minus available)."),
    ("mem_available", "easytask_agent_memory_available_bytes", "Memory available."),
    ("swap_used", "easytask_agent_swap_used_bytes", "Swap in use."),
    ("disk_root_pct", "easytask_agent_disk_root_used_percent", "Use of the file system of /."),
    (
        "disk_work_pct",
        "easytask_agent_disk_work_used_percent",
        "Use of the file system of the agent's working directory.",
    ),
    (
        "net_rx",
        "easytask_agent_network_receive_bytes_per_second",
        "Bytes received per second (all interfaces but loopback).",
    ),
    (
        "net_tx",
        "easytask_agent_network_transmit_bytes_per_second",
        "Bytes sent per second (all interfaces but loopback).",
    ),
    ("procs", "easytask_agent_processes", "Processes on the agent's host."),
    ("t", "easytask_agent_sample_timestamp_seconds", "When the agent took its newest sample."),
)

# Seconds from queued to started: a healthy dispatch takes milliseconds, a waiting one minutes.
DISPATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)


@dataclass
class Histogram:
    """Cumulative buckets, a sum and a count, as Prometheus expects them."""

    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        """Count one value."""
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        """The histogram's sample lines."""
        out = [
            f'{name}_bucket{{le="{_num(b)}"}} {c}'
            for b, c in zip(self.buckets, self.counts, strict=True)
        ]
        out.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        out.append(f"{name}_sum {_num(self.total)}")
        out.append(f"{name}_count {self.count}")
        return out


@dataclass
class Snapshot:
    """What is read from the store and the live objects at scrape time."""

    agents: Mapping[str, int]  # by status: online, unreachable, pending, revoked
    runs: Mapping[str, int]  # by state
    log_lines: int
    sse_viewers: int
    # each agent's newest host sample of the last minutes: name -> {t, field: value or None}
    hosts: Mapping[str, Mapping[str, float | None]] = field(default_factory=dict)


class Metrics:
    """Counters the engine and the notifier feed while the server runs."""

    def __init__(self) -> None:
        self.dispatch_latency = Histogram(DISPATCH_BUCKETS)
        self.jobs_finished: dict[str, int] = {}
        self.webhook_attempts: dict[str, int] = {}

    def run_started(self, run: Run) -> None:
        """Observe the time a run waited between queued and started."""
        if run.started_at is None or run.created_at is None:
            return
        waited = (as_utc(run.started_at) - as_utc(run.created_at)).total_seconds()
        self.dispatch_latency.observe(max(waited, 0.0))

    def job_finished(self, state: str) -> None:
        """Count a finished job by its final state."""
        self.jobs_finished[state] = self.jobs_finished.get(state, 0) + 1

    def webhook_attempt(self, ok: bool) -> None:
        """Count one webhook delivery attempt."""
        key = "ok" if ok else "error"
        self.webhook_attempts[key] = self.webhook_attempts.get(key, 0) + 1

    def render(self, snap: Snapshot, agent_states: Iterable[str], run_states: Iterable[str]) -> str:
        """The whole exposition, every family with HELP and TYPE."""
        out: list[str] = []

        def family(name: str, kind: str, text: str) -> None:
            out.append(f"# HELP {name} {text}")
            out.append(f"# TYPE {name} {kind}")

        family("easytask_agents", "gauge", "Known agents by status.")
        for state in agent_states:
            out.append(f'easytask_agents{{state="{state}"}} {snap.agents.get(state, 0)}')
        family("easytask_runs", "gauge", "Runs in the store by state.")
        for state in run_states:
            out.append(f'easytask_runs{{state="{state}"}} {snap.runs.get(state, 0)}')
        family("easytask_queue_depth", "gauge", "Runs queued and not yet started.")
        out.append(f"easytask_queue_depth {snap.runs.get('queued', 0)}")
        family(
            "easytask_dispatch_latency_seconds",
            "histogram",
            "Time from a run being queued to its command starting.",
        )
        out.extend(self.dispatch_latency.lines("easytask_dispatch_latency_seconds"))
        family(
            "easytask_log_lines_ingested_total",
            "counter",
            "Log lines (output and system) written to the store by this process.",
        )
        out.append(f"easytask_log_lines_ingested_total {snap.log_lines}")
        family("easytask_sse_viewers", "gauge", "Live log and job viewers connected now.")
        out.append(f"easytask_sse_viewers {snap.sse_viewers}")
        family(
            "easytask_jobs_finished_total", "counter", "Jobs finished by this process, by state."
        )
        for state, n in sorted(self.jobs_finished.items()):
            out.append(f'easytask_jobs_finished_total{{state="{state}"}} {n}')
        family(
            "easytask_webhook_attempts_total",
            "counter",
            "Webhook delivery attempts by outcome.",
        )
        for outcome in ("ok", "error"):
            out.append(
                f'easytask_webhook_attempts_total{{outcome="{outcome}"}} '
                f"{self.webhook_attempts.get(outcome, 0)}"
            )
        for key, name, text in HOST_GAUGES:
            values = [
                (a, float(v))
                for a, s in sorted(snap.hosts.items())
                if (v := s.get(key)) is not None
            ]
            if not values:
                continue
            family(name, "gauge", text)
            out.extend(f'{name}{{agent="{_label(a)}"}} {_num(v)}' for a, v in values)
        return "\n".join(out) + "\n"


def _label(value: str) -> str:
    """A label value escaped as the text format asks (agent names need none; to be sure)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(value: float) -> str:
    if math.isinf(value):
        return "+Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))
