"""Table tests of the planner's rules (modelhost.orchestrator.planner)."""

from __future__ import annotations

import random

import pytest

from modelhost.domain.replicas import LaunchSpec, ReplicaState
from modelhost.orchestrator.inventory import Inventory
from modelhost.orchestrator.planner import plan, track_failures
from modelhost.orchestrator.types import (
    Action,
    DesiredDeployment,
    DrainReplica,
    FailureHistory,
    MarkErrored,
    ReplicaObservation,
    ReportPending,
    RestartPolicy,
    StartReplica,
    StopReplica,
)

S, R, D, X, F = (
    ReplicaState.STARTING,
    ReplicaState.READY,
    ReplicaState.DRAINING,
    ReplicaState.STOPPED,
    ReplicaState.FAILED,
)
POLICY = RestartPolicy(backoff_base_s=1.0, backoff_max_s=8.0, max_start_failures=3)
NOW = 1000.0
INV = Inventory.build([], "A100-80GB:2,H100-80GB:4", cpu_slots=3)


def launch(gpu: str = "CPU", num: int = 1) -> LaunchSpec:
    return LaunchSpec(
        engine="simulator", served_model_name="u/m", max_batch_size=8, gpu_type=gpu, num_gpus=num
    )


def dep(deploy_id: str, n: int, gen: int = 1, gpu: str = "CPU", num: int = 1) -> DesiredDeployment:
    return DesiredDeployment(deploy_id, gen, n, launch(gpu, num))


def obs(
    rid: str,
    deploy_id: str,
    state: ReplicaState,
    devices: tuple[str, ...] = (),
    gen: int = 1,
    started: float = 0.0,
) -> ReplicaObservation:
    return ReplicaObservation(
        replica_id=rid,
        deploy_id=deploy_id,
        generation=gen,
        state=state,
        port=1,
        pid=1,
        devices=devices,
        started_at=started,
        ready_at=started + 1 if state == R else None,
    )


def run(
    desired: list[DesiredDeployment],
    observed: list[ReplicaObservation],
    failures: dict[str, FailureHistory] | None = None,
    now: float = NOW,
    inv: Inventory = INV,
) -> list[Action]:
    return plan(desired, observed, inv, failures or {}, now, POLICY)


def summary(actions: list[Action]) -> list[tuple[str, ...]]:
    """Actions without launch specs and reasons, for compact expectations."""
    out: list[tuple[str, ...]] = []
    for a in actions:
        if isinstance(a, StartReplica):
            out.append(("start", a.deploy_id, str(a.generation), ",".join(a.devices)))
        elif isinstance(a, DrainReplica):
            out.append(("drain", a.replica_id))
        elif isinstance(a, StopReplica):
            out.append(("stop", a.replica_id))
        elif isinstance(a, MarkErrored):
            out.append(("errored", a.deploy_id))
        elif isinstance(a, ReportPending):
            out.append(("pending", a.deploy_id, str(a.pending)))
    return out


