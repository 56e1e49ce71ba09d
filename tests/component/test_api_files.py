"""The data dir is 0700 and the files that hold secrets 0600: created so, and fixed at start
when an earlier run left them readable by others. (`modelhost serve` as a process:
tests/e2e/test_serve_data_dir.py.)"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from modelhost.serve.app import create_app
from tests.component.inprocess_engines import InProcessBackend
from tests.component.live_app import live_app
from tests.conftest import auth, make_settings

SECRET_FILES = ("modelhost.db", "modelhost.db-wal", "modelhost.db-shm", "secret.key")


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def assert_private(data_dir: Path, names: tuple[str, ...]) -> None:
    assert mode(data_dir) == 0o700
    for name in names:
        assert mode(data_dir / name) == 0o600, name
    for path in data_dir.iterdir():
        assert mode(path) & 0o077 == 0, f"{path.name} is {oct(mode(path))}"


def test_a_new_data_dir_is_private(tmp_path: Path) -> None:
    old = os.umask(0o022)  # the usual umask, which would give 0755 and 0644
    try:
        settings = make_settings(tmp_path / "data", admin_token=None)
        with live_app(settings) as live:
            token = (settings.data_dir / "admin-token").read_text().strip()
            r = live.client.post("/v1/api-tokens", json={"name": "x"}, headers=auth(token))
            assert r.status_code == 201
            assert_private(settings.data_dir, (*SECRET_FILES, "admin-token"))
    finally:
        os.umask(old)


def test_files_left_readable_are_fixed_at_start(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", admin_token=None)
    create_app(settings, backend=InProcessBackend()).state.services.db.close()
    data = settings.data_dir
    present = tuple(p.name for p in data.iterdir())
    assert {"modelhost.db", "secret.key", "admin-token"} <= set(present)
    data.chmod(0o755)
    for path in data.iterdir():
        path.chmod(0o644)
    with live_app(settings):
        assert_private(data, present)
