"""Deployments API: validation, quota, names, and tenant isolation."""

from __future__ import annotations

from typing import Any

import pytest

from tests.component.conftest import Api
from tests.conftest import ADMIN_TOKEN, auth, wait_until


def body(**over: Any) -> dict[str, Any]:
    b: dict[str, Any] = {
        "model_name": "m1",
        "gpu": "A100-80GB",
        "num_gpus": 1,
        "max_batch_size": 8,
        "engine": "simulator",
        "settings": {"min_instances": 0, "max_instances": 1},
    }
    b.update(over)
    return b


INVALID = [
    ("bad name", {"model_name": "Bad Name"}, "model_name"),
    ("name too long", {"model_name": "a" * 65}, "model_name"),
    ("unknown gpu", {"gpu": "TPU-v9"}, "gpu"),
    ("too many gpus", {"num_gpus": 9}, "num_gpus"),
    ("more gpus than server has", {"gpu": "H100-80GB", "num_gpus": 4}, "num_gpus"),
    ("batch too big", {"max_batch_size": 257}, "max_batch_size"),
    ("batch zero", {"max_batch_size": 0}, "max_batch_size"),
    ("unknown engine", {"engine": "tgi"}, "engine"),
    (
        "two weight sources",
        {"hf": {"repo": "a/b"}, "base_model": "smollm2-135m-instruct"},
        "base_model",
    ),
    ("builtin without weights", {"engine": "builtin"}, "hf"),
    ("bad hf repo", {"hf": {"repo": "no-slash"}}, "hf.repo"),
    ("unknown catalog model", {"base_model": "gpt-5"}, "base_model"),
    ("relative local path", {"local": {"path": "models/x"}}, "local.path"),
    ("missing local path", {"local": {"path": "/nonexistent/model"}}, "local.path"),
    ("min > max", {"settings": {"min_instances": 2, "max_instances": 1}}, "settings.max_instances"),
    ("unknown setting", {"settings": {"min_instancez": 1}}, "settings.min_instancez"),
    ("container image", {"container_image": "vllm/vllm-openai:v0.8.4"}, "container_image"),
    ("unknown field", {"colour": "blue"}, "colour"),
]