CASES: list[
    tuple[str, list[DesiredDeployment], list[ReplicaObservation], list[tuple[str, ...]]]
] = [
    (
        "fresh deployment starts all",
        [dep("a", 2)],
        [],
        [("start", "a", "1", "cpu#0"), ("start", "a", "1", "cpu#1")],
    ),
    (
        "at desired: nothing",
        [dep("a", 2)],
        [obs("r1", "a", R, ("cpu#0",)), obs("r2", "a", S, ("cpu#1",))],
        [],
    ),
    ("zero desired, nothing running: nothing", [dep("a", 0)], [], []),
    (
        "surplus: starting stopped first, then newest ready drained",
        [dep("a", 1)],
        [
            obs("r1", "a", R, ("cpu#0",), started=1),
            obs("r2", "a", R, ("cpu#1",), started=2),
            obs("r3", "a", S, ("cpu#2",), started=0),
        ],
        [("stop", "r3"), ("drain", "r2")],
    ),
    (
        "scale to zero drains ready, stops starting",
        [dep("a", 0)],
        [obs("r1", "a", R, ("cpu#0",)), obs("r2", "a", S, ("cpu#1",))],
        [("stop", "r2"), ("drain", "r1")],
    ),
    (
        "draining replicas are left alone and not counted",
        [dep("a", 1)],
        [obs("r1", "a", D, ("cpu#0",))],
        [("start", "a", "1", "cpu#1")],
    ),
    (
        "deleted deployment: all drained or stopped",
        [],
        [
            obs("r1", "a", R, ("cpu#0",)),
            obs("r2", "a", S, ("cpu#1",)),
            obs("r3", "a", D, ("cpu#2",)),
            obs("r4", "a", X),
        ],
        [("drain", "r1"), ("stop", "r2")],
    ),
    (
        "failed replica is replaced, its devices are free again",
        [dep("a", 1)],
        [obs("r1", "a", F, ("cpu#0",))],
        [("start", "a", "1", "cpu#0")],
    ),
    (
        "rolling: new generation starts first, old keeps serving",
        [dep("a", 2, gen=2)],
        [obs("o1", "a", R, ("cpu#0",)), obs("o2", "a", R, ("cpu#1",))],
        [("start", "a", "2", "cpu#2"), ("pending", "a", "1")],
    ),
    (
        "rolling: one new ready -> one old drained (oldest first)",
        [dep("a", 2, gen=2)],
        [
            obs("o1", "a", R, ("cpu#0",), started=5),
            obs("o2", "a", R, ("cpu#1",), started=3),
            obs("n1", "a", R, ("cpu#2",), gen=2),
        ],
        [("drain", "o2"), ("pending", "a", "1")],
    ),
    (
        "rolling: old starting replicas are stopped at once",
        [dep("a", 1, gen=2)],
        [obs("o1", "a", S, ("cpu#0",)), obs("n1", "a", S, ("cpu#1",), gen=2)],
        [("stop", "o1")],
    ),
    (
        "rolling done: remaining old drained",
        [dep("a", 1, gen=2)],
        [obs("o1", "a", R, ("cpu#0",)), obs("n1", "a", R, ("cpu#1",), gen=2)],
        [("drain", "o1")],
    ),
    (
        "rolling without room: pending, and one old drained to make room",
        [dep("g", 2, gen=2, gpu="A100-80GB")],
        [obs("o1", "g", R, ("A100-80GB#0",)), obs("o2", "g", R, ("A100-80GB#1",))],
        [("pending", "g", "2"), ("drain", "o1")],
    ),
    (
        "rolling without room, an old one already draining: wait",
        [dep("g", 2, gen=2, gpu="A100-80GB")],
        [obs("o1", "g", D, ("A100-80GB#0",)), obs("o2", "g", R, ("A100-80GB#1",))],
        [("pending", "g", "2")],
    ),
    (
        "multi-GPU replicas get disjoint devices",
        [dep("h", 2, gpu="H100-80GB", num=2)],
        [],
        [
            ("start", "h", "1", "H100-80GB#0,H100-80GB#1"),
            ("start", "h", "1", "H100-80GB#2,H100-80GB#3"),
        ],
    ),
    (
        "capacity short: start what fits, report the rest",
        [dep("g", 3, gpu="A100-80GB")],
        [],
        [
            ("start", "g", "1", "A100-80GB#0"),
            ("start", "g", "1", "A100-80GB#1"),
            ("pending", "g", "1"),
        ],
    ),
    (
        "devices held by other deployments are not given out",
        [dep("b", 1, gpu="A100-80GB")],
        [obs("r1", "a", R, ("A100-80GB#0",)), obs("r2", "zz", D, ("A100-80GB#1",))],
        [("pending", "b", "1"), ("drain", "r1")],
    ),
    (
        "deployments share the pool in deploy_id order",
        [dep("b", 2, gpu="A100-80GB"), dep("a", 1, gpu="A100-80GB")],
        [],
        [
            ("start", "a", "1", "A100-80GB#0"),
            ("start", "b", "1", "A100-80GB#1"),
            ("pending", "b", "1"),
        ],
    ),
]


@pytest.mark.parametrize(
    ("name", "desired", "observed", "expected"), CASES, ids=[c[0] for c in CASES]
)
def test_rules(
    name: str,
    desired: list[DesiredDeployment],
    observed: list[ReplicaObservation],
    expected: list[tuple[str, ...]],
) -> None:
    assert summary(run(desired, observed)) == expected


