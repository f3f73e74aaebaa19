"""Settings: command-line flag > EASYTASK_* environment > config file > default."""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from easytask.durations import parse_duration, parse_size
from easytask.errors import ConfigError

CONFIG_ENV = "EASYTASK_CONFIG"
LOCAL_CONFIG = Path(".easytask") / "config.toml"
USER_CONFIG = Path("~/.config/easytask/config.toml")
TOKEN_MAX_TTL = 90 * 86400.0  # an API token's longest life unless the admin sets another


def _setting(default: Any, kind: str = "text", **extra: Any) -> Any:
    """A settings field: `kind` says how a value from the environment or a file is read."""
    return field(default=default, metadata={"kind": kind, **extra})


@dataclass
class Settings:
    """Every setting of the CLI and the server, resolved once and passed explicitly.

    Each one (but the internal ones) is an `EASYTASK_<NAME>` environment variable and a
    `name = value` key in the config file, and all but the secrets (notify_secret,
    metrics_token, secret_key) a command-line flag too; flag > environment > file > default.
    """

    # the CLI
    url: str = _setting("http://127.0.0.1:8080")
    token: str | None = _setting(None)
    inventory: str | list[str] | None = _setting("inventory", "sources")  # `server -i A -i B`
    inventory_timeout: float = _setting(30.0, "duration")  # one run of an inventory script
    inventory_cache: float = _setting(30.0, "duration")  # the server reuses a script's output
    vault_password_file: str | None = _setting(None)  # Ansible Vault password: a file or a script
    vault_id: tuple[str, ...] | None = _setting(None, "list")  # LABEL@FILE: more vault passwords
    log_format: str = _setting("text", "choice", choices=("text", "json"))
    # the server
    state_dir: Path = _setting(Path(".easytask/server"), "path")
    db: str | None = _setting(None)
    agents: str = _setting("127.0.0.1:8022")
    http: str = _setting("127.0.0.1:8080")
    pending_timeout: float = _setting(60.0, "duration")
    approval_expiry: float = _setting(86400.0, "duration")  # a launch waits this long for approval
    approval_hosts: str | None = _setting(
        None
    )  # host pattern: a template launch touching it needs approval
    keepalive_interval: float = _setting(10.0, "duration")
    keepalive_count: int = _setting(3, "count")
    agents_pending_max: int = _setting(10, "count")  # pending agent requests per address
    # agent connections in their handshake (SSH, hello, admission) at once; more wait to be accepted
    agents_handshakes: int = _setting(64, "count")
    ssh_known_hosts: str | None = _setting(None)
    # `ansible_connection: local` hosts run commands on the server's host, as its user
    allow_local_connection: bool = _setting(False, "bool")
    reattach_timeout: float = _setting(3600.0, "duration")
    server_timeout: float = _setting(15.0, "duration")  # shared database: silence before take-over
    playbooks: str | None = _setting("playbooks")
    output_limit: int | None = _setting(256 << 20, "size")  # 0: no limit
    upload_limit: int = _setting(1 << 30, "size")
    log_buffer: int = _setting(16 << 20, "size")  # output held while the database is away
    public_url: str | None = _setting(None)  # the console's address as users reach it
    notify_url: str | None = _setting(None)  # webhook called when any job finishes
    notify_events: str = _setting("all", "choice", choices=("all", "failed"))
    notify_secret: str | None = _setting(None)  # HMAC key for X-EasyTask-Signature
    # where playbooks' `notify:` may point besides notify_url (None: nowhere else)
    notify_allow: tuple[str, ...] | None = _setting(None, "list")
    metrics_token: str | None = _setting(None)  # a bearer token good for /metrics only
    retention: float | None = _setting(None, "lifetime")  # seconds a successful run is kept
    retention_failed: float | None = _setting(None, "lifetime")  # failed runs (None: as retention)
    prune_interval: float = _setting(3600.0, "duration")
    metrics_raw_retention: float = _setting(86400.0, "duration")  # raw host samples, then minutes
    trusted_proxy: str | None = _setting(None)  # a reverse proxy whose X-Forwarded-* we believe
    token_max_ttl: float | None = _setting(TOKEN_MAX_TTL, "lifetime")  # longest API token life
    audit_key_file: Path | None = _setting(None, "path")  # the audit chain's key (None: state dir)
    audit_checkpoint_url: str | None = _setting(None)  # each signed checkpoint POSTed here too
    secret_key: str | None = _setting(None)  # the credential store's key, 64 hex (None: state dir)
    # not settings: fixed by the code that builds a Settings
    schedule_interval: float = field(default=1.0, metadata={"internal": True})
    config_path: str | None = field(default=None, metadata={"internal": True})


def inventory_sources(value: str | list[str] | None) -> list[str]:
    """The inventory sources of the `inventory` setting: one, or a list (`-i A -i B`)."""
    if not value:
        return ["inventory"]
    return [value] if isinstance(value, str) else list(value)


def setting_names() -> list[str]:
    """The names of the settings a user can set (flag, environment, config file)."""
    return [f.name for f in fields(Settings) if not f.metadata.get("internal")]


def env_name(name: str) -> str:
    """The environment variable of a setting: `output_limit` -> `EASYTASK_OUTPUT_LIMIT`."""
    return "EASYTASK_" + name.upper()


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
    unknown = sorted(set(data) - set(setting_names()))
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s): {', '.join(unknown)}")
    return data


def _convert(name: str, kind: str, value: Any, choices: tuple[str, ...] = ()) -> Any:
    """One setting's value as its field holds it; a wrong value is a ConfigError naming it."""
    try:
        if kind == "path":
            return Path(value)
        if kind == "duration":
            return parse_duration(value)
        if kind == "lifetime":  # a positive duration, or nothing (unset)
            if value is None or value == "":
                return None
            seconds = parse_duration(value)
            if seconds <= 0:
                raise ValueError("must be positive")
            return seconds
        if kind == "size":
            if isinstance(value, bool) or not isinstance(value, int | str):
                raise ValueError(f"not a size: {value!r}")
            return parse_size(value)
        if kind == "list":  # texts (a TOML list, a repeated flag), each split at commas and spaces
            given = value if isinstance(value, list | tuple) else [value]
            if not all(isinstance(item, str) for item in given):
                raise ValueError(f"not a list of texts: {value!r}")
            return tuple(w for item in given for w in re.split(r"[,\s]+", item) if w) or None
        if kind == "sources":  # one inventory source, or a list of them
            if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
                return list(value)
            if not isinstance(value, str):
                raise ValueError(f"must be a path or a list of paths, got {value!r}")
            return value
        if kind == "bool":  # true/false in a file; 1/0, true/false, yes/no, on/off as text
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"must be true or false, got {value!r}")
        if kind == "count":
            if isinstance(value, bool | float):
                raise ValueError(f"not a whole number: {value!r}")
            return int(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: {exc}") from exc
    if kind == "choice" and value not in choices:
        raise ConfigError(f"{name}: must be {' or '.join(repr(a) for a in choices)}, got {value!r}")
    return value


def load_settings(
    flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Resolve settings: flags (None means unset) > EASYTASK_* environment > config file >
    default."""
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
        if env.get(env_name(f.name)):
            values[f.name] = env[env_name(f.name)]
        if flags.get(f.name) is not None:
            values[f.name] = flags[f.name]
        if f.name in values:
            values[f.name] = _convert(
                f.name, f.metadata["kind"], values[f.name], f.metadata.get("choices", ())
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
