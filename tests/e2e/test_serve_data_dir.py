"""`modelhost serve`, as a process, keeps its data dir 0700 and the files that hold secrets 0600
(the same rule for the app in-process: tests/component/test_api_files.py)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.conftest import ADMIN_TOKEN, ServeProcess

pytestmark = pytest.mark.e2e

SECRET_FILES = ("modelhost.db", "modelhost.db-wal", "modelhost.db-shm", "secret.key")


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_modelhost_serve_keeps_its_data_dir_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    server = ServeProcess(data, ["--gpus", "A100-80GB:1"])
    try:
        r = server.client.post("/v1/api-tokens", json={"name": "x"})
        assert r.status_code == 201 and server.client.headers["authorization"].endswith(ADMIN_TOKEN)
        assert mode(data) == 0o700
        for name in (*SECRET_FILES, "serve.lock"):
            assert mode(data / name) == 0o600, name
        for path in data.iterdir():
            assert mode(path) & 0o077 == 0, f"{path.name} is {oct(mode(path))}"
    finally:
        server.stop()
