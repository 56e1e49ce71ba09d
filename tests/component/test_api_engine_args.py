"""Engine flags modelhost sets itself cannot be given in engine_args, on create or update; what
is already stored is left alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelhost.store.tables import Deployment
from tests.component.live_app import Live, live_app
from tests.conftest import ADMIN_TOKEN, auth, make_settings

_names = iter(f"m{i}" for i in range(1000))


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    with live_app(make_settings(Path(tmp_path_factory.mktemp("args")) / "data")) as server:
        yield server


@pytest.fixture(scope="module")
def alice(live: Live) -> dict[str, str]:
    return {"Authorization": f"Bearer {live.new_user('alice')}"}


def body(**over: Any) -> dict[str, Any]:
    b: dict[str, Any] = {
        "model_name": next(_names),
        "gpu": "CPU",  # no GPU quota: each test stands on its own
        "engine": "simulator",
        # Standby: these tests are about what is stored, not about replicas.
        "settings": {"min_instances": 0, "max_instances": 1},
    }
    b.update(over)
    return b


OWNED = [
    ["--host", "0.0.0.0"],
    ["--host=0.0.0.0"],
    ["--ho", "0.0.0.0"],
    ["--port", "1"],
    ["--device=cuda"],
    ["--served-model-name", "bob/x"],
    ["--max-batch-size", "4096"],
    ["--weights-local", "/etc"],
    ["--adapter-dir", "/tmp"],
    ["--max-active-adapters", "1"],
    ["--preload-adapter", "a1"],
    ["--ttft-ms", "1", "--engine", "builtin"],
]


@pytest.mark.parametrize("args", OWNED, ids=[" ".join(a) for a in OWNED])
@pytest.mark.parametrize("field", ["engine_args", "extra_args"])
def test_owned_flags_are_refused_on_create(
    live: Live, alice: dict[str, str], field: str, args: list[str]
) -> None:
    r = live.client.post("/deploy/llm", json=body(**{field: args}), headers=alice)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["param"] == field and err["code"] == "validation_error"
    flag = next(a for a in args if a.split("=")[0] not in ("--ttft-ms", "1"))
    assert flag in err["message"]
    listed = live.client.get("/deploy/list", headers=alice).json()
    assert all(d["config"]["engine_args"] != args for d in listed)


def test_engine_flags_of_its_own_are_accepted(live: Live, alice: dict[str, str]) -> None:
    args = ["--ttft-ms=5", "--tpot-ms", "1", "--drain-timeout", "3", "--seed", "-1"]
    r = live.client.post("/deploy/llm", json=body(engine_args=args), headers=alice)
    assert r.status_code == 201, r.text
    assert r.json()["config"]["engine_args"] == args


def test_owned_flags_are_refused_on_update(live: Live, alice: dict[str, str]) -> None:
    dep = live.client.post("/deploy/llm", json=body(), headers=alice).json()
    url = f"/deploy/{dep['deploy_id']}"
    put = {"config": {"engine_args": ["--host", "0.0.0.0"]}, "settings": {"max_instances": 2}}
    r = live.client.put(url, json=put, headers=alice)
    assert r.status_code == 422 and r.json()["error"]["param"] == "config.engine_args"
    assert "--host" in r.json()["error"]["message"]
    after = live.client.get(url, headers=alice).json()
    # Nothing of the refused update applies, the settings sent with it included.
    assert after["config"]["engine_args"] == [] and after["settings"]["max_instances"] == 1


def test_stored_engine_args_are_not_rewritten(live: Live, alice: dict[str, str]) -> None:
    dep = live.client.post("/deploy/llm", json=body(), headers=alice).json()
    # As an older server may have stored it.
    with live.services.db.session() as s:
        row = s.get(Deployment, dep["deploy_id"])
        assert row is not None
        row.config = {**row.config, "engine_args": ["--host", "127.0.0.1"]}
    url = f"/deploy/{dep['deploy_id']}"
    r = live.client.put(url, json={"config": {"max_batch_size": 4}}, headers=alice)
    assert r.status_code == 200, r.text
    assert r.json()["config"]["engine_args"] == ["--host", "127.0.0.1"]
    assert r.json()["config"]["max_batch_size"] == 4


SERVER_PATHS = [["--cache-dir", "/etc"], ["--cache-dir=/tmp/x"], ["--cache", "/tmp/x"]]


@pytest.mark.parametrize("args", SERVER_PATHS, ids=[" ".join(a) for a in SERVER_PATHS])
def test_server_path_flags_are_for_admins(
    live: Live, alice: dict[str, str], args: list[str]
) -> None:
    r = live.client.post("/deploy/llm", json=body(engine_args=args), headers=alice)
    assert r.status_code == 403, r.text
    err = r.json()["error"]
    assert err["code"] == "local_source_forbidden" and err["param"] == "engine_args"
    dep = live.client.post("/deploy/llm", json=body(), headers=alice).json()
    put = {"config": {"engine_args": args}}
    r = live.client.put(f"/deploy/{dep['deploy_id']}", json=put, headers=alice)
    assert r.status_code == 403 and r.json()["error"]["param"] == "config.engine_args"
    admin = live.client.post("/deploy/llm", json=body(engine_args=args), headers=auth(ADMIN_TOKEN))
    assert admin.status_code == 201, admin.text
