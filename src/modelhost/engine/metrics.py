"""Prometheus metrics of one engine process, with LoRAX's metric names.

Each app gets its own CollectorRegistry, so several apps in one test process never collide.
Per-request values are recorded once, when a request ends, never per token. Gauges that
describe the generator (running, waiting) are read from `Generator.stats()` at scrape time, so
they cannot drift from the truth. prometheus_client adds the standard `_total` suffix to
counters (`lorax_request_count_total`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from modelhost.engine.protocol import EngineStats

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_PER_TOKEN_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
_TOKENS = (1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


class BusyClock:
    """How long the engine has been busy: seconds during which at least one generation request
    was admitted and not yet answered (running, or waiting the instant before its batch slot),
    and seconds since it started, both from one monotonic clock. /stats reports the pair
    (`busy_s`, `uptime_s`); the control plane divides the growth of the one by the growth of
    the other between two readings, which is the engine's busy fraction over that interval
    (its GPU utilisation where no NVML reading exists: CPUs, virtual GPUs)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._born = clock()
        self._active = 0
        self._since = 0.0
        self._busy = 0.0

    def enter(self) -> None:
        if self._active == 0:
            self._since = self._clock()
        self._active += 1

    def leave(self) -> None:
        self._active = max(self._active - 1, 0)
        if self._active == 0:
            self._busy += self._clock() - self._since

    def read(self) -> tuple[float, float]:
        """(busy seconds, uptime seconds) now."""
        now = self._clock()
        busy = self._busy + (now - self._since if self._active else 0.0)
        return busy, now - self._born


class _GeneratorGauges:
    """Reads the generator's live state when Prometheus scrapes."""

    def __init__(self, stats: Callable[[], EngineStats], in_flight: Callable[[], int]) -> None:
        self._stats = stats
        self._in_flight = in_flight

    def collect(self) -> Iterable[Metric]:
        s = self._stats()
        yield GaugeMetricFamily(
            "modelhost_engine_running", "Sequences in the running batch.", value=s.running
        )
        yield GaugeMetricFamily(
            "modelhost_engine_waiting", "Sequences queued for a batch slot.", value=s.waiting
        )
        yield GaugeMetricFamily(
            "modelhost_engine_max_batch_size", "Most sequences run at once.", value=s.max_batch_size
        )
        yield GaugeMetricFamily(
            "modelhost_engine_in_flight",
            "Generation requests the HTTP server has admitted and not yet answered.",
            value=self._in_flight(),
        )
        yield GaugeMetricFamily("lorax_batch_current_size", "Current batch size.", value=s.running)
        yield GaugeMetricFamily("lorax_queue_length", "Requests waiting in queue.", value=s.waiting)
        yield from _adapter_families(s)


def _adapter_families(s: EngineStats) -> Iterable[Metric]:
    """Per-adapter residency and load times, read from the generator at scrape time."""
    resident = GaugeMetricFamily(
        "modelhost_engine_adapter_resident",
        "1 while the LoRA adapter is loaded in the engine, else 0.",
        labels=["adapter"],
    )
    in_use = GaugeMetricFamily(
        "modelhost_engine_adapter_in_use",
        "Sequences using the adapter now (queued or running).",
        labels=["adapter"],
    )
    last = GaugeMetricFamily(
        "modelhost_engine_adapter_last_load_seconds",
        "Seconds the adapter's last load took (disk to usable in the batch).",
        labels=["adapter"],
    )
    loads = CounterMetricFamily(
        "modelhost_engine_adapter_loads",
        "Times the adapter was loaded (again after each eviction).",
        labels=["adapter"],
    )
    load_total = CounterMetricFamily(
        "modelhost_engine_adapter_load_seconds",
        "Seconds spent loading the adapter, all loads together.",
        labels=["adapter"],
    )
    for a in s.adapters:
        resident.add_metric([a.adapter_id], 1.0 if a.resident else 0.0)
        in_use.add_metric([a.adapter_id], a.in_use)
        if a.load_seconds is not None:
            last.add_metric([a.adapter_id], a.load_seconds)
        loads.add_metric([a.adapter_id], a.loads)
        load_total.add_metric([a.adapter_id], a.load_seconds_total)
    yield resident
    yield in_use
    yield last
    yield loads
    yield load_total
    yield GaugeMetricFamily(
        "modelhost_engine_adapters_resident",
        "LoRA adapters loaded in the engine.",
        value=sum(1 for a in s.adapters if a.resident),
    )


class EngineMetrics:
    def __init__(self, stats: Callable[[], EngineStats], in_flight: Callable[[], int]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.request_count = Counter("lorax_request_count", "Requests received.", registry=r)
        self.request_success = Counter(
            "lorax_request_success", "Requests that completed.", registry=r
        )
        self.request_failure = Counter(
            "lorax_request_failure", "Requests that failed, by error kind.", ["err"], registry=r
        )
        self.request_duration = Histogram(
            "lorax_request_duration", "End-to-end seconds.", buckets=_SECONDS, registry=r
        )
        # The HTTP layer cannot see inside the generator's queue, so "queue" here is the time
        # until the first token: waiting for a batch slot plus prefill (documented).
        self.request_queue_duration = Histogram(
            "lorax_request_queue_duration",
            "Seconds from admission to the first token (queue + prefill).",
            buckets=_SECONDS,
            registry=r,
        )
        self.request_inference_duration = Histogram(
            "lorax_request_inference_duration",
            "Seconds from the first token to the last.",
            buckets=_SECONDS,
            registry=r,
        )
        self.request_mean_time_per_token = Histogram(
            "lorax_request_mean_time_per_token_duration",
            "Mean seconds per generated token after the first.",
            buckets=_PER_TOKEN_SECONDS,
            registry=r,
        )
        self.request_generated_tokens = Histogram(
            "lorax_request_generated_tokens", "Generated tokens.", buckets=_TOKENS, registry=r
        )
        self.request_input_length = Histogram(
            "lorax_request_input_length", "Prompt tokens.", buckets=_TOKENS, registry=r
        )
        self.adapter_requests = Counter(
            "modelhost_engine_adapter_requests",
            "Generation requests the engine accepted, per LoRA adapter id.",
            ["adapter"],
            registry=r,
        )
        self.adapter_generated_tokens = Counter(
            "modelhost_engine_adapter_generated_tokens",
            "Tokens generated for successful requests, per LoRA adapter id.",
            ["adapter"],
            registry=r,
        )
        r.register(_GeneratorGauges(stats, in_flight))

    def observe_success(
        self,
        *,
        total_s: float,
        first_token_s: float,
        prompt_tokens: int,
        generated_tokens: int,
        adapter: str | None = None,
    ) -> None:
        self.request_success.inc()
        if adapter is not None:
            self.adapter_generated_tokens.labels(adapter=adapter).inc(generated_tokens)
        self.request_duration.observe(total_s)
        self.request_queue_duration.observe(first_token_s)
        inference_s = max(total_s - first_token_s, 0.0)
        self.request_inference_duration.observe(inference_s)
        if generated_tokens > 1:
            self.request_mean_time_per_token.observe(inference_s / (generated_tokens - 1))
        self.request_generated_tokens.observe(generated_tokens)
        self.request_input_length.observe(prompt_tokens)

    def observe_failure(self, err: str) -> None:
        self.request_failure.labels(err=err).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
