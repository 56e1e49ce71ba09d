"""A deployment's autoscaling settings: every knob, its default and why, and validation.

The API layer passes the `settings` object of `POST /deploy/llm` and `PUT /deploy/{id}` through
`validate_settings`; a `SettingsError` names the offending field so it can become a 422. A PUT
sends only the fields it changes, so validation merges the update over the current settings and
then checks the merged whole (e.g. `min_instances <= max_instances`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

# A deployment can never ask for more replicas than this; it keeps one user's typo from asking the
# inventory for thousands of GPUs and bounds the autoscaler's arithmetic.
MAX_INSTANCES_LIMIT = 64


class SettingsError(ValueError):
    """A setting is unknown, of the wrong type, or out of range. `field` names it; str() is
    the message alone, so the API layer can prefix it with the field's path."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class AutoscalingSettings:
    # DeepInfra's ScaleSettings default: one always-on replica, so a new deployment answers its
    # first request without a cold start. Set 0 to allow scale to zero.
    min_instances: int = 1
    # DeepInfra's default too: no scale-out unless the owner opts in (and pays the quota for it).
    max_instances: int = 1
    # Target concurrency per replica as a fraction of max_batch_size. An LLM replica is a
    # max_batch_size-slot server whose throughput *grows* with batch size, so it should run near
    # full; the headroom for random fluctuation comes from `headroom_stddevs` below instead of a
    # fixed 30% margin (Knative's 70%), which wastes GPUs on large deployments. 0.9 keeps a small
    # fixed margin for the few seconds a new replica needs to be routed to.
    scale_up_threshold: float = 0.9
    # Extra slots kept free, in standard deviations of the demand (Poisson-like arrivals make the
    # number of concurrent requests fluctuate by about sqrt(mean)): "square-root staffing".
    # At 2.0 the chance that a request must wait for a slot is ~3% (Halfin-Whitt), so the p95
    # queue wait stays at zero in steady state, while the headroom grows only with sqrt(load).
    # bench/autoscale.py: 1.5 saved ~1% more GPU-hours but let p95 waits appear on bursty load.
    headroom_stddevs: float = 2.0
    # Averaging window for the steady-state decision, Knative's default: long enough that a
    # minute of noise doesn't move replicas, short enough to follow a diurnal ramp.
    stable_window_s: float = 60.0
    # Short window that detects bursts; 6 s (10% of the stable window, as in Knative) averages
    # 3 decisions at the 2 s loop interval, so one noisy sample can't trigger a panic.
    panic_window_s: float = 6.0
    # Panic when the short-window demand reaches this multiple of the ready replicas' target
    # capacity. At 1.2 x 0.9 = 108% of max_batch_size requests are already queueing, which is
    # the moment waiting starts to hurt; Knative's 200% would let the queue grow 2x first.
    panic_threshold: float = 1.2
    # In panic, size for the burst's demand times this. A burst keeps arriving during the
    # ~20 s a new replica takes to start, so replicas sized for the demand seen when they were
    # ordered are too few once they are ready, and the backlog then drains slowly. 1.5 matched
    # or beat Knative's p95 queue wait on every simulated bursty/spiky trace (1.0 and 1.2
    # didn't), for ~1% more GPU-hours: bursts are short, the cost is bounded by the cooldown.
    panic_headroom: float = 1.5
    # Seconds after the last scale-up before any scale-down. Longer than a GPU replica's start
    # (~20 s), so a replica isn't released right after its start was paid for; the stable
    # window already damps noise, and bench/autoscale.py found 60 s cost 2-3% more GPU-hours
    # than 30 s for no better p95.
    cooldown_s: float = 30.0
    # With min_instances 0: scale to zero after this long without a request. A cold start of a
    # GPU model costs 20 s-minutes of latency for the next caller; five minutes of idle GPU is
    # cheaper than that for any endpoint that sees traffic more often than every few minutes.
    idle_to_zero_s: float = 300.0

    def to_dict(self) -> dict[str, int | float]:
        """The deploy object's `settings`."""
        return asdict(self)


_INT_FIELDS = frozenset({"min_instances", "max_instances"})
_KNOWN = tuple(f.name for f in fields(AutoscalingSettings))

# (low, high, inclusive low) per numeric field; the high bound is always inclusive.
_RANGES: dict[str, tuple[float, float, bool]] = {
    "min_instances": (0, MAX_INSTANCES_LIMIT, True),
    "max_instances": (1, MAX_INSTANCES_LIMIT, True),
    "scale_up_threshold": (0.0, 1.0, False),
    "headroom_stddevs": (0.0, 5.0, True),
    "stable_window_s": (1.0, 3600.0, True),
    "panic_window_s": (1.0, 3600.0, True),
    "panic_threshold": (1.0, 10.0, True),
    "panic_headroom": (1.0, 5.0, True),
    "cooldown_s": (0.0, 86400.0, True),
    "idle_to_zero_s": (0.0, 7 * 86400.0, True),
}


def _check_value(name: str, value: object) -> int | float:
    # bool is an int subclass; `"min_instances": true` is a client bug, not 1.
    if isinstance(value, bool):
        raise SettingsError(name, "must be a number, not a boolean")
    if name in _INT_FIELDS:
        if not isinstance(value, int):
            raise SettingsError(name, "must be an integer")
        number: int | float = value
    else:
        if not isinstance(value, int | float):
            raise SettingsError(name, "must be a number")
        number = float(value)
        if not math.isfinite(number):
            raise SettingsError(name, "must be a finite number")
    low, high, low_inclusive = _RANGES[name]
    too_low = number < low if low_inclusive else number <= low
    if too_low or number > high:
        lower = f">= {low:g}" if low_inclusive else f"> {low:g}"
        raise SettingsError(name, f"must be {lower} and <= {high:g}, got {number:g}")
    return number


def validate_settings(
    raw: Mapping[str, object], current: AutoscalingSettings | None = None
) -> AutoscalingSettings:
    """Merge a (partial) settings object over `current` (defaults when None) and validate it.

    Raises SettingsError naming the first bad field.
    """
    if not isinstance(raw, Mapping):
        raise SettingsError("settings", "must be an object")
    # Any: dataclasses.replace takes per-field types that a dict can't express; each value was
    # checked against its field by _check_value.
    updates: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in _RANGES:
            known = ", ".join(_KNOWN)
            raise SettingsError(str(name), f"unknown setting; known settings: {known}")
        updates[name] = _check_value(name, value)
    merged = replace(current or AutoscalingSettings(), **updates)
    if merged.max_instances < merged.min_instances:
        # Name the field the caller changed, so the error points at what they just typed.
        field = "max_instances" if "max_instances" in updates else "min_instances"
        raise SettingsError(
            field,
            f"max_instances ({merged.max_instances}) must be >= "
            f"min_instances ({merged.min_instances})",
        )
    if merged.panic_window_s > merged.stable_window_s:
        field = "panic_window_s" if "panic_window_s" in updates else "stable_window_s"
        raise SettingsError(
            field,
            f"panic_window_s ({merged.panic_window_s:g}) must be <= "
            f"stable_window_s ({merged.stable_window_s:g})",
        )
    return merged
