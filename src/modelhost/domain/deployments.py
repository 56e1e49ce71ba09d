"""Pure rules about deployments: names, engines, weights and the GPU quota."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

MODEL_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
ENGINES = ("auto", "builtin", "simulator", "vllm")
# Engines that serve quantized weights (`quantization`); the method names are vLLM's.
QUANTIZATION_ENGINES = ("vllm",)
QUANTIZATION_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
CPU = "CPU"
MAX_NUM_GPUS = 8
MAX_BATCH_SIZE = 256
DEFAULT_MAX_BATCH_SIZE = 96
# Adapters resident per replica at once (LRU beyond that). LoRAX defaults to 1024 on GPUs; a
# rank-16 adapter of a 7B model is ~40 MB, so 64 keeps adapter memory small next to the KV cache.
DEFAULT_MAX_ACTIVE_ADAPTERS = 64
MAX_ACTIVE_ADAPTERS = 1024
# Bounds of the lists a deployment's config holds, and of an admin-set GPU limit.
MAX_ENGINE_ARGS = 64
MAX_PRELOADED_ADAPTERS = 1024
MAX_GPU_LIMIT = 1024


def resolve_engine(
    engine: str, has_weights: bool, *, real_gpu: bool = False, vllm_installed: bool = False
) -> str:
    """The engine a replica actually runs. `auto` picks vLLM for replicas on real NVIDIA GPUs
    when vLLM is installed, else the built-in engine, which runs on any machine."""
    if engine == "auto":
        return "vllm" if has_weights and real_gpu and vllm_installed else "builtin"
    return engine


def quantization_error(engine: str, quantization: str | None) -> str | None:
    """Why `quantization` cannot be asked of `engine` (a requested engine, `auto` included,
    already resolved by the caller when it can be), else None."""
    if quantization is None:
        return None
    if not QUANTIZATION_RE.match(quantization):
        return (
            f"quantization {quantization!r} is not a method name (lowercase letters, digits, "
            "'_' and '-', e.g. awq, gptq, fp8)"
        )
    if engine not in QUANTIZATION_ENGINES:
        return (
            f"quantization needs engine vllm (this deployment runs the {engine} engine, which "
            "serves unquantized weights); set engine to vllm or drop quantization"
        )
    return None


@dataclass(frozen=True)
class QuotaItem:
    """What one live deployment reserves: GPUs are reserved at max_instances, since the
    autoscaler may grow to it at any moment without asking again."""

    gpu: str
    num_gpus: int
    max_instances: int

    @property
    def gpus(self) -> int:
        return 0 if self.gpu == CPU else self.num_gpus * self.max_instances


def gpus_reserved(items: Iterable[QuotaItem]) -> int:
    return sum(i.gpus for i in items)


def quota_error(existing: Iterable[QuotaItem], new: QuotaItem, limit: int) -> str | None:
    """A message when adding `new` to `existing` breaks the owner's GPU limit, else None."""
    used = gpus_reserved(existing)
    if new.gpus and used + new.gpus > limit:
        return (
            f"GPU quota exceeded: this deployment needs {new.gpus} GPUs "
            f"({new.max_instances} instances x {new.num_gpus} {new.gpu}), {used} of your "
            f"{limit} are reserved by your other deployments; lower max_instances, stop another "
            f"deployment, or ask an admin to raise your gpu_limit"
        )
    return None
