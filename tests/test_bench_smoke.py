"""The fan-out benchmark starts, measures and cleans up; its figures are not checked here."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


@pytest.mark.slow
def test_fanout_quick_prints_a_row_and_leaves_nothing_running(tmp_path: Path) -> None:
    """`fanout.py --quick --sizes 5 --no-ansible` exits 0, prints N=5 with a positive time, cleans up."""
    work = tmp_path / "work"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "fanout.py"),
            "--quick",
            "--sizes",
            "5",
            "--no-ansible",
            "--workdir",
            str(work),
            "--json",
            str(tmp_path / "fanout.json"),
        ],
        capture_output=True,
        text=True,
        timeout=110,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    row = re.search(r"^\s*5\s+(\d+\.\d+)\s", result.stdout, re.M)
    assert row is not None, result.stdout
    assert float(row.group(1)) > 0
    data = json.loads((tmp_path / "fanout.json").read_text())
    assert [r["n"] for r in data["rows"]] == [5]
    assert data["rows"][0]["agents"][0] > 0
    assert not _processes_mentioning(str(work))
    assert list(work.iterdir()) == []