def test_no_device_is_given_twice_and_ids_are_unique() -> None:
    desired = [
        dep(f"d{i}", 3, gpu=g, num=n)
        for i, (g, n) in enumerate(
            [("H100-80GB", 2), ("H100-80GB", 1), ("CPU", 1), ("A100-80GB", 1)]
        )
    ]
    actions = run(desired, [obs("x", "d1", R, ("H100-80GB#1",))])
    starts = [a for a in actions if isinstance(a, StartReplica)]
    devices = [d for a in starts for d in a.devices]
    assert len(devices) == len(set(devices))
    assert "H100-80GB#1" not in devices
    assert len({a.replica_id for a in starts}) == len(starts)
    for a in starts:
        assert {INV.type_of(d) for d in a.devices} == {a.launch.gpu_type}
        assert len(a.devices) == a.launch.num_gpus


def test_deterministic_whatever_the_input_order() -> None:
    desired = [dep("a", 2), dep("b", 1, gpu="A100-80GB"), dep("c", 0)]
    observed = [
        obs("r1", "a", R, ("cpu#0",)),
        obs("r2", "c", R, ("cpu#1",)),
        obs("r3", "zz", S, ("cpu#2",)),
        obs("r4", "b", F, ("A100-80GB#0",)),
    ]
    first = run(desired, observed)
    for seed in range(5):
        rnd = random.Random(seed)
        d, o = desired[:], observed[:]
        rnd.shuffle(d)
        rnd.shuffle(o)
        assert run(d, o) == first


def test_new_replica_ids_avoid_existing_ones() -> None:
    first = run([dep("a", 1)], [])
    start = first[0]
    assert isinstance(start, StartReplica)
    # Same plan input, but the id it would pick is already taken (e.g. a failed one).
    again = run([dep("a", 2)], [obs(start.replica_id, "a", F)])
    ids = [a.replica_id for a in again if isinstance(a, StartReplica)]
    assert start.replica_id not in ids and len(set(ids)) == 2


@pytest.mark.parametrize(
    ("failures", "now", "starts"),
    [
        (1, NOW + 0.5, False),  # 1 s backoff after the first failure
        (1, NOW + 1.0, True),
        (3, NOW + 3.9, False),  # 4 s after the third
        (3, NOW + 4.0, True),
        (10, NOW + 7.9, False),  # capped at backoff_max_s = 8
        (10, NOW + 8.0, True),
    ],
)
def test_restart_backoff(failures: int, now: float, starts: bool) -> None:
    history = {"a": FailureHistory(start_failures=0, failures=failures, last_failure_at=NOW)}
    actions = run([dep("a", 1)], [obs("r1", "a", F, ("cpu#0",))], history, now=now)
    assert any(isinstance(a, StartReplica) for a in actions) is starts


def test_backoff_does_not_hold_back_scale_down() -> None:
    history = {"a": FailureHistory(failures=5, last_failure_at=NOW)}
    actions = run([dep("a", 0)], [obs("r1", "a", R, ("cpu#0",))], history)
    assert summary(actions) == [("drain", "r1")]


def test_repeated_start_failures_mark_errored_and_start_nothing() -> None:
    reason = "could not download meta-llama/Llama-2-7b-chat-hf: no network access"
    history = {
        "a": FailureHistory(
            start_failures=3, failures=3, last_failure_at=0.0, last_fail_reason=reason
        )
    }
    actions = run([dep("a", 1)], [obs("r1", "a", F, ("cpu#0",))], history)
    assert actions == [MarkErrored("a", reason)]
    below = {"a": FailureHistory(start_failures=2, failures=2, last_failure_at=0.0)}
    assert summary(run([dep("a", 1)], [], below)) == [("start", "a", "1", "cpu#0")]


def test_errored_rolling_update_keeps_old_generation_serving() -> None:
    history = {
        "a": FailureHistory(
            start_failures=3, failures=3, last_failure_at=0.0, last_fail_reason="bad engine_args"
        )
    }
    actions = run([dep("a", 1, gen=2)], [obs("o1", "a", R, ("cpu#0",))], history)
    assert actions == [MarkErrored("a", "bad engine_args")]


