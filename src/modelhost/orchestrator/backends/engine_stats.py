"""What a replica says about its own load, read from whichever page its engine serves.

Our engines (builtin, simulator) answer `/stats` with JSON (`running`, `waiting`, ...). vLLM has
no such page: its Prometheus `/metrics` carries the same counts as `vllm:num_requests_running`
and `vllm:num_requests_waiting`, plus the KV cache's use and token counters. Both become one
`EngineStats`, which the autoscaler reads through the replica's observation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

# vLLM's series (0.6 and later; `gpu_cache_usage_perc` was the KV cache's older name).
_VLLM = {
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
    "vllm:kv_cache_usage_perc": "kv_cache_usage",
    "vllm:gpu_cache_usage_perc": "kv_cache_usage",
    "vllm:prompt_tokens": "prompt_tokens",
    "vllm:generation_tokens": "generation_tokens",
}


@dataclass(frozen=True)
class EngineStats:
    running: int | None = None
    waiting: int | None = None
    kv_cache_usage: float | None = None  # 0..1
    prompt_tokens: int | None = None  # since the replica started
    generation_tokens: int | None = None
    # Our engines' busy clock (engine/metrics.py BusyClock): seconds with a request in flight,
    # and seconds since start; the busy fraction is the growth of one over the other.
    busy_s: float | None = None
    uptime_s: float | None = None


def _seconds(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if value >= 0 else None


def parse_json_stats(body: str) -> EngineStats:
    """Our engines' `/stats`; anything unreadable is unknown, never an error."""
    try:
        data = json.loads(body)
    except ValueError:
        return EngineStats()
    if not isinstance(data, dict):
        return EngineStats()
    running, waiting = data.get("running"), data.get("waiting")
    return EngineStats(
        running=running if isinstance(running, int) and not isinstance(running, bool) else None,
        waiting=waiting if isinstance(waiting, int) and not isinstance(waiting, bool) else None,
        busy_s=_seconds(data.get("busy_s")),
        uptime_s=_seconds(data.get("uptime_s")),
    )


def parse_prometheus_stats(text: str) -> EngineStats:
    """vLLM's `/metrics`: the counts summed over its label sets (one per engine and model)."""
    sums: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                # Counters' samples are named `<family>_total`; gauges' are the family's name.
                name = sample.name.removesuffix("_total")
                field = _VLLM.get(name)
                if field is not None:
                    sums[field] = sums.get(field, 0.0) + float(sample.value)
    except ValueError:
        return EngineStats()

    def count(field: str) -> int | None:
        value = sums.get(field)
        return None if value is None else int(value)

    usage = sums.get("kv_cache_usage")
    return EngineStats(
        running=count("running"),
        waiting=count("waiting"),
        kv_cache_usage=usage,
        prompt_tokens=count("prompt_tokens"),
        generation_tokens=count("generation_tokens"),
    )


def parse_stats(path: str, body: str) -> EngineStats:
    """By the page it came from: Prometheus text from a `/metrics` page, JSON otherwise."""
    if path.rstrip("/").endswith("/metrics"):
        return parse_prometheus_stats(body)
    return parse_json_stats(body)
