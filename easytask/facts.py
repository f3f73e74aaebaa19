"""Host facts: read from a host's own files, named in templates as Ansible names them (pure code).

An agent reads its own host (easytask.agent.facts) and reports them in its hello; an agentless host
runs `GATHER_COMMAND` once per job (when the playbook names a fact) and `parse_gathered` reads
its output into the same fields. `fact_vars` turns those fields into the variables templates
see: `ansible_facts` and the usual `ansible_hostname`, `ansible_distribution`, ...
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "FACT_VARIABLES",
    "GATHER_COMMAND",
    "fact_vars",
    "meminfo_mb",
    "os_release",
    "parse_gathered",
    "release_fields",
    "uses_facts",
]

# One command, plain POSIX sh: uname, hostnames, CPUs, then os-release and meminfo.
GATHER_COMMAND = (
    "uname -s; uname -r; uname -m; hostname; hostname -f 2>/dev/null || hostname; "
    "getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1; echo ---; "
    "cat /etc/os-release 2>/dev/null; echo ---; "
    "grep -E '^(MemTotal|SwapTotal):' /proc/meminfo 2>/dev/null; true"
)

# Ansible's `distribution` and `os_family` for the os-release ids it knows best.
_DISTRIBUTIONS = {
    "debian": "Debian", "ubuntu": "Ubuntu", "centos": "CentOS", "rhel": "RedHat",
    "fedora": "Fedora", "rocky": "Rocky", "almalinux": "AlmaLinux", "amzn": "Amazon",
    "alpine": "Alpine", "arch": "Archlinux", "opensuse-leap": "openSUSE Leap",
    "sles": "SLES", "ol": "OracleLinux", "linuxmint": "Linux Mint", "raspbian": "Debian",
}  # fmt: skip
_FAMILIES = {
    "debian": "Debian", "ubuntu": "Debian", "linuxmint": "Debian", "raspbian": "Debian",
    "rhel": "RedHat", "centos": "RedHat", "fedora": "RedHat", "rocky": "RedHat",
    "almalinux": "RedHat", "amzn": "RedHat", "ol": "RedHat", "alpine": "Alpine",
    "arch": "Archlinux", "opensuse-leap": "Suse", "sles": "Suse",
}  # fmt: skip

# The fact names (after `ansible_`) that `fact_vars` gives.
_NAMES = (
    "facts", "hostname", "nodename", "fqdn", "system", "kernel", "architecture", "machine",
    "distribution", "distribution_version", "distribution_major_version",
    "distribution_release", "os_family", "processor_vcpus", "memtotal_mb", "swaptotal_mb",
    "python_version",
)  # fmt: skip
_USES = re.compile(r"\bansible_(?:" + "|".join(_NAMES) + r")\b")
FACT_VARIABLES = tuple(f"ansible_{name}" for name in _NAMES)


def uses_facts(text: str) -> bool:
    """Whether a playbook's text names a fact (so agentless hosts gather them for its job)."""
    return _USES.search(text) is not None


def os_release(text: str) -> dict[str, str]:
    """The KEY=value pairs of an /etc/os-release text, quotes removed."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.isidentifier():
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            out[key] = value
    return out


def meminfo_mb(text: str) -> dict[str, int]:
    """`memtotal_mb` and `swaptotal_mb` from a /proc/meminfo text."""
    out = {}
    for line in text.splitlines():
        match = re.match(r"(MemTotal|SwapTotal):\s+(\d+)\s*kB", line)
        if match:
            out["memtotal_mb" if match[1] == "MemTotal" else "swaptotal_mb"] = int(match[2]) // 1024
    return out


def release_fields(release: Mapping[str, str]) -> dict[str, Any]:
    """The facts an os-release mapping gives: distribution (its pretty name), os_id, ..."""
    return {
        "distribution": release.get("PRETTY_NAME", ""),
        "os_id": release.get("ID", ""),
        "os_version": release.get("VERSION_ID", ""),
        "os_codename": release.get("VERSION_CODENAME", ""),
        "os_like": release.get("ID_LIKE", ""),
        "os_name": release.get("NAME", ""),
    }


def parse_gathered(output: str) -> dict[str, Any]:
    """The facts in the output of `GATHER_COMMAND` (fields it lacks are left out)."""
    head, _, rest = output.partition("\n---\n")
    release_text, _, memory_text = rest.partition("\n---\n")
    lines = head.splitlines() + [""] * 6
    system, kernel, arch, name, fqdn, cpus = (line.strip() for line in lines[:6])
    facts: dict[str, Any] = {
        "hostname": name,
        "fqdn": fqdn or name,
        "system": system,
        "kernel": kernel,
        "os": f"{system} {kernel}".strip(),
        "arch": arch,
        "cpus": int(cpus) if cpus.isdigit() else 1,
        **release_fields(os_release(release_text)),
        **meminfo_mb(memory_text),
    }
    return {k: v for k, v in facts.items() if v not in ("", None)}


def fact_vars(facts: Mapping[str, Any]) -> dict[str, Any]:
    """Template variables from a host's facts: `ansible_facts` (names without the prefix) and
    each of them as `ansible_<name>`, as Ansible sets them after gathering. Empty without facts."""
    if not facts or not facts.get("hostname"):
        return {}
    os_id = str(facts.get("os_id") or "")
    like = str(facts.get("os_like") or "").split()
    version = str(facts.get("os_version") or "")
    hostname = str(facts["hostname"])
    found: dict[str, Any] = {
        "hostname": hostname.split(".")[0],
        "nodename": hostname,
        "fqdn": facts.get("fqdn") or hostname,
        "system": facts.get("system") or str(facts.get("os") or "").split(" ")[0],
        "kernel": facts.get("kernel") or "",
        "architecture": facts.get("arch") or "",
        "machine": facts.get("arch") or "",
        "distribution": _DISTRIBUTIONS.get(os_id) or facts.get("os_name") or os_id,
        "distribution_version": version,
        "distribution_major_version": version.split(".")[0],
        "distribution_release": facts.get("os_codename") or "",
        "os_family": _FAMILIES.get(os_id)
        or next((_FAMILIES[i] for i in like if i in _FAMILIES), None)
        or _DISTRIBUTIONS.get(os_id)
        or os_id,
        "processor_vcpus": facts.get("cpus") or 1,
    }
    for name in ("memtotal_mb", "swaptotal_mb"):
        if isinstance(facts.get(name), int):
            found[name] = facts[name]
    if facts.get("python"):
        found["python_version"] = facts["python"]
    return {"ansible_facts": dict(found), **{f"ansible_{k}": v for k, v in found.items()}}
