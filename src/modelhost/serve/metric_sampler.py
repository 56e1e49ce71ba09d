"""The metric history's sampler: what each deployment did, every `metric_sample_interval_s`,
into `metric_history` (domain/metric_history.py, store/metric_history.py).

Two sources:

- **The gateway** hands every forwarded request to `RequestTally.add` (its `history_sink`),
  which only counts in memory, per deployment and adapter and 10 s bucket of the request's
  end: requests, generated tokens (the engine's count), inference time (arrival to last byte,
  less the gateway queue wait) as a histogram, and the queue wait. Each pass takes the counts
  and adds them to the store; a pass that fails keeps them for the next one.
- **The replicas** (the backend's observations, as the GPU meter reads them), sampled once a
  pass: how many are ready, and their GPU utilisation. A replica on real NVIDIA GPUs is read
  through NVML's command line (`nvidia-smi`, utilisation of each of its devices, averaged):
  source `"nvml"`. A replica on the CPU or on virtual GPUs has no GPU to read; its engine's
  busy clock (the share of the interval it had a request in flight, engine/metrics.py
  BusyClock) stands in: source `"engine_busy"`. An engine without one (vLLM on the CPU), a
  replica's first pass, or a failed nvidia-smi is unknown: no value, never a guess.

Gauges are written for deployments that should be running and those with observed replicas;
a stopped deployment adds nothing (its chart has gaps, not zeros, while it is stopped). Rows
older than each tier keeps are dropped once a minute.

Each replica's last utilisation reading is also on `/metrics` (`UtilizationCollector`:
`modelhost_replica_busy_ratio{..., source="nvml"|"engine_busy"}`), as of the last pass.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import select

from modelhost.domain import metric_history as mh
from modelhost.domain.replicas import ReplicaState
from modelhost.gateway.proxy import ForwardResult
from modelhost.gateway.resolve import Target
from modelhost.orchestrator.inventory import Inventory, InventoryError
from modelhost.orchestrator.types import ReplicaObservation
from modelhost.store import metric_history as store
from modelhost.store.db import Database
from modelhost.store.tables import Deployment

log = logging.getLogger(__name__)

NVIDIA_SMI_UTILIZATION_ARGS = (
    "--query-gpu=index,utilization.gpu",
    "--format=csv,noheader,nounits",
)
EXPIRE_EVERY_S = 60.0

# CUDA index -> utilisation in percent, as NVML reports it.
GpuUtilReader = Callable[[], Mapping[int, float]]


def parse_gpu_utilization(text: str) -> dict[int, float]:
    """`nvidia-smi --query-gpu=index,utilization.gpu --format=csv,noheader,nounits` output;
    unreadable lines ("[N/A]", "[Not Supported]") are left out."""
    out: dict[int, float] = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 2:
            continue
        try:
            index, util = int(parts[0]), float(parts[1])
        except ValueError:
            continue
        if 0.0 <= util <= 100.0:
            out[index] = util
    return out


def nvidia_smi_utilization() -> dict[int, float]:
    """The machine's NVIDIA GPUs' utilisation (NVML's, through nvidia-smi); {} without it."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {}
    out = subprocess.run(
        [exe, *NVIDIA_SMI_UTILIZATION_ARGS], capture_output=True, text=True, timeout=10, check=True
    )
    return parse_gpu_utilization(out.stdout)


def cuda_indexes(inventory: Inventory) -> Callable[[str], int | None]:
    """Device id -> its CUDA index for a real GPU; None for virtual GPUs and CPU slots."""

    def index(device_id: str) -> int | None:
        try:
            device = inventory.device(device_id)
        except InventoryError:
            return None
        return None if device.virtual else device.index

    return index


class _Counts:
    __slots__ = ("hist", "inf_count", "inf_sum", "q_count", "q_sum", "requests", "tokens")

    def __init__(self) -> None:
        self.requests = self.tokens = self.inf_count = self.q_count = 0
        self.inf_sum = self.q_sum = 0.0
        self.hist: dict[int, int] = {}

    def aggregate(self) -> mh.Aggregate:
        return mh.Aggregate(
            requests=self.requests,
            tokens=self.tokens,
            inference_count=self.inf_count,
            inference_sum_s=self.inf_sum,
            inference_hist=dict(self.hist),
            queue_count=self.q_count,
            queue_sum_s=self.q_sum,
        )


class RequestTally:
    """The gateway's requests, counted in memory until the sampler takes them. `add` runs on
    the request path (the event loop): a lock, a few additions, one bisect."""

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        resolution_s: int = mh.TIERS[0].resolution_s,
    ) -> None:
        self._clock = clock
        self._res = resolution_s
        self._lock = threading.Lock()
        self._counts: dict[store.Key, _Counts] = {}

    def add(self, target: Target, result: ForwardResult) -> None:
        bucket = mh.align(self._clock(), self._res)
        tokens = result.tokens.completion if result.tokens is not None else 0
        inference = None
        if result.total_s is not None:
            inference = max(result.total_s - result.queued_s, 0.0)
        keys = [(target.deploy_id, "", bucket)]
        if target.adapter_id:
            keys.append((target.deploy_id, target.adapter_id, bucket))
        with self._lock:
            for key in keys:
                c = self._counts.get(key)
                if c is None:
                    c = self._counts[key] = _Counts()
                c.requests += 1
                c.tokens += max(tokens, 0)
                c.q_count += 1
                c.q_sum += max(result.queued_s, 0.0)
                if inference is not None:
                    c.inf_count += 1
                    c.inf_sum += inference
                    idx = mh.latency_bucket(inference)
                    c.hist[idx] = c.hist.get(idx, 0) + 1

    def take(self) -> dict[store.Key, mh.Aggregate]:
        with self._lock:
            counts, self._counts = self._counts, {}
        return {key: c.aggregate() for key, c in counts.items()}


