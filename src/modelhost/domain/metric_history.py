"""Metric history as pure arithmetic: the health series of a deployment, in time buckets.

Every stored point is an `Aggregate` of one deployment (or one of its adapters) over one
bucket `[start, start + resolution)`, aligned to the epoch. Every field of an aggregate is
additive, so two aggregates of the same bucket (two sampler passes, two server processes)
merge by adding, and fine buckets roll up into coarse ones exactly (`rollup`):

- counts (requests, generated tokens) become rates by dividing by the bucket's length;
- inference time is a histogram over fixed, log-spaced bounds (`LATENCY_BOUNDS`, about 19 %
  apart), so p50/p95 of any bucket, fine or rolled up, come from the summed histogram
  (`percentile`, interpolated inside the bucket that holds the rank: off by at most one
  bucket's width, never by averaging percentiles);
- queue time is a sum and a count (the mean);
- gauges (ready replicas, GPU utilisation) are a sum of samples and a sample count (the mean
  over the samples taken in the bucket). A gauge nobody sampled is unknown (None), never 0.

Tiers (`TIERS`) say which resolutions are kept and for how long (10 s for 6 h, 1 min for 7
days); a window's resolution (`choose_resolution`) is the coarsest needed to stay under
`MAX_POINTS`, read from the finest tier that still covers the window.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

GpuSource = Literal["nvml", "engine_busy"]

# Fixed histogram bounds for inference time: 1 ms * 2^(k/4), up to about 10 minutes. Bucket i
# holds values in (LATENCY_BOUNDS[i-1], LATENCY_BOUNDS[i]]; bucket 0 holds [0, 1 ms]; the last
# bucket, len(LATENCY_BOUNDS), holds everything longer.
LATENCY_BOUNDS: tuple[float, ...] = tuple(0.001 * 2 ** (k / 4) for k in range(77))

SERIES = (
    "requests_per_s",
    "tokens_per_s",
    "inference_time_p50_s",
    "inference_time_p95_s",
    "queue_time_s",
    "replicas",
    "gpu_utilization",
)

WINDOWS: Mapping[str, int] = {"1h": 3600, "24h": 86_400, "7d": 7 * 86_400}
MAX_POINTS = 720
# Resolutions a window may be read at (each a multiple of the tier it is read from).
NICE_RESOLUTIONS = (10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21_600, 86_400)


@dataclass(frozen=True)
class Tier:
    resolution_s: int
    keep_s: int


TIERS: tuple[Tier, ...] = (Tier(10, 6 * 3600), Tier(60, 7 * 86_400))


@dataclass(frozen=True)
class Aggregate:
    """What one deployment (or adapter) did in one bucket; every field adds up."""

    requests: int = 0
    tokens: int = 0  # generated (completion) tokens
    inference_count: int = 0
    inference_sum_s: float = 0.0
    # Sparse histogram over LATENCY_BOUNDS: bucket index -> requests.
    inference_hist: Mapping[int, int] = field(default_factory=dict)
    queue_count: int = 0
    queue_sum_s: float = 0.0
    replicas_sum: float = 0.0
    replica_samples: int = 0
    gpu_util_sum: float = 0.0
    gpu_util_samples: int = 0
    gpu_source: GpuSource | None = None

    def merge(self, other: Aggregate) -> Aggregate:
        hist = dict(self.inference_hist)
        for k, v in other.inference_hist.items():
            hist[k] = hist.get(k, 0) + v
        return Aggregate(
            requests=self.requests + other.requests,
            tokens=self.tokens + other.tokens,
            inference_count=self.inference_count + other.inference_count,
            inference_sum_s=self.inference_sum_s + other.inference_sum_s,
            inference_hist=hist,
            queue_count=self.queue_count + other.queue_count,
            queue_sum_s=self.queue_sum_s + other.queue_sum_s,
            replicas_sum=self.replicas_sum + other.replicas_sum,
            replica_samples=self.replica_samples + other.replica_samples,
            gpu_util_sum=self.gpu_util_sum + other.gpu_util_sum,
            gpu_util_samples=self.gpu_util_samples + other.gpu_util_samples,
            # A deployment's replicas all sit on one device type, so one source; a sampled
            # value wins over an unknown one.
            gpu_source=self.gpu_source or other.gpu_source,
        )


EMPTY = Aggregate()


def request(
    *, tokens: int = 0, inference_s: float | None = None, queue_s: float | None = None
) -> Aggregate:
    """One request's contribution."""
    hist: dict[int, int] = {}
    if inference_s is not None:
        hist[latency_bucket(inference_s)] = 1
    return Aggregate(
        requests=1,
        tokens=max(tokens, 0),
        inference_count=1 if inference_s is not None else 0,
        inference_sum_s=max(inference_s, 0.0) if inference_s is not None else 0.0,
        inference_hist=hist,
        queue_count=1 if queue_s is not None else 0,
        queue_sum_s=max(queue_s, 0.0) if queue_s is not None else 0.0,
    )


def gauges(
    *, replicas: int | None, gpu_util: float | None, gpu_source: GpuSource | None
) -> Aggregate:
    """One sample of the deployment's gauges (None: unknown, not counted)."""
    util = None if gpu_util is None else min(max(gpu_util, 0.0), 1.0)
    return Aggregate(
        replicas_sum=float(replicas or 0),
        replica_samples=1 if replicas is not None else 0,
        gpu_util_sum=util or 0.0,
        gpu_util_samples=1 if util is not None else 0,
        gpu_source=gpu_source if util is not None else None,
    )


def latency_bucket(seconds: float) -> int:
    """The histogram bucket of a duration (see LATENCY_BOUNDS)."""
    return bisect_left(LATENCY_BOUNDS, max(seconds, 0.0))


