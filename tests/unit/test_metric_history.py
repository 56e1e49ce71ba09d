"""Metric history's pure parts: buckets, roll-up, retention, window -> resolution, percentiles,
busy fractions; the gateway's request tally; the engine's busy clock; nvidia-smi's output."""

from __future__ import annotations

import random

import pytest

from modelhost.domain import metric_history as mh
from modelhost.domain.metric_history import Aggregate, Tier
from modelhost.engine.metrics import BusyClock
from modelhost.gateway.proxy import ForwardResult
from modelhost.gateway.resolve import Target
from modelhost.gateway.usage_meter import Tokens
from modelhost.orchestrator.backends.engine_stats import parse_json_stats
from modelhost.serve.metric_sampler import RequestTally, parse_gpu_utilization


@pytest.mark.parametrize(
    ("t", "res", "start"),
    [
        (0, 10, 0),
        (9.999, 10, 0),
        (10, 10, 10),
        (1_767_268_859.5, 60, 1_767_268_800),
        (1_767_268_860, 60, 1_767_268_860),
        (-0.5, 10, -10),
    ],
)
def test_align(t: float, res: int, start: int) -> None:
    assert mh.align(t, res) == start


@pytest.mark.parametrize(
    ("window", "tier_res", "res"),
    [
        ("1h", 10, 10),  # 360 points of the 10 s tier
        ("24h", 60, 120),  # the 10 s tier keeps 6 h: 1 min rows, 720 points of 2 min
        ("7d", 60, 900),  # 672 points of 15 min
    ],
)
def test_window_resolution(window: str, tier_res: int, res: int) -> None:
    tier, resolution = mh.choose_resolution(mh.WINDOWS[window])
    assert (tier.resolution_s, resolution) == (tier_res, res)
    assert mh.WINDOWS[window] // resolution <= mh.MAX_POINTS


def test_a_window_longer_than_every_tier_reads_the_longest_kept() -> None:
    tier, res = mh.choose_resolution(30 * 86_400, (Tier(10, 3600), Tier(60, 86_400)))
    assert tier == Tier(60, 86_400)
    assert res % 60 == 0 and 30 * 86_400 / res <= mh.MAX_POINTS


def test_plan_leaves_out_buckets_not_complete() -> None:
    now = 1_000_005.0  # 5 s into a 10 s bucket
    p = mh.plan(3600, now, lag_s=11)
    assert p.end == mh.align(now - 11, 10) == 999_990
    assert p.start == p.end - 3600
    assert p.resolution_s == 10


def test_expired_before() -> None:
    assert mh.expired_before(Tier(10, 6 * 3600), 100_005.0) == 100_005 - 21_600 - 5
    assert mh.expired_before(Tier(60, 7 * 86_400), 700_000.0) == 95_160


def _req(inference: float, tokens: int = 0, queue: float = 0.0) -> Aggregate:
    return mh.request(tokens=tokens, inference_s=inference, queue_s=queue)


def test_merge_adds_every_field() -> None:
    a = _req(0.5, tokens=10, queue=1.0).merge(
        mh.gauges(replicas=2, gpu_util=0.5, gpu_source="engine_busy")
    )
    b = _req(0.5, tokens=5, queue=3.0).merge(mh.gauges(replicas=1, gpu_util=None, gpu_source=None))
    m = a.merge(b)
    assert (m.requests, m.tokens, m.inference_count, m.queue_count) == (2, 15, 2, 2)
    assert m.queue_sum_s == 4.0 and m.inference_sum_s == 1.0
    assert m.inference_hist == {mh.latency_bucket(0.5): 2}
    assert (m.replicas_sum, m.replica_samples) == (3.0, 2)
    assert (m.gpu_util_sum, m.gpu_util_samples, m.gpu_source) == (0.5, 1, "engine_busy")


