"""The harness shared by the tests and the benchmarks: processes, servers, agents, sshd, PostgreSQL."""

from tests.support.pg import PostgresCluster
from tests.support.procs import (
    REPO,
    Proc,
    Procs,
    WaitTimeout,
    children_of,
    cmdline,
    easytask_cli,
    easytask_cmd,
    free_port,
    wait_until,
)
from tests.support.servers import (
    FINAL_STATES,
    ServerHandle,
    db_execute,
    launch_agent,
    launch_server,
    user_client,
)
from tests.support.sshd import SSHD, SSHD_BIN, start_sshd

__all__ = [
    "FINAL_STATES",
    "REPO",
    "SSHD",
    "SSHD_BIN",
    "PostgresCluster",
    "Proc",
    "Procs",
    "ServerHandle",
    "WaitTimeout",
    "children_of",
    "cmdline",
    "db_execute",
    "easytask_cli",
    "easytask_cmd",
    "free_port",
    "launch_agent",
    "launch_server",
    "start_sshd",
    "user_client",
    "wait_until",
]
