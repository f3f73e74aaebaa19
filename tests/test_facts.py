"""Host facts: os-release and gathered output read into fields, and the Ansible names they get."""

from __future__ import annotations

import platform
import socket
import subprocess

import pytest

from easytask.agent.facts import local_facts
from easytask.facts import (
    FACT_VARIABLES,
    GATHER_COMMAND,
    fact_vars,
    os_release,
    parse_gathered,
    uses_facts,
)

DEBIAN = """\
PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
"""
ROCKY = 'NAME="Rocky Linux"\nVERSION_ID="9.3"\nID="rocky"\nID_LIKE="rhel centos fedora"\n'
UNKNOWN = 'NAME="Acme OS"\nVERSION_ID=3.1\nID=acme\nID_LIKE="debian"\n'


def test_os_release_reads_quoted_and_bare_values() -> None:
    assert os_release(DEBIAN + "# comment\nBROKEN LINE\n=x\n") == {
        "PRETTY_NAME": "Debian GNU/Linux 12 (bookworm)",
        "NAME": "Debian GNU/Linux",
        "VERSION_ID": "12",
        "VERSION": "12 (bookworm)",
        "VERSION_CODENAME": "bookworm",
        "ID": "debian",
    }


def test_gathered_output_becomes_the_fields_an_agent_reports() -> None:
    output = (
        "Linux\n6.1.0-18-amd64\nx86_64\nweb1.example.com\nweb1.example.com\n8\n---\n"
        + DEBIAN
        + "---\nMemTotal:       16318420 kB\nSwapTotal:       1000448 kB\n"
    )
    assert parse_gathered(output) == {
        "hostname": "web1.example.com",
        "fqdn": "web1.example.com",
        "system": "Linux",
        "kernel": "6.1.0-18-amd64",
        "os": "Linux 6.1.0-18-amd64",
        "arch": "x86_64",
        "cpus": 8,
        "distribution": "Debian GNU/Linux 12 (bookworm)",
        "os_id": "debian",
        "os_version": "12",
        "os_codename": "bookworm",
        "os_name": "Debian GNU/Linux",
        "memtotal_mb": 15935,
        "swaptotal_mb": 977,
    }


@pytest.mark.parametrize(
    ("release", "expected"),
    [
        (DEBIAN, ("Debian", "12", "12", "bookworm", "Debian")),
        (ROCKY, ("Rocky", "9.3", "9", "", "RedHat")),
        (UNKNOWN, ("Acme OS", "3.1", "3", "", "Debian")),
    ],
)
def test_fact_variables_use_ansibles_names(release: str, expected: tuple[str, ...]) -> None:
    facts = parse_gathered(f"Linux\n6.1\naarch64\ndb1.lan\ndb1.lan\n4\n---\n{release}---\n")
    found = fact_vars(facts)
    got = tuple(
        found[f"ansible_{k}"]
        for k in (
            "distribution",
            "distribution_version",
            "distribution_major_version",
            "distribution_release",
            "os_family",
        )
    )
    assert got == expected
    assert (found["ansible_hostname"], found["ansible_nodename"]) == ("db1", "db1.lan")
    assert (found["ansible_architecture"], found["ansible_processor_vcpus"]) == ("aarch64", 4)
    assert found["ansible_facts"]["distribution"] == expected[0]
    assert set(found) <= set(FACT_VARIABLES)


def test_no_facts_no_variables() -> None:
    assert fact_vars({}) == {}
    assert fact_vars({"load": [0.1]}) == {}  # an old agent's record without a hostname


def test_uses_facts_looks_for_fact_names_only() -> None:
    assert uses_facts("echo {{ ansible_hostname }}")
    assert uses_facts("when: ansible_facts.os_family == 'Debian'")
    assert not uses_facts("echo {{ ansible_host }} {{ ansible_user }} {{ ansible_hostnames }}")


def test_gathering_here_agrees_with_this_host() -> None:
    """The gather command, run by a real shell here, reads what the agent reads here."""
    out = subprocess.run(["sh", "-c", GATHER_COMMAND], capture_output=True, text=True, check=True)
    gathered, local = parse_gathered(out.stdout), local_facts()
    assert gathered["hostname"] == local["hostname"] == socket.gethostname()
    assert gathered["kernel"] == local["kernel"] == platform.release()
    for key in ("arch", "cpus", "os_id", "os_version", "memtotal_mb", "distribution"):
        assert gathered.get(key) == local.get(key), key
