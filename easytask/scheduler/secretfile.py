"""Secrets of unfinished jobs, kept in the state dir so a restarted server still masks them.

One file per job, `STATE_DIR/secrets/JOB.json`, readable by the server's user only, removed when
the job ends. The database never holds a secret value.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("easytask.server")


def _path(folder: Path, job_id: int) -> Path:
    return folder / f"{int(job_id)}.json"


def save(
    folder: Path | None,
    job_id: int,
    env: dict[str, str],
    masks: tuple[str, ...],
    extra_vars: dict[str, Any] | None = None,
) -> None:
    """Keep a job's secret env, masks and secret extra vars until it ends (if it has any)."""
    if folder is None or not (env or masks or extra_vars):
        return
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = _path(folder, job_id)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"secret_env": env, "masks": list(masks), "extra_vars": extra_vars or {}}, fh)
    os.replace(tmp, path)


def load(folder: Path | None, job_id: int) -> dict[str, Any]:
    """JobOptions fields for a resumed job: its secret env and masks ({} when it had none)."""
    if folder is None:
        return {}
    try:
        data = json.loads(_path(folder, job_id).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("job %s: cannot read its secrets (%s); its output is not masked", job_id, exc)
        return {}
    return {"secret_env": dict(data["secret_env"]), "masks": tuple(data["masks"])}


def secret_extra_vars(folder: Path | None, job_id: int) -> dict[str, Any]:
    """The secret `-e` values a resumed playbook job needs ({} when it had none)."""
    if folder is None:
        return {}
    try:
        return dict(json.loads(_path(folder, job_id).read_text()).get("extra_vars") or {})
    except (OSError, ValueError):
        return {}


def drop(folder: Path | None, job_id: int) -> None:
    """Forget a finished job's secrets."""
    if folder is not None:
        _path(folder, job_id).unlink(missing_ok=True)
