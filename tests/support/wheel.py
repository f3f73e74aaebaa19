"""The project's wheel, installed into fresh virtual environments as a user would install it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.procs import REPO

# nothing inherited (PYTHONPATH, the development venv) may reach the installed program
CLEAN_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}


def build_wheel(into: Path) -> Path:
    """`pip wheel` of the tree, without its dependencies (hatchling from this venv: offline)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + ["-w", str(into), str(REPO)],
        check=True,
        timeout=300,
    )
    (wheel,) = into.glob("easytask-*.whl")
    return wheel


def install_venv(venv: Path, requirement: str) -> Path:
    """A fresh venv holding `requirement` (the wheel's path, with `[extras]` or not) and what it
    depends on, from the package index pip is configured with, as `make test` installs them."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q"]
        + [requirement],
        check=True,
        timeout=600,
    )
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import easytask; print(easytask.__file__)"],
        check=True,
        capture_output=True,
        text=True,
        cwd=venv,
        env=CLEAN_ENV,
    ).stdout.strip()
    assert where.startswith(str(venv)), where
    assert (venv / "bin" / "easytask").exists()
    return venv


def installed_distributions(venv: Path) -> set[str]:
    """The normalised names of the distributions installed in `venv`."""
    out = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import importlib.metadata as m; "
            "print('\\n'.join(d.metadata['Name'] for d in m.distributions()))",
        ],
        check=True,
        capture_output=True,
        text=True,
        env=CLEAN_ENV,
    ).stdout
    return {line.strip().lower().replace("_", "-") for line in out.splitlines() if line.strip()}
