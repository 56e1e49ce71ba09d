"""Reading a replica's load from our engines' /stats and from vLLM's /metrics."""

from __future__ import annotations

import pytest

from modelhost.orchestrator.backends.engine_stats import EngineStats, parse_stats

VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="alice/smol"} 3.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="alice/smol"} 2.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="alice/smol"} 0.25
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="alice/smol"} 1234.0
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="alice/smol"} 567.0
"""

TWO_ENGINES = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 1.0
vllm:num_requests_running{engine="1",model_name="m"} 4.0
"""


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        ("/stats", '{"running": 2, "waiting": 1, "slots": 8}', EngineStats(2, 1)),
        ("/stats", '{"running": true, "waiting": "x"}', EngineStats()),
        ("/stats", "not json", EngineStats()),
        ("/stats", "[1, 2]", EngineStats()),
        ("/metrics", VLLM_METRICS, EngineStats(3, 2, 0.25, 1234, 567)),
        ("/metrics", TWO_ENGINES, EngineStats(running=5)),
        ("/metrics", "", EngineStats()),
        ("/metrics", "this is { not prometheus", EngineStats()),
        (
            "/metrics",
            "# TYPE vllm:gpu_cache_usage_perc gauge\nvllm:gpu_cache_usage_perc 0.5\n",
            EngineStats(kv_cache_usage=0.5),
        ),
    ],
)
def test_stats_by_page(path: str, body: str, expected: EngineStats) -> None:
    assert parse_stats(path, body) == expected
