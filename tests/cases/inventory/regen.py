"""Regenerate the golden files of the inventory cases from a real Ansible (not needed by the tests).

    python3 -m venv /tmp/ansible-venv && /tmp/ansible-venv/bin/pip install ansible-core
    python tests/cases/inventory/regen.py /tmp/ansible-venv/bin [CASE ...]

For each case directory with a case.json ({"sources": [...], "graph": [...], "patterns": [...]}),
this writes expected/list.json (`ansible-inventory --list`), list.yaml (`--list --yaml`),
list-export.json and list-export.yaml (`--export`), host-localhost.json (`--host localhost`, for
a case whose patterns name localhost), expected/graph-GROUP.txt and
expected/graph-GROUP-vars.txt (`--graph [--vars]`) and expected/patterns.json (the hosts of
`ansible PATTERN --list-hosts`). Patterns that Ansible cannot match, or whose order Ansible does
not keep from one run to the next, are reported and left out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = 3  # Ansible's host order can vary between runs; patterns must give the same order each time


def ansible(bindir: Path, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as home:
        env = dict(
            os.environ, ANSIBLE_HOME=home, ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="0"
        )
        return subprocess.run(
            [str(bindir / tool), *args],
            capture_output=True,
            text=True,
            cwd=home,
            env=env,
            check=False,
        )


def source_args(case: Path, sources: list[str]) -> list[str]:
    out = []
    for source in sources:
        out += ["-i", source if "," in source else str(case / source)]
    return out


def list_hosts(bindir: Path, inv: list[str], pattern: str) -> list[str] | None:
    done = ansible(bindir, "ansible", *inv, pattern, "--list-hosts")
    if done.returncode != 0 or "Could not match" in done.stderr or "hosts (0)" in done.stdout:
        return None
    return [line.strip() for line in done.stdout.splitlines()[1:] if line.strip()]


def regen(bindir: Path, case: Path) -> None:
    spec = json.loads((case / "case.json").read_text())
    inv = source_args(case, spec["sources"])
    expected = case / "expected"
    expected.mkdir(exist_ok=True)
    done = ansible(bindir, "ansible-inventory", *inv, "--list")
    if done.returncode != 0:
        sys.exit(f"{case.name}: ansible-inventory failed:\n{done.stderr}")
    (expected / "list.json").write_text(done.stdout)
    for extra, name in (
        (["--yaml"], "list.yaml"),
        (["--export"], "list-export.json"),
        (["--export", "--yaml"], "list-export.yaml"),
    ):
        done = ansible(bindir, "ansible-inventory", *inv, "--list", *extra)
        (expected / name).write_text(done.stdout)
    if "localhost" in spec.get("patterns", []):  # the implicit localhost's variables
        done = ansible(bindir, "ansible-inventory", *inv, "--host", "localhost")
        (expected / "host-localhost.json").write_text(done.stdout)
    for group in spec.get("graph", []):
        for extra, suffix in (([], ""), (["--vars"], "-vars")):
            done = ansible(bindir, "ansible-inventory", *inv, "--graph", group, *extra)
            (expected / f"graph-{group}{suffix}.txt").write_text(done.stdout)
    results: dict[str, list[str]] = {}
    for pattern in spec.get("patterns", []):
        seen = [list_hosts(bindir, inv, pattern) for _ in range(RUNS)]
        if seen[0] is None:
            print(f"{case.name}: {pattern!r}: Ansible matches no hosts; left out")
        elif any(s != seen[0] for s in seen):
            print(f"{case.name}: {pattern!r}: Ansible's order varies ({seen}); left out")
        else:
            results[pattern] = seen[0]
    (expected / "patterns.json").write_text(json.dumps(results, indent=4) + "\n")


def main() -> None:
    bindir, only = Path(sys.argv[1]), set(sys.argv[2:])
    for case in sorted(p for p in HERE.iterdir() if (p / "case.json").is_file()):
        if only and case.name not in only:
            continue
        regen(bindir, case)
        print(f"{case.name}: done")


if __name__ == "__main__":
    main()
