"""Settings: command-line flag > EASYTASK_* environment > config file > default."""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from easytask.errors import ConfigError

CONFIG_ENV = "EASYTASK_CONFIG"
LOCAL_CONFIG = Path(".easytask") / "config.toml"
USER_CONFIG = Path("~/.config/easytask/config.toml")


@dataclass
class Settings:
    """Everything a command may need to know, resolved once and passed explicitly."""

    inventory: str = "inventory"
    url: str = "http://127.0.0.1:8080"
    token: str | None = None
    state_dir: str = ".easytask/server"
    db: str | None = None
    agents: str = "127.0.0.1:8022"
    http: str = "127.0.0.1:8080"
    pending_timeout: float = 60.0
    log_format: str = "text"  # text | json
    public_url: str | None = None  # the console's address as users reach it (webhook links)
    notify_url: str | None = None  # webhook called when any job finishes
    notify_events: str = "all"  # all | failed
    notify_secret: str | None = None  # HMAC key for X-EasyTask-Signature (default: generated)
    metrics_token: str | None = None  # a bearer token good for /metrics only
    retention: str | None = None
    retention_failed: str | None = None
    config_path: str | None = field(default=None, metadata={"internal": True})


def config_file_candidates(env: Mapping[str, str]) -> list[Path]:
    """Where a config file is looked for, first match wins."""
    if env.get(CONFIG_ENV):
        return [Path(env[CONFIG_ENV]).expanduser()]
    return [LOCAL_CONFIG, USER_CONFIG.expanduser()]


def read_config_file(path: Path) -> dict[str, Any]:
    """Read one TOML config file; errors name the file."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    known = {f.name for f in fields(Settings)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s): {', '.join(unknown)}")
    return data


def load_settings(
    flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Resolve settings from flags (None means unset), environment and config file."""
    env = os.environ if env is None else env
    flags = flags or {}
    values: dict[str, Any] = {}
    config_path: Path | None = None
    for candidate in config_file_candidates(env):
        if candidate.is_file():
            values.update(read_config_file(candidate))
            config_path = candidate
            break
        if env.get(CONFIG_ENV):
            raise ConfigError(f"{candidate}: config file not found ({CONFIG_ENV})")
    for f in fields(Settings):
        if f.metadata.get("internal"):
            continue
        key = "EASYTASK_" + f.name.upper()
        if env.get(key):
            values[f.name] = env[key]
        if flags.get(f.name) is not None:
            values[f.name] = flags[f.name]
    if "pending_timeout" in values:
        try:
            values["pending_timeout"] = float(values["pending_timeout"])
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"pending_timeout: not a number: {values['pending_timeout']!r}"
            ) from exc
    for name, allowed in (("log_format", ("text", "json")), ("notify_events", ("all", "failed"))):
        if name in values and values[name] not in allowed:
            raise ConfigError(
                f"{name}: must be {' or '.join(repr(a) for a in allowed)}, got {values[name]!r}"
            )
    settings = Settings(**values)
    settings.config_path = str(config_path) if config_path else None
    return settings


def write_client_config(path: Path, url: str, token: str) -> None:
    """Write the CLI's URL and token into a config file, keeping its other settings.

    The file is replaced atomically and is readable by its owner only (mode 0600).
    """
    values: dict[str, Any] = read_config_file(path) if path.is_file() else {}
    values.update(url=url, token=token)
    lines = []
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ConfigError(
                f"{path}: cannot rewrite setting {key!r} of type {type(value).__name__}"
            )
        # a JSON string is a valid TOML basic string: quotes and control characters escaped
        text = json.dumps(value) if isinstance(value, str) else repr(value)
        lines.append(f"{key} = {text}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write("".join(lines))
    os.replace(tmp, path)
