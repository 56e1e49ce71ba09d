"""The names /metrics gives a deployment's series: from the directory snapshot, remembered
after the deployment leaves it."""

from __future__ import annotations

from typing import Any, cast

from modelhost.directory.metric_labels import DeploymentNames, names_of
from modelhost.directory.snapshot import Snapshot


class _Dep:
    owner = "alice"
    full_name = "alice/m1"


class _Snap:
    def __init__(self) -> None:
        self.deployments: dict[str, Any] = {"d1": _Dep()}

    def deployment(self, deploy_id: str) -> Any:
        return self.deployments.get(deploy_id)


def test_names_come_from_the_snapshot_and_outlive_it() -> None:
    snap = _Snap()
    names = DeploymentNames(lambda: cast(Snapshot, snap))
    assert names("d1") == ("alice", "alice/m1")
    assert names("nope") == ("", "")
    snap.deployments.clear()  # deleted while a replica still drains
    assert names("d1") == ("alice", "alice/m1")


def test_names_of_a_full_name() -> None:
    assert names_of("bob/llama") == ("bob", "bob/llama")
