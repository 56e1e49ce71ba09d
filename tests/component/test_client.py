"""The Python SDK against the real control-plane app (served on 127.0.0.1 by uvicorn)."""

from __future__ import annotations

import itertools
import socket
from collections.abc import Iterator

import pytest

from modelhost import Client, ModelhostAPIError, ModelhostConnectionError
from tests.component._live_server import LiveServer

_names = (f"sdk-{i}" for i in itertools.count())


@pytest.fixture(scope="module")
def admin(live_server: LiveServer) -> Iterator[Client]:
    with Client(live_server.url, live_server.admin_token) as c:
        yield c


@pytest.fixture(scope="module")
def alice(live_server: LiveServer, admin: Client) -> Iterator[Client]:
    created = admin.create_user("alice", gpu_limit=2)
    with Client(live_server.url, created.token) as c:
        yield c


def test_me_and_users(admin: Client, alice: Client, live_server: LiveServer) -> None:
    me = admin.me()
    assert me.username == "admin" and me.is_admin
    a = alice.me()
    assert (a.username, a.is_admin, a.gpu_limit) == ("alice", False, 2)
    assert "alice" in {u.username for u in admin.list_users()}

    with pytest.raises(ModelhostAPIError) as info:
        admin.create_user("alice")
    assert info.value.status_code == 409
    with pytest.raises(ModelhostAPIError) as info:
        alice.list_users()
    assert info.value.status_code == 403

    bob = admin.create_user("bob")
    assert bob.token.startswith("mh_")
    admin.delete_user("bob")
    with Client(live_server.url, bob.token) as c, pytest.raises(ModelhostAPIError) as info:
        c.me()
    assert info.value.status_code == 401


def test_tokens_create_list_revoke(alice: Client, live_server: LiveServer) -> None:
    tok = alice.create_token("ci")
    assert tok.token is not None and tok.token.startswith("mh_") and tok.token_id
    listed = {t.name: t for t in alice.list_tokens()}
    assert listed["ci"].token is None and listed["ci"].token_id == tok.token_id
    with pytest.raises(ModelhostAPIError) as info:
        alice.create_token("ci")
    assert info.value.status_code == 409

    with Client(live_server.url, tok.token) as ci:
        assert ci.me().username == "alice"
        alice.revoke_token(tok.token_id)
        with pytest.raises(ModelhostAPIError) as info:
            ci.me()
    assert info.value.status_code == 401


def test_bad_token_is_401(live_server: LiveServer) -> None:
    with (
        Client(live_server.url, "mh_not_a_real_token") as c,
        pytest.raises(ModelhostAPIError) as info,
    ):
        c.list_deployments()
    assert info.value.status_code == 401 and info.value.message


def test_connection_refused_is_a_connection_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens on the port any more.
    c = Client(f"http://127.0.0.1:{port}", "mh_x", timeout=5)
    with c, pytest.raises(ModelhostConnectionError) as info:
        c.me()
    assert f"127.0.0.1:{port}" in str(info.value)


def test_catalog_and_gpus(alice: Client) -> None:
    assert "smollm2-135m-instruct" in {m.name for m in alice.catalog_models()}
    gpus = {g.gpu: g for g in alice.gpu_availability()}
    assert gpus["A100-80GB"].total == 4 and "CPU" in gpus


def test_validation_errors_name_the_field(alice: Client) -> None:
    with pytest.raises(ModelhostAPIError) as info:
        alice.create_llm(next(_names), gpu="NOPE-1GB", engine="simulator")
    assert info.value.status_code == 422 and info.value.param == "gpu"
    assert "A100-80GB" in info.value.message
    with pytest.raises(ModelhostAPIError) as info:
        alice.create_llm("Bad Name!", engine="simulator")
    assert info.value.status_code == 422 and info.value.param == "model_name"


def test_gpu_quota(alice: Client) -> None:
    with pytest.raises(ModelhostAPIError) as info:
        alice.create_llm(
            next(_names),
            gpu="A100-80GB",
            num_gpus=2,
            engine="simulator",
            settings={"min_instances": 0, "max_instances": 2},
        )
    assert (info.value.status_code, info.value.code) == (403, "gpu_quota_exceeded")


def test_deployment_lifecycle(alice: Client, admin: Client) -> None:
    name = next(_names)
    dep = alice.create_llm(
        name, engine="simulator", settings={"min_instances": 0, "max_instances": 1}
    )
    assert dep.full_name == f"alice/{name}" and dep.deploy_id
    dep = alice.wait_until_settled(dep.deploy_id, timeout=120, poll_interval=0.1)
    # The first replica starts even at min_instances 0 (it proves the weights load).
    assert dep.status in {"ready", "standby"}, dep.fail_reason

    assert dep.deploy_id in {d.deploy_id for d in alice.list_deployments()}
    settled = {d.deploy_id for d in alice.list_deployments(status=["ready", "standby"])}
    assert dep.deploy_id in settled
    assert dep.deploy_id not in {d.deploy_id for d in alice.list_deployments(status="errored")}
    assert dep.deploy_id in {d.deploy_id for d in admin.list_deployments(all=True)}

    updated = alice.update_deployment(dep.deploy_id, settings={"max_instances": 2})
    assert updated.settings["max_instances"] == 2
    assert alice.get_deployment(dep.deploy_id).settings["max_instances"] == 2

    assert alice.stop_deployment(dep.deploy_id).status == "stopped"
    assert alice.start_deployment(dep.deploy_id).status != "stopped"
    kinds = [e.kind for e in alice.events(dep.deploy_id)]
    assert "created" in kinds and "stopped" in kinds and all(kinds)

    with pytest.raises(ModelhostAPIError) as info:
        alice.create_llm(name, engine="simulator", settings={"min_instances": 0})
    assert info.value.status_code == 409
    assert alice.delete_deployment(dep.deploy_id) == dep.deploy_id
    again = alice.create_llm(name, engine="simulator", settings={"min_instances": 0})
    assert again.deploy_id != dep.deploy_id
    alice.delete_deployment(again.deploy_id)


def test_private_deployments_are_404_to_others(alice: Client, admin: Client) -> None:
    dep = alice.create_llm(next(_names), engine="simulator", settings={"min_instances": 0})
    created = admin.create_user("carol")
    with Client(alice.base_url, created.token) as carol:
        with pytest.raises(ModelhostAPIError) as info:
            carol.get_deployment(dep.deploy_id)
        assert info.value.status_code == 404
        with pytest.raises(ModelhostAPIError) as missing:
            carol.get_deployment("no-such-deployment")
        assert missing.value.code == info.value.code
        assert missing.value.message.replace("no-such-deployment", dep.deploy_id) == (
            info.value.message
        )
    alice.delete_deployment(dep.deploy_id)
