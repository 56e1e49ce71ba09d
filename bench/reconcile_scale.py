"""The reconciler at cluster scale (issue 14): CPU time of one reconcile pass with 1,000
replicas over 100 deployments.

1,000 real Ray actors with engines cannot run on a 2-core machine, so the replicas are the
fake backend's (tests/fake_backend.py: observations in memory, every replica ready at its first
observation) and the desired state is either the in-memory store (tests/orchestrator_fakes.py)
or the real SQL adapter on SQLite (`--store sql`, the server's own store code over 100
deployment rows and 1,000 replica rows). What is measured is the real reconciler: observe,
failure tracking, plan, apply, statuses, routing table; CPU time is the process's (every
thread: the event loop, the store thread, the worker threads), per pass.

    .venv/bin/python bench/reconcile_scale.py                 # memory store
    .venv/bin/python bench/reconcile_scale.py --store sql     # SQLite through SqlDesiredState

Writes bench/results/reconcile_scale.json. Goal: < 100 ms of CPU per steady-state pass.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fake_backend import FakeBackend  # noqa: E402
from tests.orchestrator_fakes import FakeClock, FakeRouting, MemoryStore, Row  # noqa: E402

from modelhost.orchestrator.inventory import Inventory  # noqa: E402
from modelhost.orchestrator.ports import DesiredStateStore  # noqa: E402
from modelhost.orchestrator.reconciler import Reconciler  # noqa: E402

GPU = "A100-80GB"


def memory_store(deployments: int, per: int) -> DesiredStateStore:
    store = MemoryStore()
    for i in range(deployments):
        store.add(Row(f"d{i:04d}", desired_replicas=per, owner=f"user{i % 10}", gpu=GPU))
    return store


def sql_store(deployments: int, per: int, data_dir: Path) -> DesiredStateStore:
    from modelhost.config import Settings
    from modelhost.config.catalog import build_catalog
    from modelhost.domain.autoscaling import AutoscalingSettings
    from modelhost.domain.deployment_config import DeploymentConfig
    from modelhost.domain.status import DesiredState
    from modelhost.orchestrator.store_adapter import SqlDesiredState
    from modelhost.security.secretbox import SecretBox
    from modelhost.store.db import Database
    from modelhost.store.tables import Deployment
    from modelhost.store.users import create_user

    settings = Settings(data_dir=data_dir, discover_gpus=False)
    db = Database(settings.sqlalchemy_url)
    db.migrate()
    config = DeploymentConfig(gpu=GPU, num_gpus=1, max_batch_size=8, engine="simulator")
    now = datetime.now(UTC)
    with db.session() as s:
        users = [create_user(s, f"user{i}", gpu_limit=10_000) for i in range(10)]
        s.flush()
        for i in range(deployments):
            s.add(
                Deployment(
                    id=f"d{i:04d}",
                    owner_id=users[i % 10].id,
                    model_name=f"m{i}",
                    public=False,
                    desired_state=DesiredState.RUNNING.value,
                    config=config.to_json(),
                    settings=AutoscalingSettings(min_instances=per, max_instances=per).to_dict(),
                    generation=1,
                    desired_replicas=per,
                    created_at=now,
                    updated_at=now,
                )
            )
    return SqlDesiredState(
        db,
        build_catalog(settings.catalog),
        SecretBox.from_settings(None, data_dir),
        adapter_dir=str(data_dir / "adapters"),
    )


async def run(store_kind: str, deployments: int, per: int, passes: int) -> dict[str, Any]:
    clock = FakeClock()
    backend = FakeBackend(clock.time, auto_ready=True)
    with tempfile.TemporaryDirectory() as tmp:
        if store_kind == "sql":
            store = sql_store(deployments, per, Path(tmp))
        else:
            store = memory_store(deployments, per)
        total = deployments * per
        # A cluster with exactly the GPUs the replicas need (the Ray backend's inventory is
        # device tokens of the cluster's count; ray_placement.cluster_devices).
        inventory = Inventory.build([], f"{GPU}:{total}", cpu_slots=0)
        rec = Reconciler(
            backend=backend, routing=FakeRouting(), store=store, inventory=inventory, clock=clock
        )

        async def one() -> tuple[float, float]:
            cpu, wall = time.process_time(), time.perf_counter()
            await rec.run_once()
            return (time.process_time() - cpu) * 1000, (time.perf_counter() - wall) * 1000

        first_cpu, first_wall = await one()  # starts all 1,000 replicas
        await one()  # observes them ready
        live = [o for o in backend.observe() if o.state.value == "ready"]
        steady = [await one() for _ in range(passes)]
        rec.close()
    cpu = sorted(c for c, _ in steady)
    wall = sorted(w for _, w in steady)
    return {
        "store": store_kind,
        "deployments": deployments,
        "replicas": total,
        "ready": len(live),
        "first_pass_cpu_ms": round(first_cpu, 1),
        "first_pass_wall_ms": round(first_wall, 1),
        "steady_passes": passes,
        "steady_cpu_ms_median": round(statistics.median(cpu), 2),
        "steady_cpu_ms_p95": round(cpu[int(0.95 * (len(cpu) - 1))], 2),
        "steady_cpu_ms_max": round(cpu[-1], 2),
        "steady_wall_ms_median": round(statistics.median(wall), 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", choices=("memory", "sql"), default="memory")
    p.add_argument("--deployments", type=int, default=100)
    p.add_argument("--replicas-per-deployment", type=int, default=10)
    p.add_argument("--passes", type=int, default=30)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "reconcile_scale.json")
    args = p.parse_args()
    result = asyncio.run(
        run(args.store, args.deployments, args.replicas_per_deployment, args.passes)
    )
    print(json.dumps(result, indent=2))
    existing: dict[str, Any] = {}
    if args.out.exists():
        existing = json.loads(args.out.read_text())
    existing[args.store] = result
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(existing, indent=2) + "\n")


if __name__ == "__main__":
    main()
