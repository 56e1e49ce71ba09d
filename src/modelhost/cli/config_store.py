"""The CLI's stored login (server URL + API token) and how the CLI finds its credentials.

`modelhost login` writes `config.json` in the user's config directory (platformdirs; e.g.
`~/.config/modelhost/config.json` on Linux) with mode 0600. `MODELHOST_URL` and
`MODELHOST_TOKEN` override the stored values; `MODELHOST_CLI_CONFIG` names another file (one
per server or per account, and for tests).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import platformdirs

ENV_URL = "MODELHOST_URL"
ENV_TOKEN = "MODELHOST_TOKEN"
ENV_FILE = "MODELHOST_CLI_CONFIG"
DEFAULT_URL = "http://127.0.0.1:8080"


class ConfigError(Exception):
    """The stored login file exists but cannot be used."""


@dataclass(frozen=True)
class Login:
    url: str
    token: str


@dataclass(frozen=True)
class Credentials:
    """What a command will use. `token` is None when neither env nor a stored login has one.
    `url_source` / `token_source` say where each came from ("env", "config", "default")."""

    url: str
    token: str | None
    url_source: str
    token_source: str | None


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    override = env.get(ENV_FILE)
    if override:
        return Path(override).expanduser()
    return Path(platformdirs.user_config_dir("modelhost", appauthor=False)) / "config.json"


def load(environ: Mapping[str, str] | None = None) -> Login | None:
    """The stored login, or None when there is none."""
    path = config_path(environ)
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        data = json.loads(raw)
        return Login(url=str(data["url"]), token=str(data["token"]))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path} is not a modelhost login file; run `modelhost login`") from exc


def save(login: Login, environ: Mapping[str, str] | None = None) -> Path:
    """Write the login readable by the owner only. The file is created with mode 0600 (never
    briefly world-readable) and re-chmodded in case it already existed with wider bits."""
    path = config_path(environ)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    payload = json.dumps({"url": login.url, "token": login.token}, indent=2) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, payload.encode("utf-8"))
    finally:
        os.close(fd)
    return path


def delete(environ: Mapping[str, str] | None = None) -> bool:
    """Remove the stored login; False when there was none."""
    try:
        config_path(environ).unlink()
    except FileNotFoundError:
        return False
    return True


def resolve(environ: Mapping[str, str] | None = None) -> Credentials:
    """Environment first, then the stored login, then the default local server URL."""
    env = os.environ if environ is None else environ
    stored = load(env)
    if env.get(ENV_URL):
        url, url_source = env[ENV_URL], "env"
    elif stored is not None:
        url, url_source = stored.url, "config"
    else:
        url, url_source = DEFAULT_URL, "default"
    token: str | None
    if env.get(ENV_TOKEN):
        token, token_source = env[ENV_TOKEN], "env"
    elif stored is not None:
        token, token_source = stored.token, "config"
    else:
        token, token_source = None, None
    return Credentials(url.rstrip("/"), token, url_source, token_source)