@pytest.mark.parametrize(
    ("d", "observed", "reason"),
    [
        (dep("g", 3, gpu="A100-80GB"), [], "1 of 3 replicas pending: only 2 free A100-80GB GPUs"),
        (
            dep("g", 2, gpu="A100-80GB"),
            [obs("x", "g", R, ("A100-80GB#0",), gen=0)],
            "1 of 2 replicas pending: only 1 free A100-80GB GPU",
        ),
        (
            dep("h", 2, gpu="H100-80GB", num=3),
            [],
            "1 of 2 replicas pending: needs 6 H100-80GB GPUs (3 per replica), only 4 free",
        ),
        (
            dep("h", 1, gpu="H100-80GB", num=8),
            [],
            "1 of 1 replicas pending: each replica needs 8 H100-80GB GPUs, this server has 4",
        ),
        (
            dep("l", 1, gpu="L4-24GB"),
            [],
            "1 of 1 replicas pending: this server has no L4-24GB GPUs",
        ),
        (dep("c", 5), [], "2 of 5 replicas pending: only 3 free CPU slots"),
    ],
)
def test_pending_reasons(
    d: DesiredDeployment, observed: list[ReplicaObservation], reason: str
) -> None:
    pending = [a for a in run([d], observed) if isinstance(a, ReportPending)]
    assert [p.reason for p in pending] == [reason]


def test_cpu_replicas_take_one_slot_whatever_num_gpus() -> None:
    actions = run([dep("c", 1, num=4)], [])
    assert summary(actions) == [("start", "c", "1", "cpu#0")]


def test_backoff_policy_values() -> None:
    p = RestartPolicy(backoff_base_s=2.0, backoff_max_s=60.0)
    assert [p.backoff_s(n) for n in (0, 1, 2, 3, 5, 6, 1000)] == [0, 2, 4, 8, 32, 60, 60]


def _failed(rid: str, ready: bool, at: float, reason: str) -> ReplicaObservation:
    return ReplicaObservation(
        rid,
        "a",
        1,
        F,
        1,
        1,
        (),
        started_at=at - 10,
        ready_at=at - 5 if ready else None,
        exited_at=at,
        fail_reason=reason,
    )


def test_track_failures_counts_each_transition_once() -> None:
    o1 = _failed("r1", False, 100.0, "boom")
    h = track_failures({}, {"r1": S}, [o1], POLICY)
    assert h["a"] == FailureHistory(1, 1, 100.0, "boom")
    # Still reported failed on the next pass: not counted again.
    assert track_failures(h, {"r1": F}, [o1], POLICY) == h
    o2 = _failed("r2", False, 110.0, "boom again")
    h = track_failures(h, {"r1": F}, [o1, o2], POLICY)
    assert h["a"] == FailureHistory(2, 2, 110.0, "boom again")
    # A replica that becomes ready resets the start failures, not the crash backoff.
    ready = obs("r3", "a", R)
    h = track_failures(h, {"r1": F, "r2": F, "r3": S}, [o1, o2, ready], POLICY)
    assert (h["a"].start_failures, h["a"].failures) == (0, 2)
    # It crashes soon after: part of the loop, backoff grows, start_failures stays 0.
    crash = _failed("r3", True, 120.0, "segfault")
    h = track_failures(h, {"r3": R}, [crash], POLICY)
    assert (h["a"].start_failures, h["a"].failures) == (0, 3)


def test_crash_after_serving_long_restarts_the_backoff() -> None:
    start = FailureHistory(start_failures=0, failures=4, last_failure_at=0.0)
    crash = ReplicaObservation(
        "r",
        "a",
        1,
        F,
        1,
        1,
        (),
        started_at=0.0,
        ready_at=10.0,
        exited_at=10.0 + POLICY.stable_after_s,
        fail_reason="oom",
    )
    assert start.after_failure(crash, POLICY).failures == 1


# --- Capacity that cannot be had: deployments at zero, and the per-user CPU share -------------

ONE_A100 = Inventory.build([], "A100-80GB:1", cpu_slots=2)


def user_dep(deploy_id: str, n: int, owner: str, limit: int | None = 1) -> DesiredDeployment:
    return DesiredDeployment(deploy_id, 1, n, launch(), owner=owner, cpu_slot_limit=limit)