@pytest.mark.parametrize(("over", "param"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_create_is_422_naming_the_field(api: Api, over: dict[str, Any], param: str) -> None:
    r = api.client.post("/deploy/llm", json=body(**over), headers=auth(ADMIN_TOKEN))
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"] and err["type"] == "invalid_request_error"
    assert "Traceback" not in r.text


def test_unknown_gpu_lists_the_known_ones(api: Api) -> None:
    r = api.client.post("/deploy/llm", json=body(gpu="X"), headers=auth(ADMIN_TOKEN))
    assert "A100-80GB" in r.json()["error"]["message"] and "CPU" in r.json()["error"]["message"]


def test_create_get_list_and_name_rules(api: Api) -> None:
    token = api.new_user("alice")
    h = auth(token)
    r = api.client.post(
        "/deploy/llm", json=body(hf={"repo": "org/m", "token": "hf_secret"}), headers=h
    )
    assert r.status_code == 201, r.text
    dep = r.json()
    assert dep["model_name"] == "alice/m1" and dep["type"] == "llm"
    assert dep["config"]["weights"]["hf"] == {"repo": "org/m", "revision": "main", "token": "***"}
    assert "hf_secret" not in r.text
    assert api.client.post("/deploy/llm", json=body(), headers=h).status_code == 409
    got = api.client.get(f"/deploy/{dep['deploy_id']}", headers=h).json()
    assert got["deploy_id"] == dep["deploy_id"] and "hf_secret" not in str(got)
    listed = api.client.get("/deploy/list", headers=h).json()
    assert [d["deploy_id"] for d in listed] == [dep["deploy_id"]]
    r = api.client.get("/deploy/list?status=bogus", headers=h)
    assert r.status_code == 422
    # Deleting frees the name.
    assert api.client.delete(f"/deploy/{dep['deploy_id']}", headers=h).status_code == 200
    assert api.client.get(f"/deploy/{dep['deploy_id']}", headers=h).status_code == 404
    assert api.client.post("/deploy/llm", json=body(), headers=h).status_code == 201


def test_gpu_quota(api: Api) -> None:
    token = api.new_user("bob", gpu_limit=4)
    h = auth(token)
    ok = body(num_gpus=2, settings={"min_instances": 0, "max_instances": 2})
    assert api.client.post("/deploy/llm", json=ok, headers=h).status_code == 201
    r = api.client.post("/deploy/llm", json=body(model_name="m2"), headers=h)
    assert r.status_code == 403 and r.json()["error"]["code"] == "gpu_quota_exceeded"
    assert api.client.get("/deploy/list", headers=h).json()[0]["model_name"] == "bob/m1"
    assert len(api.client.get("/deploy/list", headers=h).json()) == 1
    # CPU deployments do not count.
    cpu = body(model_name="m3", gpu="CPU")
    assert api.client.post("/deploy/llm", json=cpu, headers=h).status_code == 201
    assert api.client.get("/v1/me", headers=h).json()["gpus_reserved"] == 4
    # Raising max_instances over the limit is refused too; a stopped deployment frees quota.
    dep_id = api.client.get("/deploy/list", headers=h).json()[0]["deploy_id"]
    r = api.client.put(f"/deploy/{dep_id}", json={"settings": {"max_instances": 3}}, headers=h)
    assert r.status_code == 403
    assert api.client.post(f"/deploy/{dep_id}/stop", headers=h).status_code == 200
    assert api.client.post("/deploy/llm", json=body(model_name="m2"), headers=h).status_code == 201
    r = api.client.post(f"/deploy/{dep_id}/start", headers=h)
    assert r.status_code == 403 and r.json()["error"]["code"] == "gpu_quota_exceeded"


def test_cpu_share_refuses_a_floor_one_user_can_never_hold(api: Api) -> None:
    # 2 CPU slots: one user may hold 1 at a time (half, rounded up); admins are not limited.
    h = auth(api.new_user("cpuuser"))
    floor2 = body(model_name="c1", gpu="CPU", settings={"min_instances": 2, "max_instances": 2})
    r = api.client.post("/deploy/llm", json=floor2, headers=h)
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "cpu_quota_exceeded"
    assert "cpu_slots_per_user" in r.json()["error"]["message"]
    ok = body(model_name="c1", gpu="CPU", settings={"min_instances": 1, "max_instances": 2})
    dep = api.client.post("/deploy/llm", json=ok, headers=h)
    assert dep.status_code == 201, dep.text
    url = f"/deploy/{dep.json()['deploy_id']}"
    r = api.client.put(url, json={"settings": {"min_instances": 2}}, headers=h)
    assert r.status_code == 403 and r.json()["error"]["code"] == "cpu_quota_exceeded"
    admin = body(model_name="c2", gpu="CPU", settings={"min_instances": 2, "max_instances": 2})
    assert api.client.post("/deploy/llm", json=admin, headers=auth(ADMIN_TOKEN)).status_code == 201


def test_settings_update_is_live_and_validated(api: Api) -> None:
    h = auth(ADMIN_TOKEN)
    dep = api.client.post("/deploy/llm", json=body(), headers=h).json()
    r = api.client.put(
        f"/deploy/{dep['deploy_id']}", json={"settings": {"max_instances": 3}}, headers=h
    )
    assert r.status_code == 200
    assert r.json()["settings"]["max_instances"] == 3 and r.json()["settings"]["min_instances"] == 0
    r = api.client.put(
        f"/deploy/{dep['deploy_id']}", json={"settings": {"min_instances": -1}}, headers=h
    )
    assert r.status_code == 422 and r.json()["error"]["param"] == "settings.min_instances"
    r = api.client.put(
        f"/deploy/{dep['deploy_id']}", json={"config": {"hf": {"revision": "v2"}}}, headers=h
    )
    assert r.status_code == 422 and r.json()["error"]["param"] == "config.hf"


ROUTES = [
    ("GET", "/deploy/{id}", None),
    ("PUT", "/deploy/{id}", {"settings": {"max_instances": 1}}),
    ("DELETE", "/deploy/{id}", None),
    ("POST", "/deploy/{id}/stop", None),
    ("POST", "/deploy/{id}/start", None),
    ("GET", "/deploy/{id}/events", None),
    ("GET", "/deploy/{id}/logs", None),
]


def test_tenants_never_see_each_other(api: Api) -> None:
    alice, bob = api.new_user("alice"), api.new_user("bob")
    ids = {}
    for name, token in (("alice", alice), ("bob", bob)):
        r = api.client.post("/deploy/llm", json=body(model_name="shared-name"), headers=auth(token))
        assert r.status_code == 201
        ids[name] = r.json()["deploy_id"]
    for me, other in (("alice", "bob"), ("bob", "alice")):
        token = alice if me == "alice" else bob
        unknown = {}
        for method, path, payload in ROUTES:
            r = api.client.request(
                method, path.format(id=ids[other]), json=payload, headers=auth(token)
            )
            assert r.status_code == 404, (method, path, r.text)
            assert ids[other] in r.json()["error"]["message"]
            r2 = api.client.request(
                method, path.format(id="dnotexisting0000"), json=payload, headers=auth(token)
            )
            unknown[(method, path)] = r2.json()["error"]["code"]
            assert r.json()["error"]["code"] == unknown[(method, path)]
        listed = api.client.get("/deploy/list?all=true", headers=auth(token)).json()
        assert [d["deploy_id"] for d in listed] == [ids[me]]
        # Inference by name or id: the same 404 as a model that does not exist.
        for model in (f"{other}/shared-name", f"deploy_id:{ids[other]}"):
            r = api.client.post(
                "/v1/openai/chat/completions",
                json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
                headers=auth(token),
            )
            assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        r = api.client.post(
            f"/deployments/{other}/shared-name/generate", json={"inputs": "x"}, headers=auth(token)
        )
        assert r.status_code == 404 and "error_type" in r.json()
    # Both still exist, untouched.
    assert api.client.get(f"/deploy/{ids['alice']}", headers=auth(alice)).status_code == 200
    assert api.client.get(f"/deploy/{ids['bob']}", headers=auth(bob)).status_code == 200


def test_public_deployment_serves_other_users_but_stays_theirs(api: Api) -> None:

    alice, bob = api.new_user("alice"), api.new_user("bob")
    r = api.client.post(
        "/deploy/llm", json=body(model_name="open", public=True), headers=auth(alice)
    )
    dep = r.json()
    wait_until(
        lambda: (
            api.client.get(f"/deploy/{dep['deploy_id']}", headers=auth(alice)).json()["status"]
            == "ready"
        ),
        timeout=60,
        what="the public deployment ready",
    )
    ask = {"model": "alice/open", "prompt": "hi", "max_tokens": 2}
    r = api.client.post("/v1/openai/completions", json=ask, headers=auth(bob))
    assert r.status_code == 200, r.text
    assert "alice/open" in [
        m["id"] for m in api.client.get("/v1/openai/models", headers=auth(bob)).json()["data"]
    ]
    # Public means usable, not manageable: the control plane still answers 404 to bob.
    assert api.client.get(f"/deploy/{dep['deploy_id']}", headers=auth(bob)).status_code == 404
    assert api.client.delete(f"/deploy/{dep['deploy_id']}", headers=auth(bob)).status_code == 404
