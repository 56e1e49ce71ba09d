"""Request traces for bench/autoscale.py: seeded synthetic ones and the Azure LLM trace format.

A trace is a time-ordered list of requests (arrival second, context tokens, generated tokens)
plus its nominal duration. The synthetic shapes are non-homogeneous Poisson processes drawn by
thinning from a rate function; token counts are log-normal with medians near those of the public
Azure LLM inference trace (2023, conversation: ~1k context, ~150 generated tokens).
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


@dataclass(frozen=True)
class Request:
    arrival: float
    context_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class Trace:
    name: str
    requests: tuple[Request, ...]
    duration_s: float


@dataclass(frozen=True)
class TokenShape:
    context_median: float = 1000.0
    context_sigma: float = 0.8
    output_median: float = 150.0
    output_sigma: float = 0.7


def _lognormal_int(rng: random.Random, median: float, sigma: float, low: int, high: int) -> int:
    return min(high, max(low, round(rng.lognormvariate(math.log(median), sigma))))


def poisson_trace(
    name: str,
    rate: Callable[[float], float],
    max_rate: float,
    duration_s: float,
    rng: random.Random,
    tokens: TokenShape = TokenShape(),
) -> Trace:
    """Draw arrivals with rate `rate(t)` <= max_rate by thinning (Lewis & Shedler)."""
    requests: list[Request] = []
    t = 0.0
    while True:
        t += rng.expovariate(max_rate)
        if t >= duration_s:
            break
        if rng.random() * max_rate <= rate(t):
            requests.append(
                Request(
                    t,
                    _lognormal_int(rng, tokens.context_median, tokens.context_sigma, 16, 8000),
                    _lognormal_int(rng, tokens.output_median, tokens.output_sigma, 1, 2048),
                )
            )
    return Trace(name, tuple(requests), duration_s)


def _piecewise(levels: list[tuple[float, float]]) -> Callable[[float], float]:
    """Rate function from (start time, rate) steps, sorted by start time."""
    starts = [start for start, _ in levels]

    def rate(t: float) -> float:
        lo, hi = 0, len(starts) - 1
        while lo < hi:  # last step whose start <= t
            mid = (lo + hi + 1) // 2
            if starts[mid] <= t:
                lo = mid
            else:
                hi = mid - 1
        return levels[lo][1]

    return rate


def bursty(seed: int, duration_s: float, peak_rps: float) -> Trace:
    """Markov-modulated load: phases of exponential length (mean 5 min) at a random level
    between 10% and 100% of peak, like a service whose users come and go in groups."""
    rng = random.Random(seed)
    levels: list[tuple[float, float]] = []
    t = 0.0
    while t < duration_s:
        levels.append((t, peak_rps * rng.choice((0.1, 0.25, 0.5, 0.75, 1.0))))
        t += rng.expovariate(1 / 300.0)
    return poisson_trace("bursty", _piecewise(levels), peak_rps, duration_s, rng)


def diurnal(seed: int, duration_s: float, peak_rps: float) -> Trace:
    """One day compressed into the trace: a night trough near 5% of peak rising to a midday
    peak, with +-15% noise per 5-minute step (real daily traffic is never a clean sine)."""
    rng = random.Random(seed)
    steps = max(1, math.ceil(duration_s / 300.0))
    noise = [rng.uniform(0.85, 1.15) for _ in range(steps + 1)]

    def rate(t: float) -> float:
        day = (1 - math.cos(2 * math.pi * t / duration_s)) / 2
        return min(peak_rps, peak_rps * (0.05 + 0.95 * math.pow(day, 1.5)) * noise[int(t // 300.0)])

    return poisson_trace("diurnal", rate, peak_rps, duration_s, rng)


def spiky(seed: int, duration_s: float, peak_rps: float) -> Trace:
    """A steady 30%-of-peak baseline with sudden spikes to peak (every ~20 min on average,
    each 1-5 min long): a batch job or a viral link hitting an otherwise quiet endpoint."""
    rng = random.Random(seed)
    base = 0.3 * peak_rps
    levels: list[tuple[float, float]] = [(0.0, base)]
    t = rng.expovariate(1 / 1200.0)
    while t < duration_s:
        length = rng.uniform(60.0, 300.0)
        levels += [(t, peak_rps), (t + length, base)]
        t += length + rng.expovariate(1 / 1200.0)
    return poisson_trace("spiky", _piecewise(levels), peak_rps, duration_s, rng)


SYNTHETIC: dict[str, Callable[[int, float, float], Trace]] = {
    "bursty": bursty,
    "diurnal": diurnal,
    "spiky": spiky,
}


def _parse_timestamp(text: str) -> float:
    """Seconds since the epoch from the Azure trace's "2023-11-16 18:15:46.6805900" (7 fraction
    digits, which datetime won't take) or from a plain number of seconds."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    whole, _, fraction = text.partition(".")
    stamp = datetime.fromisoformat(whole).timestamp()
    return stamp + (float(f"0.{fraction}") if fraction else 0.0)


def read_azure_trace(path: Path, name: str | None = None) -> Trace:
    """Read a CSV in the Azure LLM inference trace format; arrivals start at 0."""
    rows: list[tuple[float, int, int]] = []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in AZURE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing columns {', '.join(missing)}")
        for row in reader:
            rows.append(
                (
                    _parse_timestamp(row["TIMESTAMP"]),
                    max(1, int(row["ContextTokens"])),
                    max(1, int(row["GeneratedTokens"])),
                )
            )
    if not rows:
        raise ValueError(f"{path}: no requests")
    rows.sort()
    start = rows[0][0]
    requests = tuple(Request(at - start, ctx, out) for at, ctx, out in rows)
    # A little tail so the last requests finish inside the accounted period.
    return Trace(name or path.stem, requests, requests[-1].arrival + 1.0)


def write_azure_trace(path: Path, requests: Iterable[Request], origin: datetime) -> None:
    """Write requests in the Azure trace format (timestamps with 7 fraction digits)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    base = origin.timestamp()
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(AZURE_COLUMNS)
        for request in requests:
            stamp = datetime.fromtimestamp(base + request.arrival)
            text = stamp.strftime("%Y-%m-%d %H:%M:%S") + f".{stamp.microsecond:06d}0"
            writer.writerow((text, request.context_tokens, request.output_tokens))


def write_azure_sample(path: Path, seed: int = 7, duration_s: float = 600.0) -> Trace:
    """A small bursty sample in the Azure format, for tests and for trying `--azure-trace`."""
    trace = bursty(seed, duration_s, peak_rps=4.0)
    write_azure_trace(path, trace.requests, datetime(2023, 11, 16, 18, 0, 0))
    return trace