def percentile(hist: Mapping[int, int], q: float) -> float | None:
    """The q-quantile (0 < q <= 1) of a histogram over LATENCY_BOUNDS, interpolated linearly
    inside the bucket that holds the rank; None for an empty histogram. Values past the last
    bound answer the last bound (the most a histogram can say)."""
    total = sum(v for v in hist.values() if v > 0)
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    for idx in sorted(hist):
        count = hist[idx]
        if count <= 0:
            continue
        if seen + count >= rank:
            if idx >= len(LATENCY_BOUNDS):
                return LATENCY_BOUNDS[-1]
            lower = LATENCY_BOUNDS[idx - 1] if idx > 0 else 0.0
            upper = LATENCY_BOUNDS[idx]
            return lower + (upper - lower) * max(rank - seen, 0.0) / count
        seen += count
    return LATENCY_BOUNDS[-1]


def percentile_of_samples(samples: Sequence[float], q: float) -> float | None:
    """The q-quantile of raw samples, linearly interpolated between closest ranks (what the
    histogram approximates; used to check it)."""
    if not samples:
        return None
    ordered = sorted(samples)
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def align(t: float, resolution_s: int) -> int:
    """The start of the bucket holding epoch second `t`."""
    return math.floor(t / resolution_s) * resolution_s


def rollup(points: Iterable[tuple[int, Aggregate]], resolution_s: int) -> dict[int, Aggregate]:
    """Merge (bucket start, aggregate) points into buckets of `resolution_s` (a multiple of
    theirs)."""
    out: dict[int, Aggregate] = {}
    for start, agg in points:
        key = align(start, resolution_s)
        prev = out.get(key)
        out[key] = agg if prev is None else prev.merge(agg)
    return out


def expired_before(tier: Tier, now: float) -> int:
    """Buckets of `tier` that start before this are dropped: nothing of them is younger than
    the tier keeps."""
    return align(now - tier.keep_s, tier.resolution_s)


@dataclass(frozen=True)
class ReadPlan:
    window_s: int
    tier: Tier  # where the points are read from
    resolution_s: int  # what they are rolled up to
    start: int  # first bucket (inclusive), aligned to resolution_s
    end: int  # last bucket ends here (exclusive): only buckets complete by then


def choose_resolution(
    window_s: int, tiers: Sequence[Tier] = TIERS, max_points: int = MAX_POINTS
) -> tuple[Tier, int]:
    """The finest tier whose retention covers the window (else the longest-kept one), and the
    finest resolution, a multiple of that tier's, giving at most `max_points` points."""
    covering = [t for t in tiers if t.keep_s >= window_s]
    tier = (
        min(covering, key=lambda t: t.resolution_s)
        if covering
        else max(tiers, key=lambda t: t.keep_s)
    )
    wanted = window_s / max_points
    for res in NICE_RESOLUTIONS:
        if res >= tier.resolution_s and res % tier.resolution_s == 0 and res >= wanted:
            return tier, res
    return tier, max(tier.resolution_s, math.ceil(wanted / tier.resolution_s) * tier.resolution_s)


def plan(window_s: int, now: float, lag_s: float, tiers: Sequence[Tier] = TIERS) -> ReadPlan:
    """What to read for the window ending now. The bucket still being filled, and one that
    ended less than `lag_s` ago (the sampler may not have written its last requests yet), are
    left out rather than shown short."""
    tier, res = choose_resolution(window_s, tiers)
    end = align(now - lag_s, res)
    return ReadPlan(window_s, tier, res, end - window_s, end)


Point = tuple[int, float | None]


def series(
    buckets: Mapping[int, Aggregate],
    read: ReadPlan,
    *,
    observed: Iterable[int] | None = None,
) -> dict[str, list[Point]]:
    """The seven series over every bucket of the plan, oldest first. A bucket with no
    aggregate was not observed (the server was down, the deployment not running): every
    value there is None. `observed` adds buckets known to be observed (for an adapter: those
    its deployment has), where rates are 0 rather than None."""
    res = read.resolution_s
    seen = set(buckets) | set(observed or ())
    out: dict[str, list[Point]] = {name: [] for name in SERIES}
    for t in range(read.start, read.end, res):
        agg = buckets.get(t)
        if agg is None:
            agg = EMPTY if t in seen else None
        if agg is None:
            for name in SERIES:
                out[name].append((t, None))
            continue
        out["requests_per_s"].append((t, agg.requests / res))
        out["tokens_per_s"].append((t, agg.tokens / res))
        out["inference_time_p50_s"].append((t, percentile(agg.inference_hist, 0.5)))
        out["inference_time_p95_s"].append((t, percentile(agg.inference_hist, 0.95)))
        queue = agg.queue_sum_s / agg.queue_count if agg.queue_count else None
        out["queue_time_s"].append((t, queue))
        replicas = agg.replicas_sum / agg.replica_samples if agg.replica_samples else None
        out["replicas"].append((t, replicas))
        util = agg.gpu_util_sum / agg.gpu_util_samples if agg.gpu_util_samples else None
        out["gpu_utilization"].append((t, util))
    return out


def busy_fraction(
    before: tuple[float, float] | None, after: tuple[float, float] | None
) -> float | None:
    """An engine's busy fraction between two readings of its (busy seconds, uptime seconds)
    counters: the share of that time it had at least one request running. None when either
    reading is missing, the engine restarted (a counter went back), or no time passed."""
    if before is None or after is None:
        return None
    busy = after[0] - before[0]
    elapsed = after[1] - before[1]
    if elapsed <= 0 or busy < 0:
        return None
    return min(busy / elapsed, 1.0)
