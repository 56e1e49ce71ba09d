"""Does a LoRA adapter fit its base model? Pure checks over the adapter's config and tensor
shapes and the base model's dimensions."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# The projections the builtin engine applies LoRA deltas to (the Llama family's linear layers).
SUPPORTED_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MAX_RANK = 256
_TENSOR = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")


class AdapterError(ValueError):
    """The adapter cannot be used; the message says why in terms a user can act on."""

    def __init__(self, message: str, param: str = "source") -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class BaseDims:
    architecture: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int

    def shape(self, module: str) -> tuple[int, int]:
        """(in_features, out_features) of a projection."""
        q = self.num_heads * self.head_dim
        kv = self.num_kv_heads * self.head_dim
        return {
            "q_proj": (self.hidden_size, q),
            "k_proj": (self.hidden_size, kv),
            "v_proj": (self.hidden_size, kv),
            "o_proj": (q, self.hidden_size),
            "gate_proj": (self.hidden_size, self.intermediate_size),
            "up_proj": (self.hidden_size, self.intermediate_size),
            "down_proj": (self.intermediate_size, self.hidden_size),
        }[module]


@dataclass(frozen=True)
class AdapterInfo:
    rank: int
    target_modules: tuple[str, ...]


def _targets(config: Mapping[str, Any]) -> tuple[str, ...]:
    raw = config.get("target_modules")
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise AdapterError("adapter_config.json has no target_modules")
    return tuple(sorted(str(m).rsplit(".", 1)[-1] for m in raw))


def check_adapter(
    config: Mapping[str, Any],
    shapes: Mapping[str, tuple[int, ...]],
    base: BaseDims | None,
) -> AdapterInfo:
    """Raise AdapterError unless the adapter is a LoRA the engine can apply to `base`.
    `base` None (weights not on this server yet) checks only what the adapter says itself."""
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise AdapterError(f"not a LoRA adapter (peft_type={config.get('peft_type')!r})")
    rank = config.get("r")
    if not isinstance(rank, int) or not 0 < rank <= MAX_RANK:
        raise AdapterError(f"LoRA rank r={rank!r} is not between 1 and {MAX_RANK}")
    targets = _targets(config)
    unsupported = [m for m in targets if m not in SUPPORTED_MODULES]
    if unsupported:
        raise AdapterError(
            f"target modules {', '.join(unsupported)} are not supported; LoRA applies to "
            f"{', '.join(SUPPORTED_MODULES)}"
        )
    if config.get("use_dora") or config.get("modules_to_save"):
        raise AdapterError("DoRA adapters and modules_to_save are not supported")
    found = 0
    for name, shape in shapes.items():
        m = _TENSOR.search(name)
        if m is None:
            raise AdapterError(f"unexpected tensor {name!r} in the adapter weights")
        layer, module, ab = int(m.group(1)), m.group(2), m.group(3)
        if module not in targets:
            raise AdapterError(f"tensor {name!r} is for {module}, not a target module")
        if len(shape) != 2:
            raise AdapterError(f"tensor {name!r} has shape {list(shape)}, expected a matrix")
        found += 1
        if base is None:
            continue
        if layer >= base.num_layers:
            raise AdapterError(
                f"the adapter has layer {layer} but the base model has {base.num_layers} layers"
            )
        fan_in, fan_out = base.shape(module)
        want = (rank, fan_in) if ab == "A" else (fan_out, rank)
        if tuple(shape) != want:
            raise AdapterError(
                f"{module} lora_{ab} has shape {list(shape)} but the base "
                f"{base.architecture} needs {list(want)}: the adapter was trained for another "
                f"base model"
            )
    if found == 0:
        raise AdapterError("the adapter weights contain no LoRA tensors")
    return AdapterInfo(rank=rank, target_modules=targets)