def test_rollup_is_exact_for_counts_and_histograms() -> None:
    fine = [(t, _req(0.1 * (1 + t // 10), tokens=3)) for t in range(0, 120, 10)]
    coarse = mh.rollup(fine, 60)
    assert sorted(coarse) == [0, 60]
    assert coarse[0].requests == 6 and coarse[60].tokens == 18
    # Rolling up twice (10 s -> 1 min -> 2 min) equals rolling up once.
    twice, once = mh.rollup(coarse.items(), 120)[0], mh.rollup(fine, 120)[0]
    assert twice.inference_hist == once.inference_hist
    assert (twice.requests, twice.tokens) == (once.requests, once.tokens) == (12, 36)
    assert twice.inference_sum_s == pytest.approx(once.inference_sum_s)


def test_gauges_clamp_and_unknowns() -> None:
    assert mh.gauges(replicas=None, gpu_util=None, gpu_source="nvml") == mh.EMPTY
    g = mh.gauges(replicas=0, gpu_util=1.7, gpu_source="nvml")
    assert (g.replica_samples, g.gpu_util_sum, g.gpu_source) == (1, 1.0, "nvml")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_histogram_percentiles_track_raw_samples(seed: int) -> None:
    rng = random.Random(seed)
    samples = [rng.lognormvariate(-1.0, 0.8) for _ in range(5000)]
    hist: dict[int, int] = {}
    for x in samples:
        hist[mh.latency_bucket(x)] = hist.get(mh.latency_bucket(x), 0) + 1
    for q in (0.5, 0.95):
        exact = mh.percentile_of_samples(samples, q)
        approx = mh.percentile(hist, q)
        assert exact is not None and approx is not None
        # Within one bucket's width (bounds are 2^(1/4) ~ 19 % apart).
        assert abs(approx - exact) / exact < 0.19


@pytest.mark.parametrize(
    ("hist", "q", "expected"),
    [
        ({}, 0.5, None),
        ({0: 0}, 0.5, None),
        ({0: 2}, 0.5, 0.0005),  # [0, 1 ms], half way
        ({0: 1, 1: 1}, 1.0, mh.LATENCY_BOUNDS[1]),
        ({len(mh.LATENCY_BOUNDS): 3}, 0.5, mh.LATENCY_BOUNDS[-1]),  # past the last bound
    ],
)
def test_percentile_edges(hist: dict[int, int], q: float, expected: float | None) -> None:
    got = mh.percentile(hist, q)
    assert got == pytest.approx(expected) if expected is not None else got is None


@pytest.mark.parametrize(
    ("samples", "q", "expected"),
    [([], 0.5, None), ([3.0], 0.95, 3.0), ([1.0, 2.0, 3.0, 4.0], 0.5, 2.5), ([0, 10], 0.95, 9.5)],
)
def test_percentile_of_samples(samples: list[float], q: float, expected: float | None) -> None:
    assert mh.percentile_of_samples(samples, q) == expected


def test_series_rates_nulls_and_observed_buckets() -> None:
    p = mh.ReadPlan(window_s=40, tier=Tier(10, 3600), resolution_s=10, start=0, end=40)
    buckets = {
        0: _req(0.2, tokens=20, queue=0.5).merge(
            mh.gauges(replicas=1, gpu_util=0.25, gpu_source="nvml")
        ),
        10: mh.gauges(replicas=2, gpu_util=None, gpu_source=None),
    }
    out = mh.series(buckets, p, observed=[20])
    assert out["requests_per_s"] == [(0, 0.1), (10, 0.0), (20, 0.0), (30, None)]
    assert out["tokens_per_s"][0] == (0, 2.0)
    assert out["queue_time_s"] == [(0, 0.5), (10, None), (20, None), (30, None)]
    assert out["replicas"] == [(0, 1.0), (10, 2.0), (20, None), (30, None)]
    assert out["gpu_utilization"][:2] == [(0, 0.25), (10, None)]
    p50 = out["inference_time_p50_s"][0][1]
    assert p50 is not None and 0.17 < p50 <= 0.2
    assert set(out) == set(mh.SERIES)


@pytest.mark.parametrize(
    ("before", "after", "fraction"),
    [
        (None, (1.0, 10.0), None),
        ((1.0, 10.0), None, None),
        ((1.0, 10.0), (6.0, 20.0), 0.5),
        ((1.0, 10.0), (1.0, 20.0), 0.0),
        ((1.0, 10.0), (11.0, 20.0), 1.0),
        ((5.0, 100.0), (1.0, 3.0), None),  # the engine restarted: counters went back
        ((1.0, 10.0), (1.0, 10.0), None),  # no time passed
        ((1.0, 10.0), (13.0, 20.0), 1.0),  # clamped
    ],
)
def test_busy_fraction(
    before: tuple[float, float] | None, after: tuple[float, float] | None, fraction: float | None
) -> None:
    assert mh.busy_fraction(before, after) == fraction


def test_busy_clock_counts_time_with_a_request_in_flight() -> None:
    now = [100.0]
    clock = BusyClock(lambda: now[0])
    now[0] = 102.0
    clock.enter()  # busy from 102
    now[0] = 103.0
    clock.enter()  # overlapping: still one busy span
    now[0] = 104.0
    clock.leave()
    assert clock.read() == (2.0, 4.0)  # still busy
    now[0] = 105.0
    clock.leave()  # idle from 105
    now[0] = 110.0
    assert clock.read() == (3.0, 10.0)


def test_engine_stats_carry_the_busy_clock() -> None:
    stats = parse_json_stats('{"running": 1, "waiting": 0, "busy_s": 3.5, "uptime_s": 10}')
    assert (stats.busy_s, stats.uptime_s) == (3.5, 10.0)
    bad = parse_json_stats('{"running": 1, "busy_s": "x", "uptime_s": -1}')
    assert (bad.busy_s, bad.uptime_s) == (None, None)
    assert parse_json_stats('{"running": 1, "busy_s": true}').busy_s is None


def _target(adapter_id: str | None = None) -> Target:
    return Target(
        deploy_id="d1",
        full_name="alice/m",
        status="ready",
        desired_state="running",
        fail_reason=None,
        adapter_id=adapter_id,
        adapter_name="fr" if adapter_id else None,
    )


def test_request_tally_counts_per_deployment_adapter_and_bucket() -> None:
    now = [1_000.0]
    tally = RequestTally(clock=lambda: now[0])
    done = ForwardResult(status=200, queued_s=0.5, total_s=2.5, tokens=Tokens(7, 11))
    tally.add(_target(), done)
    tally.add(_target("a1"), ForwardResult(status=200, queued_s=0.0, total_s=None))
    now[0] = 1_012.0
    tally.add(_target(), done)
    got = tally.take()
    assert set(got) == {("d1", "", 1000), ("d1", "a1", 1000), ("d1", "", 1010)}
    first = got[("d1", "", 1000)]
    assert (first.requests, first.tokens, first.inference_count, first.queue_count) == (2, 11, 1, 2)
    assert first.inference_sum_s == 2.0  # arrival to last byte, less the queue
    assert first.inference_hist == {mh.latency_bucket(2.0): 1}
    assert got[("d1", "a1", 1000)].requests == 1
    assert tally.take() == {}


def test_parse_gpu_utilization() -> None:
    text = "0, 37\n1, [N/A]\n2, 100\nbad line\n3, 140\n"
    assert parse_gpu_utilization(text) == {0: 37.0, 2: 100.0}
