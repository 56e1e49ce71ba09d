"""Component fixtures: the whole app in-process (lifespan included) via Starlette's TestClient,
its replicas run by the in-process backend (no engine process)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from modelhost.config import Settings
from modelhost.serve.app import create_app
from tests.component._live_server import LiveServer, modelhost_server
from tests.component.inprocess_engines import InProcessBackend
from tests.conftest import ADMIN_TOKEN, auth


class Api:
    def __init__(self, client: TestClient) -> None:
        self.client = client

    def as_(self, token: str) -> TestClient:
        self.client.headers.update(auth(token))
        return self.client

    def create_simulator(self, token: str, **over: object) -> str:
        """A simulator deployment `m1` (one replica; `over` changes the body); its id."""
        body: dict[str, object] = {
            "model_name": "m1",
            "gpu": "CPU",
            "max_batch_size": 4,
            "engine": "simulator",
            "settings": {"min_instances": 1, "max_instances": 1},
            **over,
        }
        r = self.client.post("/deploy/llm", json=body, headers=auth(token))
        assert r.status_code == 201, r.text
        return str(r.json()["deploy_id"])

    def new_user(self, username: str, gpu_limit: int | None = None) -> str:
        body: dict[str, object] = {"username": username}
        if gpu_limit is not None:
            body["gpu_limit"] = gpu_limit
        r = self.client.post("/v1/users", json=body, headers=auth(ADMIN_TOKEN))
        assert r.status_code == 201, r.text
        return str(r.json()["token"])


@pytest.fixture
def api(settings: Settings) -> Iterator[Api]:
    app = create_app(settings, backend=InProcessBackend())
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Api(client)


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A real server on a socket (for the SDK and the CLI), one per test module."""
    with modelhost_server(tmp_path_factory.mktemp("mh-live")) as live:
        yield live
