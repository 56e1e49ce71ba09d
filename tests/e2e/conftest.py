"""Fixtures shared by e2e modules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ServeProcess
from tests.e2e.deployments import register, wait_status


@pytest.fixture(scope="session")
def smol_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """One `modelhost serve` (one CPU slot) with `admin/smol`, the packaged SmolLM2-135M on the
    builtin engine, ready, and the example adapter `admin/upper` registered on it. Modules that
    only call it share it, which saves a server and a replica start each."""
    data: Path = tmp_path_factory.mktemp("smol") / "data"
    serve = ServeProcess(data, ["--cpu-slots", "1"])
    try:
        body = {
            "model_name": "smol",
            "gpu": "CPU",
            "base_model": "smollm2-135m-instruct",
            "engine": "builtin",
            "max_batch_size": 8,
            "engine_args": ["--context-length", "512"],
        }
        r = serve.client.post("/deploy/llm", json=body)
        assert r.status_code == 201, r.text
        register(serve, "upper", "smol")
        wait_status(serve, r.json()["deploy_id"], "ready", timeout=300)
        yield serve
    finally:
        serve.stop()