BLOCKED_CASES: list[tuple[str, list[DesiredDeployment], list[ReplicaObservation], list[str]]] = [
    (
        "issue 9 item 5: min 2 behind a deployment holding the only A100",
        [dep("a", 1, gpu="A100-80GB"), dep("b", 2, gpu="A100-80GB")],
        [obs("r1", "a", R, ("A100-80GB#0",))],
        ["b 2 2 of 2 replicas pending: only 0 free A100-80GB GPUs"],
    ),
    (
        "at zero, its first replica would not fit: reported, none pending",
        [dep("a", 1, gpu="A100-80GB"), dep("z", 0, gpu="A100-80GB")],
        [obs("r1", "a", R, ("A100-80GB#0",))],
        ["z 0 no replica can start now: only 0 free A100-80GB GPUs"],
    ),
    (
        "at zero with room for its first replica: nothing reported",
        [dep("z", 0, gpu="A100-80GB")],
        [],
        [],
    ),
    (
        "at zero, the device is taken by another deployment's start in this very pass",
        [dep("a", 1, gpu="A100-80GB"), dep("0z", 0, gpu="A100-80GB")],
        [],
        ["0z 0 no replica can start now: only 0 free A100-80GB GPUs"],
    ),
    (
        "at zero, a replica still on its way out: no report (it is not blocked, it is leaving)",
        [dep("z", 0, gpu="A100-80GB")],
        [obs("r1", "z", R, ("A100-80GB#0",))],
        [],
    ),
    (
        "at zero on CPU, no slot free",
        [dep("c", 2), dep("z", 0)],
        [],
        ["z 0 no replica can start now: only 0 free CPU slots"],
    ),
    (
        "issue 9 item 10: alice's second deployment waits for her share, bob's starts",
        [user_dep("a1", 1, "alice"), user_dep("a2", 1, "alice"), user_dep("b1", 1, "bob")],
        [],
        ["a2 1 1 of 1 replicas pending: alice already holds 1 CPU slot, the limit per user"],
    ),
    (
        "the share counts replicas already running, draining ones included",
        [user_dep("a1", 1, "alice"), user_dep("a2", 1, "alice")],
        [obs("r1", "a1", D, ("cpu#0",))],
        [
            "a1 1 1 of 1 replicas pending: alice already holds 1 CPU slot, the limit per user",
            "a2 1 1 of 1 replicas pending: alice already holds 1 CPU slot, the limit per user",
        ],
    ),
    (
        "at zero, the owner's share is in use: a request could not start one either",
        [user_dep("a1", 1, "alice"), user_dep("a2", 0, "alice")],
        [obs("r1", "a1", R, ("cpu#0",))],
        ["a2 0 no replica can start now: alice already holds 1 CPU slot, the limit per user"],
    ),
    (
        "no limit (an admin's deployments) takes what is free",
        [user_dep("a1", 2, "root", None), user_dep("a2", 1, "root", None)],
        [],
        ["a2 1 1 of 1 replicas pending: only 0 free CPU slots"],
    ),
]


@pytest.mark.parametrize(
    ("name", "desired", "observed", "expected"),
    BLOCKED_CASES,
    ids=[c[0] for c in BLOCKED_CASES],
)
def test_capacity_that_cannot_be_had_is_reported(
    name: str,
    desired: list[DesiredDeployment],
    observed: list[ReplicaObservation],
    expected: list[str],
) -> None:
    actions = run(desired, observed, inv=ONE_A100)
    pending = [
        f"{a.deploy_id} {a.pending} {a.reason}" for a in actions if isinstance(a, ReportPending)
    ]
    assert pending == expected


def test_cpu_share_limits_starts_across_an_owners_deployments() -> None:
    actions = run(
        [user_dep("a1", 2, "alice", 2), user_dep("a2", 2, "alice", 2), user_dep("b1", 1, "bob", 2)],
        [],
    )
    starts = [a.deploy_id for a in actions if isinstance(a, StartReplica)]
    assert starts == ["a1", "a1", "b1"]


def test_rolling_replacement_within_the_cpu_share_drains_the_old_replica_for_room() -> None:
    # alice's only slot is held by the old generation: the new one waits, and the old one is
    # drained to make room (one at a time), as when devices are short.
    actions = run(
        [DesiredDeployment("a1", 2, 1, launch(), owner="alice", cpu_slot_limit=1)],
        [obs("o1", "a1", R, ("cpu#0",))],
    )
    assert summary(actions) == [("pending", "a1", "1"), ("drain", "o1")]


def test_a_zero_deployment_that_is_errored_is_not_reported() -> None:
    failed = FailureHistory(start_failures=3, failures=3, last_failure_at=0.0)
    actions = run([dep("a", 1), dep("z", 0)], [], failures={"z": failed}, inv=ONE_A100)
    assert not [a for a in actions if isinstance(a, ReportPending) and a.deploy_id == "z"]
