"""Settings precedence: flag > environment > config file > default."""

from __future__ import annotations

from pathlib import Path

import pytest

from easytask.config import (
    env_name,
    inventory_sources,
    load_settings,
    setting_names,
    write_client_config,
)
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


# (setting, flag value, environment text, config file TOML value, what each resolves to, default)
SERVER_SETTINGS = [
    ("upload_limit", 5, "2k", '"3M"', (5, 2048, 3 << 20), 1 << 30),
    ("output_limit", 7, "1k", "0", (7, 1024, 0), 256 << 20),
    ("playbooks", "pb-flag", "pb-env", '"pb-file"', ("pb-flag", "pb-env", "pb-file"), "playbooks"),
    (
        "ssh_known_hosts",
        "kh-flag",
        "kh-env",
        '"kh-file"',
        ("kh-flag", "kh-env", "kh-file"),
        None,
    ),
    ("reattach_timeout", 9.0, "2m", '"1h"', (9.0, 120.0, 3600.0), 3600.0),
    ("server_timeout", 3.0, "20s", "30", (3.0, 20.0, 30.0), 15.0),
    ("prune_interval", 60.0, "10m", '"2h"', (60.0, 600.0, 7200.0), 3600.0),
    ("keepalive_interval", 1.0, "2", "3.5", (1.0, 2.0, 3.5), 10.0),
    ("keepalive_count", 2, "5", "7", (2, 5, 7), 3),
    ("pending_timeout", 4.0, "1m", "90", (4.0, 60.0, 90.0), 60.0),
    ("retention", 86400.0, "2d", '"3d"', (86400.0, 172800.0, 259200.0), None),
    ("token_max_ttl", 3600.0, "2d", '"30d"', (3600.0, 172800.0, 2592000.0), 7776000.0),
    (
        "state_dir",
        "/f",
        "/e",
        '"/c"',
        (Path("/f"), Path("/e"), Path("/c")),
        Path(".easytask/server"),
    ),
    (
        "trusted_proxy",
        "10.0.0.1",
        "10.0.0.2",
        '"10.0.0.3"',
        ("10.0.0.1", "10.0.0.2", "10.0.0.3"),
        None,
    ),
    ("metrics_token", "m-flag", "m-env", '"m-file"', ("m-flag", "m-env", "m-file"), None),
    ("allow_local_connection", True, "off", "true", (True, False, True), False),
]


@pytest.mark.parametrize(
    ("name", "flag", "env_text", "file_text", "expected", "default"),
    SERVER_SETTINGS,
    ids=[row[0] for row in SERVER_SETTINGS],
)
@pytest.mark.parametrize("source", ["flag", "env", "file", "default"])
def test_server_setting_precedence(
    tmp_path: Path,
    name: str,
    flag: object,
    env_text: str,
    file_text: str,
    expected: tuple[object, object, object],
    default: object,
    source: str,
) -> None:
    """Every server setting: a flag beats EASYTASK_<NAME>, which beats the file's key, which beats
    the default."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"{name} = {file_text}\n" if source in ("flag", "env", "file") else "")
    env = {"EASYTASK_CONFIG": str(cfg)}
    if source in ("flag", "env"):
        env[env_name(name)] = env_text
    flags = {name: flag} if source == "flag" else {}
    settings = load_settings(flags, env=env)
    want = {"flag": expected[0], "env": expected[1], "file": expected[2], "default": default}
    assert getattr(settings, name) == want[source]


def test_every_setting_is_a_file_key_and_an_environment_variable(tmp_path: Path) -> None:
    """Every setting is a known config-file key and is read from EASYTASK_<NAME>."""
    cfg = tmp_path / "c.toml"
    cfg.write_text("".join(f"{name} = {_toml_sample(name)}\n" for name in setting_names()))
    load_settings({}, env={"EASYTASK_CONFIG": str(cfg)})  # no unknown key
    env = {env_name(name): _toml_sample(name).strip('"') for name in setting_names()}
    cfg.write_text("")
    settings = load_settings({}, env={"EASYTASK_CONFIG": str(cfg), **env})
    assert (settings.playbooks, settings.keepalive_count, settings.log_format) == ("1", 2, "json")


def _toml_sample(name: str) -> str:
    return {
        "log_format": '"json"',
        "notify_events": '"failed"',
        "keepalive_count": "2",
        "retention_failed": '"5d"',
    }.get(name, '"1"')


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("upload_limit", "lots", "upload_limit: not a size: 'lots'"),
        ("reattach_timeout", "soon", "reattach_timeout: not a duration: 'soon'"),
        ("keepalive_count", "many", "keepalive_count: invalid literal"),
        ("retention", "0", "retention: must be positive"),
        ("allow_local_connection", "maybe", "allow_local_connection: must be true or false"),
    ],
)
def test_bad_setting_values_name_the_setting(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    """A value that is not one names its setting."""
    cfg = tmp_path / "c.toml"
    cfg.write_text("")
    with pytest.raises(ConfigError, match=message):
        load_settings({}, env={"EASYTASK_CONFIG": str(cfg), env_name(name): text})


def test_server_flags_are_settings() -> None:
    """Each of `easytask server`'s options is a setting of the same name, and every setting is
    one of them but the global options (url, token) and the secrets, kept off the command line
    (`ps` shows it to every local user)."""
    from easytask.cli.main import build_parser

    parser = build_parser("server")
    args = parser.parse_args(["server"])
    assert set(args.settings_from) == set(setting_names()) - {
        "url",
        "token",
        "notify_secret",
        "metrics_token",
        "secret_key",
    }
    given = parser.parse_args(["server", "--upload-limit", "2k", "--keepalive", "5s"])
    assert (given.upload_limit, given.keepalive_interval) == (2048, 5.0)


def test_inventory_sources_one_or_a_list(tmp_path: Path) -> None:
    """`inventory` is one source, or a list in the file or from repeated `server -i`; the
    script settings are durations; anything else names the setting."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('inventory = ["a.ini", "web1,web2,"]\ninventory_cache = "2m"\n')
    env = {"EASYTASK_CONFIG": str(cfg), "EASYTASK_INVENTORY_TIMEOUT": "5s"}
    settings = load_settings(env=env)
    assert settings.inventory == ["a.ini", "web1,web2,"]
    assert (settings.inventory_cache, settings.inventory_timeout) == (120.0, 5.0)
    assert load_settings({"inventory": ["x", "y"]}, env=env).inventory == ["x", "y"]
    assert inventory_sources(None) == ["inventory"]
    assert inventory_sources("x") == ["x"]
    cfg.write_text("inventory = 5\n")
    with pytest.raises(ConfigError, match="inventory: must be a path or a list of paths, got 5"):
        load_settings(env=env)
