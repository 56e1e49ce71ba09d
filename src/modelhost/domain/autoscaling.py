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
    # max_batch_size-slot server whose throughput *grows* with batch size (a batch of 32 does
    # ~20x the work of a batch of 1 in ~1.6x the step time), so it should run full; the margin
    # for random fluctuation comes from `headroom_stddevs` and bursts from the panic path, not
    # from a fixed 30% of idle slots (Knative's 70%) on every replica. bench/autoscale.py: 0.95
    # cost ~3% more GPU-hours, for p95 waits that were already equal to or better than KPA's.
    scale_up_threshold: float = 1.0
    # Extra slots kept free, in standard deviations of the demand (Poisson-like arrivals make the
    # number of concurrent requests fluctuate by about sqrt(mean)): "square-root staffing".
    # At 2.0 the chance that a request must wait for a slot is ~3% (Halfin-Whitt), so the p95
    # queue wait stays at zero in steady state, while the headroom grows only with sqrt(load).
    # bench/autoscale.py: 1.75 saved ~1% GPU-hours but raised a bursty trace's p95 above KPA's.
    headroom_stddevs: float = 2.0
    # The window whose average demand must support a scale-down (scale-up reacts to the panic
    # window below: scaling is asymmetric). 20 s is about one cold start: long enough that one
    # noisy sample can't release a replica (the average of ~10 decisions, ~3 request lifetimes),
    # short enough that a replica freed by a load drop stops being billed within half a minute.
    # bench/autoscale.py: Knative's 60 s cost ~2.5% more GPU-hours. Flapping is prevented by
    # `scale_down_margin`, scale-down in steps and `cooldown_s` instead of by a long window.
    stable_window_s: float = 20.0
    # Short window that drives scale-up and detects bursts; 6 s (as in Knative) averages 3
    # decisions at the 2 s loop interval, so one noisy sample can't order a replica, yet a
    # rising load is seen within a few seconds, while the new replica's cold start still lies
    # ahead. bench/autoscale.py: 12 s saved ~2% GPU-hours but raised a bursty trace's p95 queue
    # wait above KPA's.
    panic_window_s: float = 6.0
    # Panic when the short-window demand, or the latest sample, reaches this multiple of the
    # ready replicas' target capacity: at 1.2 a fifth of the slots' worth of requests is
    # already queueing, which can only be a burst for a deployment sized with the headroom
    # above; Knative's 200% would let the queue grow 2x first. The latest sample counts so that
    # a step in load is acted on one decision earlier (each second of delay is a second of
    # queueing for every request of the burst).
    panic_threshold: float = 1.2
    # In panic, size for the burst's demand times this. A burst keeps arriving during the
    # ~20 s a new replica takes to start, and the requests queued meanwhile must be drained
    # before newcomers stop waiting: replicas sized for the demand seen when they were ordered
    # leave a backlog that drains slowly. bench/autoscale.py: 1.5 saved <1% GPU-hours but left
    # the spiky traces' p95 queue wait 1.5-2x higher (bursts are short; the cost is bounded by
    # max_instances and the scale-down in steps).
    panic_headroom: float = 2.0
    # Seconds after the last scale-up before any scale-down (a replica still starting is never
    # cancelled anyway, see the policy). About one GPU cold start, so a replica isn't released
    # right after its start was paid for; bench/autoscale.py: 30 s cost ~2.5% more GPU-hours
    # for no better p95.
    cooldown_s: float = 20.0
    # Hysteresis for scale-down: fewer replicas are chosen only if the stable window's demand,
    # raised by this fraction, still fits them. Removing replicas raises the batch on the
    # others, which makes each step slower and so *raises* the concurrent-request count for
    # the same traffic (batch 20 -> 28 at 2% per sequence is +12%, and the demand estimate is
    # noisy on top); without the margin the policy removes a replica, sees the concurrency
    # rise, adds it back and pays another cold start. bench/autoscale.py: 0.06 cost more
    # GPU-hours *and* p95 waits; 0.12 the same GPU-hours as 0.2 with higher p95 waits on
    # bursty and spiky load; 0.3 ~1% more GPU-hours.
    scale_down_margin: float = 0.2
    # With min_instances 0: scale to zero after this long without a request, counted from the
    # later of the last request and the moment the deployment had a ready replica. A cold start
    # of a GPU model costs 20 s-minutes of latency for the next caller; five minutes of idle GPU
    # is cheaper than that for any endpoint that sees traffic more often than every few minutes.
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
    "scale_down_margin": (0.0, 1.0, True),
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
