"""The job page's grouped view read from a real store: bounded, retries counted once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from easytask.store.db import Store, sqlite_url
from easytask.store.models import Job, Run
from easytask.web.grouped import GROUP_BUDGET, job_groups, shown
from tests.support import PostgresCluster


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "postgres":
        cluster: PostgresCluster = request.getfixturevalue("postgres")
        url = cluster.new_database(empty=True)
    else:
        url = sqlite_url(tmp_path / "easytask.db")
    st = Store(url)
    st.create_schema()
    yield st
    st.close()


def test_a_big_job_compares_fewer_lines_per_host_and_says_so(store: Store) -> None:
    """2,000 hosts of 60 lines: 50 lines each are compared (the page's line budget), every host
    is marked as having more, and hosts alike up to there fold into one group."""
    hosts = 2000
    runs = [Run(host=f"n{i:04d}", command="x", state="success", exit_code=0) for i in range(hosts)]
    _, runs = store.create_job(Job(command="x"), runs)
    rows = []
    for run in runs:
        last = f"differs {run.host}"
        rows += [(run.id or 0, n, 1.0, "stdout", "INFO", str(n)) for n in range(1, 60)]
        rows.append((run.id or 0, 60, 1.0, "stdout", "INFO", last))
    store.write_lines(rows)
    view = job_groups(store, store.job_runs(runs[0].job_id or 0))
    assert view.lines == GROUP_BUDGET // hosts == 50
    assert (view.hosts, view.cut_hosts, view.left_out) == (hosts, hosts, 0)
    (group,) = view.groups
    assert group["hosts_text"] == "n[0000:1999]" and group["cut"]
    assert group["stdout"] == [str(n) for n in range(1, 51)]


def test_last_attempts_and_visible_controls(store: Store) -> None:
    """A retried run counts by its last attempt; control characters come out as \\x1b."""
    job = Job(kind="playbook", command="p.yml")
    runs = [
        Run(host="a", task="t", command="x", state="failed", exit_code=1, attempt=1),
        Run(host="a", task="t", command="x", state="success", exit_code=0, attempt=2),
        Run(host="b", task="t", command="x", state="success", exit_code=0),
    ]
    _, runs = store.create_job(job, runs)
    store.write_lines(
        [(r.id or 0, 1, 1.0, "stdout", "INFO", "ok \x1b[2J") for r in runs]
        + [(runs[0].id or 0, 2, 1.0, "stderr", "WARN", "first try failed")]
    )
    view = job_groups(store, store.job_runs(runs[0].job_id or 0))
    assert [(g["hosts"], g["state"], g["stdout"]) for g in view.groups] == [
        (["a", "b"], "success", ["ok \\x1b[2J"])
    ]
    assert shown("x" * 2500) == "x" * 2000 + "…"
