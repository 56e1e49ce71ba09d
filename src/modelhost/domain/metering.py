"""GPU-time metering as pure interval math.

A replica runs from `started_at` (its process start) to `exited_at` (or now while it runs).
That interval is cut into fixed periods aligned to the UTC minute; each period is one row,
keyed (replica_id, period_start), holding the milliseconds of overlap x num_gpus. Writing the
same interval again yields the same rows, and a longer interval (later `now`) only grows the
last period and adds new ones: re-metering after a crash or a restart never double-counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from modelhost.domain.money import gpu_cost_micros

PERIOD_MS = 60_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class PeriodUsage:
    replica_id: str
    period_start_ms: int  # epoch milliseconds, a multiple of PERIOD_MS
    period_end_ms: int
    gpu_ms: int  # milliseconds run within the period x num_gpus

    @property
    def period_start(self) -> datetime:
        return from_ms(self.period_start_ms)

    @property
    def period_end(self) -> datetime:
        return from_ms(self.period_end_ms)

    def cost_micros(self, usd_per_hour_micros: int) -> int:
        return gpu_cost_micros(self.gpu_ms, usd_per_hour_micros)


def to_ms(t: float) -> int:
    """Wall-clock seconds (time.time()) -> epoch milliseconds, truncated: a fraction of a
    millisecond is never billed."""
    return int(t * 1000) if t >= 0 else -int(-t * 1000)


def from_ms(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def floor_period(ms: int, period_ms: int = PERIOD_MS) -> int:
    return ms - ms % period_ms


def split_periods(
    replica_id: str,
    start_ms: int,
    end_ms: int,
    num_gpus: int,
    period_ms: int = PERIOD_MS,
) -> list[PeriodUsage]:
    """The periods [start, end) overlaps, each with its overlap x num_gpus. Nothing for an
    empty or inverted interval, or for a replica holding no GPU (num_gpus 0)."""
    if end_ms <= start_ms or num_gpus <= 0:
        return []
    out: list[PeriodUsage] = []
    p = floor_period(start_ms, period_ms)
    while p < end_ms:
        q = p + period_ms
        overlap = min(q, end_ms) - max(p, start_ms)
        if overlap > 0:
            out.append(PeriodUsage(replica_id, p, q, overlap * num_gpus))
        p = q
    return out


def periods_since(
    replica_id: str,
    start_ms: int,
    end_ms: int,
    num_gpus: int,
    written_until_ms: int | None,
    period_ms: int = PERIOD_MS,
) -> list[PeriodUsage]:
    """Like `split_periods`, but only the periods that may have changed since the interval was
    last written up to `written_until_ms` (None: never): the period holding that point and all
    later ones. Rows before it are already complete and need no rewrite."""
    rows = split_periods(replica_id, start_ms, end_ms, num_gpus, period_ms)
    if written_until_ms is None:
        return rows
    first = floor_period(written_until_ms, period_ms)
    return [r for r in rows if r.period_start_ms >= first]
