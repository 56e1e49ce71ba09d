"""The names `/metrics` labels a deployment's series with, besides its id: the owner's username
(`user`) and `<user>/<model_name>` (`model_name`, vLLM's label for the served model).

Read from the directory's in-memory snapshot (never the database: collectors run at scrape
time). A deployment seen once keeps its names after it leaves the snapshot (deleted while a
replica still drains), so its last series do not lose them; one never seen gets "".
"""

from __future__ import annotations

from collections.abc import Callable

from modelhost.directory.snapshot import Snapshot

# (user, model_name)
Names = tuple[str, str]
UNKNOWN: Names = ("", "")


def names_of(full_name: str) -> Names:
    """`<user>/<model_name>` -> (user, model_name label)."""
    return full_name.partition("/")[0], full_name


class DeploymentNames:
    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot
        self._seen: dict[str, Names] = {}

    def __call__(self, deploy_id: str) -> Names:
        dep = self._snapshot().deployment(deploy_id)
        if dep is None:
            return self._seen.get(deploy_id, UNKNOWN)
        names = (dep.owner, dep.full_name)
        self._seen[deploy_id] = names
        return names
