"""Settings precedence: flag > environment > config file > default."""

from __future__ import annotations

from pathlib import Path

import pytest

from easytask.config import load_settings, write_client_config
from easytask.errors import ConfigError


def test_defaults_without_file_or_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With nothing set, the defaults apply."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    settings = load_settings({}, env={})
    assert settings.inventory == "inventory"
    assert settings.token is None


def test_precedence(tmp_path: Path) -> None:
    """A flag beats the environment, which beats the config file."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('url = "http://file:1"\ntoken = "filetoken"\ninventory = "inv-file"\n')
    env = {"EASYTASK_CONFIG": str(cfg), "EASYTASK_TOKEN": "envtoken"}
    settings = load_settings({"url": "http://flag:2"}, env=env)
    assert settings.url == "http://flag:2"
    assert settings.token == "envtoken"
    assert settings.inventory == "inv-file"
    assert settings.config_path == str(cfg)


def test_unknown_key_in_file_is_an_error(tmp_path: Path) -> None:
    """A misspelt setting names the file and the key."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('tokn = "x"\n')
    with pytest.raises(ConfigError, match=r"c.toml: unknown setting\(s\): tokn"):
        load_settings({}, env={"EASYTASK_CONFIG": str(cfg)})


def test_client_config_is_private(tmp_path: Path) -> None:
    """The written CLI config holds URL and token and is readable by its owner only."""
    path = tmp_path / "d" / "config.toml"
    write_client_config(path, "http://127.0.0.1:1", "et_secret")
    assert path.stat().st_mode & 0o777 == 0o600
    settings = load_settings({}, env={"EASYTASK_CONFIG": str(path)})
    assert (settings.url, settings.token) == ("http://127.0.0.1:1", "et_secret")


def test_operations_settings_from_env_and_bad_values(tmp_path: Path) -> None:
    """Log format and webhook settings come from EASYTASK_*; a wrong choice is a clear error."""
    env = {
        "EASYTASK_CONFIG": str(tmp_path / "c.toml"),
        "EASYTASK_LOG_FORMAT": "json",
        "EASYTASK_NOTIFY_URL": "http://127.0.0.1:9/hook",
        "EASYTASK_NOTIFY_EVENTS": "failed",
    }
    (tmp_path / "c.toml").write_text('notify_secret = "from-file"\n')
    settings = load_settings({}, env=env)
    assert (settings.log_format, settings.notify_url, settings.notify_events) == (
        "json",
        "http://127.0.0.1:9/hook",
        "failed",
    )
    assert settings.notify_secret == "from-file"
    with pytest.raises(ConfigError, match="log_format: must be 'text' or 'json', got 'xml'"):
        load_settings({}, env={**env, "EASYTASK_LOG_FORMAT": "xml"})
    with pytest.raises(ConfigError, match="notify_events: must be 'all' or 'failed'"):
        load_settings({}, env={**env, "EASYTASK_NOTIFY_EVENTS": "some"})