class MetricSampler:
    def __init__(
        self,
        db: Database,
        tally: RequestTally,
        observe: Callable[[], Sequence[ReplicaObservation] | None],
        cuda_index: Callable[[str], int | None],
        *,
        gpu_util: GpuUtilReader = nvidia_smi_utilization,
        clock: Callable[[], float] = time.time,
        tiers: Sequence[mh.Tier] = mh.TIERS,
    ) -> None:
        """`observe` gives the replicas this process watches, or None where another process
        does (its gauges would be wrong here: only requests are written then)."""
        self._db = db
        self._tally = tally
        self._observe = observe
        self._cuda_index = cuda_index
        self._gpu_util = gpu_util
        self._clock = clock
        self._tiers = tiers
        self._lock = threading.Lock()  # one pass at a time (the loop's and the final flush)
        self._pending: dict[store.Key, mh.Aggregate] = {}
        # replica -> its engine's last (busy_s, uptime_s) reading
        self._busy: dict[str, tuple[float, float]] = {}
        self._last_expiry = float("-inf")
        self._nvml_failed = False
        # replica -> (deploy_id, utilisation 0..1, source), as of the last pass with gauges.
        self.replica_utilization: dict[str, tuple[str, float, mh.GpuSource]] = {}

    def run_once(self, gauges: bool = True) -> int:
        """One pass (blocking: run it in a thread). Returns the rows written. Without
        `gauges`, only what the gateway counted (the final flush, replicas stopped)."""
        with self._lock:
            return self._pass(gauges)

    def _pass(self, gauges: bool) -> int:
        now = self._clock()
        points = self._pending
        self._pending = {}
        for key, agg in self._tally.take().items():
            prev = points.get(key)
            points[key] = agg if prev is None else prev.merge(agg)
        observed = self._observe() if gauges else None
        if gauges and observed is None:
            self.replica_utilization = {}  # another process watches the replicas
        try:
            with self._db.session() as s:
                if observed is not None:
                    running = set(
                        s.scalars(
                            select(Deployment.id).where(
                                Deployment.deleted_at.is_(None),
                                Deployment.desired_state == "running",
                            )
                        )
                    )
                    bucket = mh.align(now, self._tiers[0].resolution_s)
                    for deploy_id, agg in self._gauges(observed, running).items():
                        key = (deploy_id, "", bucket)
                        prev = points.get(key)
                        points[key] = agg if prev is None else prev.merge(agg)
                written = store.add(s, points, self._tiers)
                if now - self._last_expiry >= EXPIRE_EVERY_S:
                    store.expire(s, now, self._tiers)
                    self._last_expiry = now
        except Exception:
            # Kept for the next pass, except what is already too old to keep.
            oldest = mh.expired_before(self._tiers[0], now)
            self._pending = {k: v for k, v in points.items() if k[2] >= oldest}
            raise
        return written

    def _gauges(
        self, observed: Sequence[ReplicaObservation], running: set[str]
    ) -> dict[str, mh.Aggregate]:
        ready = [o for o in observed if o.state == ReplicaState.READY]
        nvml = self._read_nvml(ready)
        utils: dict[str, list[tuple[float, mh.GpuSource]]] = {}
        counts: dict[str, int] = dict.fromkeys(running, 0)
        busy: dict[str, tuple[float, float]] = {}
        per_replica: dict[str, tuple[str, float, mh.GpuSource]] = {}
        for o in observed:
            counts.setdefault(o.deploy_id, 0)
        for o in ready:
            counts[o.deploy_id] += 1
            if o.busy_s is not None and o.uptime_s is not None:
                busy[o.replica_id] = (o.busy_s, o.uptime_s)
            util = self._replica_util(o, nvml, busy.get(o.replica_id))
            if util is not None:
                utils.setdefault(o.deploy_id, []).append(util)
                per_replica[o.replica_id] = (o.deploy_id, *util)
        self._busy = busy
        self.replica_utilization = per_replica
        out: dict[str, mh.Aggregate] = {}
        for deploy_id, n in counts.items():
            known = utils.get(deploy_id, [])
            mean = sum(u for u, _ in known) / len(known) if known else None
            source = known[0][1] if known else None
            out[deploy_id] = mh.gauges(replicas=n, gpu_util=mean, gpu_source=source)
        return out

    def _replica_util(
        self,
        o: ReplicaObservation,
        nvml: Mapping[int, float] | None,
        busy_now: tuple[float, float] | None,
    ) -> tuple[float, mh.GpuSource] | None:
        indexes = [self._cuda_index(d) for d in o.devices]
        if indexes and all(i is not None for i in indexes):
            if nvml is None or any(i not in nvml for i in indexes):
                return None
            values = [nvml[i] for i in indexes if i is not None]
            return sum(values) / len(values) / 100.0, "nvml"
        fraction = mh.busy_fraction(self._busy.get(o.replica_id), busy_now)
        return None if fraction is None else (fraction, "engine_busy")

    def _read_nvml(self, ready: Sequence[ReplicaObservation]) -> Mapping[int, float] | None:
        if not any(self._cuda_index(d) is not None for o in ready for d in o.devices):
            return None
        try:
            values = self._gpu_util()
        except (OSError, subprocess.SubprocessError) as exc:
            if not self._nvml_failed:
                log.warning("cannot read GPU utilisation from nvidia-smi: %s", exc)
            self._nvml_failed = True
            return None
        self._nvml_failed = False
        return values


class UtilizationCollector(Collector):
    """`modelhost_replica_busy_ratio`: each ready replica's utilisation at the sampler's last
    pass (what the console's GPU chart averages), labelled with where it came from."""

    def __init__(self, sampler: MetricSampler, names: Callable[[str], tuple[str, str]]) -> None:
        self._sampler = sampler
        self._names = names

    def collect(self) -> Iterable[GaugeMetricFamily]:
        ratio = GaugeMetricFamily(
            "modelhost_replica_busy_ratio",
            "Replica utilisation 0..1 at the last metric sample: NVML's GPU utilisation "
            "(source=nvml) or the engine's busy share of the interval (source=engine_busy)",
            labels=["deployment", "model_name", "user", "replica_id", "source"],
        )
        for replica_id, (deploy_id, value, source) in sorted(
            self._sampler.replica_utilization.items()
        ):
            user, model_name = self._names(deploy_id)
            ratio.add_metric([deploy_id, model_name, user, replica_id, source], value)
        yield ratio
