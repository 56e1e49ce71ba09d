"""bench/autoscale.py's simulation: runs a short trace end to end and its accounting holds."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

# bench/ is a folder of scripts, not a package: its modules import each other by bare name.
BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import autoscale  # noqa: E402
from autoscale_oracle import clairvoyant, need_per_second  # noqa: E402
from autoscale_sim import (  # noqa: E402
    Controller,
    ReplicaModel,
    SimResult,
    Simulation,
    peak_replicas,
)
from modelhost.autoscaler import kpa, policy  # noqa: E402
from modelhost.autoscaler.policy import (  # noqa: E402
    LoadSignals,
    ScalingContext,
    ScalingDecision,
)
from modelhost.domain.autoscaling import AutoscalingSettings  # noqa: E402
from traces import (  # noqa: E402
    Request,
    Trace,
    bursty,
    read_azure_trace,
    write_azure_sample,
    write_azure_trace,
)

MODEL = ReplicaModel(max_batch_size=2, cold_start_s=20.0, tpot_base_s=0.1, tpot_growth=0.5)


def static(count: int) -> Controller[int]:
    def decide(context: ScalingContext, state: int) -> tuple[ScalingDecision, int]:
        return ScalingDecision(state, "static"), state

    return Controller("static", decide, count)


def trace_of(*requests: tuple[float, int], duration: float = 100.0) -> Trace:
    # 512 context tokens = 1 prefill step; so steps = 1 + output tokens.
    return Trace("t", tuple(Request(at, 512, out) for at, out in requests), duration)


def run(
    trace: Trace, controller: Callable[[ScalingContext], ScalingDecision], initial: int
) -> SimResult:
    settings = AutoscalingSettings(min_instances=0, max_instances=4)
    return Simulation(trace, controller, MODEL, settings, 2.0, initial, "x").run()


def test_single_request_service_time_is_the_step_model() -> None:
    result = run(trace_of((1.0, 9)), static(1), 1)
    assert result.queue_wait_s == (0.0,)
    assert result.e2e_s[0] == pytest.approx(10 * MODEL.step_s(1))


def test_batching_slows_each_step_and_shares_the_replica() -> None:
    result = run(trace_of((1.0, 9), (1.0, 9)), static(1), 1)
    assert result.queue_wait_s == (0.0, 0.0)
    assert result.e2e_s == pytest.approx((10 * MODEL.step_s(2),) * 2)


def test_max_batch_size_queues_the_third_request_fifo() -> None:
    result = run(trace_of((1.0, 9), (1.0, 19), (1.0, 9)), static(1), 1)
    first_done = 10 * MODEL.step_s(2)
    assert result.queue_wait_s[:2] == (0.0, 0.0)
    assert result.queue_wait_s[2] == pytest.approx(first_done)


def test_static_gpu_hours_are_replicas_times_time() -> None:
    result = run(trace_of((1.0, 9), (50.0, 9)), static(3), 3)
    assert result.end_s == pytest.approx(100.0)
    assert result.gpu_hours == pytest.approx(3 * 100.0 / 3600.0)
    assert result.replica_starts == 0


def test_cold_start_from_zero_holds_then_serves() -> None:
    controller = Controller("ours", policy.decide, policy.PolicyState())
    result = run(trace_of((5.0, 9), (6.0, 9)), controller, 0)
    assert result.held_cold == 2
    # The activator asks at once on the first arrival, so the wait is exactly the cold start.
    assert result.queue_wait_s[0] == pytest.approx(MODEL.cold_start_s)
    assert result.queue_wait_s[1] == pytest.approx(MODEL.cold_start_s - 1.0)
    assert result.replica_starts >= 1
    # Billed from the start at t=5, not before.
    assert result.gpu_hours <= (result.end_s - 5.0) * result.max_replicas / 3600.0


@pytest.mark.parametrize("name", ["ours", "kpa"])
def test_short_trace_end_to_end_accounting(name: str) -> None:
    trace = bursty(seed=3, duration_s=600.0, peak_rps=3.0)
    model = ReplicaModel(max_batch_size=8, cold_start_s=10.0)
    controller: Callable[[ScalingContext], ScalingDecision] = (
        Controller(name, policy.decide, policy.PolicyState())
        if name == "ours"
        else Controller(name, kpa.decide, kpa.KpaState())
    )
    settings = AutoscalingSettings(min_instances=0, max_instances=6)
    result = Simulation(trace, controller, model, settings, 2.0, 0, name).run()
    n = len(trace.requests)
    assert n > 100
    assert len(result.queue_wait_s) == len(result.e2e_s) == n
    assert all(not math.isnan(e) for e in result.e2e_s)  # every request finished
    assert all(w >= 0 for w in result.queue_wait_s)
    for request, wait, e2e in zip(trace.requests, result.queue_wait_s, result.e2e_s, strict=True):
        # Never faster than alone on a replica, and the wait is part of the latency.
        assert e2e >= wait + model.steps(request) * model.step_s(1) - 1e-9
    # GPU time is bounded by the most replicas ever held over the whole run, and covers at
    # least the work done (each request occupied one of max_batch_size slots).
    assert result.gpu_hours <= result.max_replicas * result.end_s / 3600.0 + 1e-9
    busy_slot_s = sum(e - w for e, w in zip(result.e2e_s, result.queue_wait_s, strict=True))
    assert result.gpu_hours * 3600.0 >= busy_slot_s / model.max_batch_size
    assert result.max_replicas <= settings.max_instances
    assert result.scale_ups >= 1 and result.replica_starts >= 1


def test_peak_replicas_fits_the_busiest_minute_at_full_batch() -> None:
    model = ReplicaModel(max_batch_size=4)
    step = model.step_s(4)
    # 60 requests in the first minute, each 99 + 1 steps: load = 60 * 100 * step / 60 s.
    busy = Trace("b", tuple(Request(i, 512, 99) for i in range(60)), 600.0)
    assert peak_replicas(busy, model) == math.ceil(60 * 100 * step / 60.0 / 4)


def test_azure_format_round_trips(tmp_path: Path) -> None:
    requests = (Request(0.0, 100, 10), Request(0.1234567, 2000, 1), Request(61.5, 7, 300))
    path = tmp_path / "trace.csv"
    write_azure_trace(path, requests, datetime(2023, 11, 16, 18, 15, 46))
    header = path.read_text().splitlines()[0]
    assert header == "TIMESTAMP,ContextTokens,GeneratedTokens"
    trace = read_azure_trace(path)
    assert [r.arrival for r in trace.requests] == pytest.approx([0.0, 0.1234567, 61.5], abs=1e-5)
    assert [(r.context_tokens, r.output_tokens) for r in trace.requests] == [
        (100, 10),
        (2000, 1),
        (7, 300),
    ]


def test_azure_reader_rejects_other_csvs(tmp_path: Path) -> None:
    path = tmp_path / "other.csv"
    path.write_text("time,tokens\n1,2\n")
    with pytest.raises(ValueError, match="missing columns"):
        read_azure_trace(path)


def test_cli_runs_an_azure_sample_and_writes_json(tmp_path: Path) -> None:
    sample = tmp_path / "azure_sample.csv"
    assert autoscale.main(["--write-azure-sample", str(sample)]) == 0
    out = tmp_path / "autoscale.json"
    autoscale.main(
        ["--traces", "", "--azure-trace", str(sample), "--out", str(out), "--cold-start-s", "10"]
    )
    document = json.loads(out.read_text())
    (entry,) = document["traces"]
    assert entry["trace"] == "azure_sample"
    assert set(entry["results"]) == {"ours", "kpa", "oracle", "static"}
    static_run = entry["results"]["static"]
    assert static_run["gpu_hours"] == pytest.approx(
        entry["static_replicas"] * static_run["end_s"] / 3600.0
    )
    assert entry["gpu_hours_ours_over_static"] == pytest.approx(
        entry["results"]["ours"]["gpu_hours"] / static_run["gpu_hours"]
    )


def test_write_azure_sample_is_seeded(tmp_path: Path) -> None:
    first = write_azure_sample(tmp_path / "a.csv")
    second = write_azure_sample(tmp_path / "b.csv")
    assert first == second
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()


def test_clairvoyant_reference_orders_replicas_a_cold_start_ahead() -> None:
    model = ReplicaModel(max_batch_size=4, cold_start_s=20.0, tpot_base_s=0.1, tpot_growth=0.0)
    # 60 requests of 1 + 99 steps (10 s each) arriving over 30 s from t=100: 20 slot-seconds
    # per second on 4-slot replicas at 90% -> 6 replicas around t=100..130, none long before.
    burst = tuple(Request(100.0 + i * 0.5, 512, 99) for i in range(60))
    trace = Trace("b", burst, 300.0)
    need = need_per_second(trace, model, 0.9)
    assert max(need) >= 3
    assert need[50] == 0
    controller = clairvoyant(trace, model, 2.0)
    settings = AutoscalingSettings(min_instances=0, max_instances=8)
    for now, expected_positive in ((50.0, False), (80.0, True), (200.0, False)):
        context = ScalingContext(now, settings, 4, 0, 0, LoadSignals(), 8, None)
        assert (controller(context).desired > 0) == expected_positive, now
    result = Simulation(trace, clairvoyant(trace, model, 2.0), model, settings, 2.0, 0, "o").run()
    # Ready when the burst arrives: nobody waits for a cold start.
    assert result.held_cold == 0
    assert max(result.queue_wait_s) < model.cold_start_s
