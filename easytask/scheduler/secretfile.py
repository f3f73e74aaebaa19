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


def save(folder: Path | None, job_id: int, env: dict[str, str], masks: tuple[str, ...]) -> None:
    """Keep a job's secret env and masks until it ends (nothing to do without secrets)."""
    if folder is None or not (env or masks):
        return
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = _path(folder, job_id)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"secret_env": env, "masks": list(masks)}, fh)
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


def drop(folder: Path | None, job_id: int) -> None:
    """Forget a finished job's secrets."""
    if folder is not None:
        _path(folder, job_id).unlink(missing_ok=True)
