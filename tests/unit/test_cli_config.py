"""The CLI's stored login, credential resolution, flag parsing, and `serve`'s settings."""

from __future__ import annotations

import stat
import sys
import types
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelhost.cli import config_store
from modelhost.cli.deploy import _parse_settings
from modelhost.cli.logs import parse_since
from modelhost.cli.main import app
from modelhost.cli.serve import build_settings
from modelhost.cli.session import CliError
from modelhost.config import Settings


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {config_store.ENV_FILE: str(tmp_path / "cfg" / "config.json")}


def test_save_load_delete_roundtrip_with_mode_0600(env: dict[str, str]) -> None:
    assert config_store.load(env) is None
    path = config_store.save(config_store.Login("http://127.0.0.1:9000", "mh_abc"), env)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert config_store.load(env) == config_store.Login("http://127.0.0.1:9000", "mh_abc")
    assert config_store.delete(env) is True
    assert config_store.delete(env) is False
    assert config_store.load(env) is None


def test_save_tightens_an_existing_world_readable_file(env: dict[str, str]) -> None:
    path = Path(env[config_store.ENV_FILE])
    path.parent.mkdir(parents=True)
    path.write_text("{}")
    path.chmod(0o644)
    config_store.save(config_store.Login("http://h", "mh_x"), env)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_default_path_is_in_the_user_config_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", "/tmp/xdg-test-home")
    path = config_store.config_path({})
    assert path.name == "config.json" and "modelhost" in path.parts


def test_resolve_prefers_env_then_stored_then_default(env: dict[str, str]) -> None:
    assert config_store.resolve(env) == config_store.Credentials(
        config_store.DEFAULT_URL, None, "default", None
    )
    config_store.save(config_store.Login("http://stored:1/", "mh_stored"), env)
    creds = config_store.resolve(env)
    assert (creds.url, creds.token, creds.url_source) == ("http://stored:1", "mh_stored", "config")
    env[config_store.ENV_URL] = "http://env:2"
    env[config_store.ENV_TOKEN] = "mh_env"
    creds = config_store.resolve(env)
    assert (creds.url, creds.token) == ("http://env:2", "mh_env")
    assert (creds.url_source, creds.token_source) == ("env", "env")


def test_corrupt_login_file_is_a_clear_error(env: dict[str, str]) -> None:
    path = Path(env[config_store.ENV_FILE])
    path.parent.mkdir(parents=True)
    path.write_text("url: x\n")
    with pytest.raises(config_store.ConfigError, match="modelhost login"):
        config_store.load(env)


def test_commands_without_a_login_say_how_to_log_in(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    monkeypatch.setenv(config_store.ENV_FILE, env[config_store.ENV_FILE])
    monkeypatch.delenv(config_store.ENV_TOKEN, raising=False)
    result = CliRunner().invoke(app, ["deploy", "list"])
    assert result.exit_code == 1
    assert "not logged in" in result.output and "modelhost login" in result.output


def test_parse_since() -> None:
    now = 1_000_000.0
    assert parse_since("10m", now) == now - 600
    assert parse_since("2h", now) == now - 7200
    assert parse_since("1.5s", now) == now - 1.5
    assert parse_since("1700000000", now) == 1_700_000_000.0
    assert parse_since("2023-11-14T22:13:20Z", now) == 1_700_000_000.0
    with pytest.raises(CliError):
        parse_since("yesterday", now)


def test_parse_settings_takes_json_values() -> None:
    got = _parse_settings(["cooldown_s=30", "scale_up_threshold=0.8", "name=abc", "x=[1,2]"])
    assert got == {"cooldown_s": 30, "scale_up_threshold": 0.8, "name": "abc", "x": [1, 2]}
    with pytest.raises(CliError):
        _parse_settings(["novalue"])


def test_build_settings_flags_override_env_and_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    toml = tmp_path / "modelhost.toml"
    toml.write_text('port = 7000\ngpus = "A100-80GB:2"\ncpu_slots = 3\n')
    # setenv (not delenv) so that monkeypatch removes what build_settings(config=...) sets.
    monkeypatch.setenv("MODELHOST_CONFIG", "")
    monkeypatch.setenv("MODELHOST_CPU_SLOTS", "5")
    s = build_settings(config=toml, host="0.0.0.0", data_dir=tmp_path / "d", discover_gpus=False)
    assert (s.host, s.port, s.gpus) == ("0.0.0.0", 7000, "A100-80GB:2")
    assert s.cpu_slots == 5  # env beats the file
    assert s.data_dir == tmp_path / "d" and s.discover_gpus is False
    s = build_settings(config=toml, port=9999, cpu_slots=1)
    assert (s.port, s.cpu_slots, s.discover_gpus) == (9999, 1, True)


def test_serve_command_hands_the_settings_to_the_server(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    got: list[Settings] = []
    fake = types.ModuleType("modelhost.serve.process")
    fake.run = got.append  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "modelhost.serve.process", fake)
    monkeypatch.setenv("MODELHOST_CONFIG", "")
    monkeypatch.delenv("MODELHOST_PORT", raising=False)
    args = ["serve", "--port", "8123", "--data-dir", str(tmp_path), "--gpus", "H100-80GB:2"]
    args += ["--cpu-slots", "1", "--no-discover-gpus", "--database-url", "sqlite:///x.db"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (s,) = got
    assert (s.port, s.data_dir, s.gpus, s.cpu_slots) == (8123, tmp_path, "H100-80GB:2", 1)
    assert s.discover_gpus is False and s.database_url == "sqlite:///x.db"
    assert s.host == "127.0.0.1"
