"""Batched multi-LoRA for the builtin engine: adapter weights, their slot stack, and the
per-row delta of a mixed batch.

Every resident adapter owns a slot of `LoraStack`; per layer and target module the stack holds
A^T as [slots, in, r_max] and scale * B^T as [slots, r_max, out], padded with zeros to the
largest rank seen, so any mix of ranks shares one layout and the padding adds exactly zero. The
base weights are never touched: after each base projection, `StepLora.add` adds
y += scale * (x A_i^T) B_i^T for the rows that use an adapter, in the spirit of Punica's BGMV:

- decode rows (one token per sequence, each possibly a different adapter) gather their slot's
  A and B and run one batched matmul per module (`torch.bmm`, one small matrix per row), so a
  row's delta is computed the same way whatever else is in the batch;
- a prefill chunk belongs to one sequence, hence to one adapter: a plain matmul over its rows.

Rows of the base model (adapter -1) are skipped, so a batch without adapters costs nothing.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from modelhost.adapters.validate import AdapterError, BaseDims, check_adapter
from modelhost.engine.builtin.spec import ModelSpec
from modelhost.engine.protocol import GeneratorError

MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Which fused projection of model.py each module's output lives in.
GROUP_OF = {
    "q_proj": "qkv",
    "k_proj": "qkv",
    "v_proj": "qkv",
    "o_proj": "o",
    "gate_proj": "gate_up",
    "up_proj": "gate_up",
    "down_proj": "down",
}
_SLOT_STEP = 8  # the stack grows by this many slots at a time
_TENSOR = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")


class AdapterLoadError(GeneratorError):
    """The adapter's files cannot be used with this model (the message says why)."""


def base_dims(spec: ModelSpec) -> BaseDims:
    return BaseDims(
        architecture=spec.architecture,
        num_layers=spec.num_layers,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_heads=spec.num_heads,
        num_kv_heads=spec.num_kv_heads,
        head_dim=spec.head_dim,
    )


def module_columns(spec: ModelSpec) -> dict[str, tuple[int, int]]:
    """Columns of each module's output inside its fused projection."""
    q = spec.num_heads * spec.head_dim
    kv = spec.num_kv_heads * spec.head_dim
    inter = spec.intermediate_size
    return {
        "q_proj": (0, q),
        "k_proj": (q, q + kv),
        "v_proj": (q + kv, q + 2 * kv),
        "o_proj": (0, spec.hidden_size),
        "gate_proj": (0, inter),
        "up_proj": (inter, 2 * inter),
        "down_proj": (0, spec.hidden_size),
    }


@dataclass
class LoraWeights:
    """One adapter, ready to install: per (layer, module), A^T [in, r] and scale * B^T
    [r, out], in the stack's dtype."""

    adapter_id: str
    rank: int
    pairs: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]

    @property
    def modules(self) -> frozenset[str]:
        return frozenset(m for _, m in self.pairs)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes + b.nbytes for a, b in self.pairs.values())


def lora_scale(config: dict[str, object], rank: int) -> float:
    alpha = config.get("lora_alpha", rank)
    if not isinstance(alpha, int | float):
        raise AdapterLoadError(f"lora_alpha {alpha!r} is not a number")
    if config.get("use_rslora"):
        return float(alpha) / math.sqrt(rank)
    return float(alpha) / rank


def read_adapter(
    adapter_id: str, folder: Path, spec: ModelSpec, dtype: torch.dtype
) -> LoraWeights:
    """Read and convert a peft LoRA folder (adapter_config.json + adapter_model.safetensors).
    Runs in a worker thread; raises AdapterLoadError with a user-facing reason."""
    from safetensors import safe_open

    try:
        config = json.loads((folder / "adapter_config.json").read_text())
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise AdapterLoadError(f"adapter {adapter_id!r}: bad adapter_config.json ({exc})") from None
    weights_path = folder / "adapter_model.safetensors"
    if not weights_path.is_file():
        raise AdapterLoadError(f"adapter {adapter_id!r} has no adapter_model.safetensors")
    raw: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    try:
        with safe_open(str(weights_path), framework="pt") as handle:
            shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}  # noqa: SIM118
            info = check_adapter(config, shapes, base_dims(spec))
            for name in shapes:
                m = _TENSOR.search(name)
                assert m is not None  # check_adapter accepted every name
                key = (int(m.group(1)), m.group(2))
                raw.setdefault(key, {})[m.group(3)] = handle.get_tensor(name)
    except AdapterError as exc:
        raise AdapterLoadError(f"adapter {adapter_id!r} does not fit this model: {exc}") from None
    except (OSError, RuntimeError, ValueError) as exc:
        raise AdapterLoadError(f"adapter {adapter_id!r}: cannot read its weights ({exc})") from None
    scale = lora_scale(config, info.rank)
    pairs: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
    for key, ab in raw.items():
        if set(ab) != {"A", "B"}:
            raise AdapterLoadError(f"adapter {adapter_id!r}: layer {key[0]} {key[1]} lacks A or B")
        # Scaled in float32, then cast once: fp16 files and the scale lose nothing extra.
        a_t = ab["A"].to(torch.float32).t().contiguous().to(dtype)
        b_t = (ab["B"].to(torch.float32) * scale).t().contiguous().to(dtype)
        pairs[key] = (a_t, b_t)
    return LoraWeights(adapter_id=adapter_id, rank=info.rank, pairs=pairs)


class LoraStack:
    """The resident adapters' weights, one slot each; owned by the engine thread."""

    def __init__(self, spec: ModelSpec, max_slots: int, dtype: torch.dtype, device: torch.device):
        self.spec = spec
        self.max_slots = max_slots
        self.dtype = dtype
        self.device = device
        self.columns = module_columns(spec)
        dims = base_dims(spec)
        self._shapes = {m: dims.shape(m) for m in MODULES}
        self.capacity = 0  # slots allocated
        self.rank = 0  # r_max
        # module -> per-layer tensors; only modules some installed adapter targets exist.
        self.a: dict[str, list[torch.Tensor]] = {}
        self.b: dict[str, list[torch.Tensor]] = {}

    @property
    def allocated_bytes(self) -> int:
        return sum(t.nbytes for ts in (*self.a.values(), *self.b.values()) for t in ts)

    def modules_in(self, group: str) -> list[str]:
        return [m for m in MODULES if GROUP_OF[m] == group and m in self.a]

    def install(self, slot: int, weights: LoraWeights) -> None:
        """Put an adapter into `slot` (replacing whatever was there). Called between steps."""
        if not 0 <= slot < self.max_slots:
            raise ValueError(f"slot {slot} out of range")
        self._grow(slot + 1, max(self.rank, weights.rank), weights.modules)
        for module in self.a:
            for layer in range(self.spec.num_layers):
                self.a[module][layer][slot].zero_()
                self.b[module][layer][slot].zero_()
        for (layer, module), (a_t, b_t) in weights.pairs.items():
            r = a_t.shape[1]
            self.a[module][layer][slot, :, :r].copy_(a_t)
            self.b[module][layer][slot, :r, :].copy_(b_t)

    def _grow(self, slots: int, rank: int, modules: frozenset[str]) -> None:
        new_cap = self.capacity
        if slots > self.capacity:
            new_cap = min(self.max_slots, -(-slots // _SLOT_STEP) * _SLOT_STEP)
        if new_cap != self.capacity or rank != self.rank:
            for module in list(self.a):
                self.a[module] = [self._resized(t, new_cap, rank, 2) for t in self.a[module]]
                self.b[module] = [self._resized(t, new_cap, rank, 1) for t in self.b[module]]
            self.capacity, self.rank = new_cap, rank
        for module in modules:
            if module not in self.a:
                fan_in, fan_out = self._shapes[module]
                layers = range(self.spec.num_layers)
                self.a[module] = [self._zeros(self.capacity, fan_in, self.rank) for _ in layers]
                self.b[module] = [self._zeros(self.capacity, self.rank, fan_out) for _ in layers]

    def _zeros(self, *shape: int) -> torch.Tensor:
        return torch.zeros(shape, dtype=self.dtype, device=self.device)

    def _resized(self, t: torch.Tensor, slots: int, rank: int, rank_dim: int) -> torch.Tensor:
        shape = list(t.shape)
        shape[0], shape[rank_dim] = slots, rank
        out = self._zeros(*shape)
        index = tuple(slice(0, n) for n in t.shape)
        out[index].copy_(t)
        return out

    def for_step(
        self, adapter_rows: torch.Tensor, decode_rows: int, spans: list[tuple[int, int]]
    ) -> StepLora | None:
        """What one step needs: which rows use which slot. `spans` are the prefill chunks as
        (first row, rows). None when no row uses an adapter (the base-only fast path)."""
        if not self.a:
            return None
        adapters = adapter_rows.tolist()
        rows = [i for i in range(decode_rows) if adapters[i] >= 0]
        chunks = [(r, r + n, adapters[r]) for r, n in spans if adapters[r] >= 0]
        if not rows and not chunks:
            return None
        device = self.device
        slots = [adapters[i] for i in rows]
        # torch's float32 bmm takes another kernel for a batch of one, which rounds
        # differently; a lone row is computed as a batch of two copies so that its delta has
        # the same bits alone and in a crowd.
        gather = rows * 2 if len(rows) == 1 else rows
        gather_slots = slots * 2 if len(rows) == 1 else slots
        return StepLora(
            stack=self,
            rows=torch.tensor(rows, dtype=torch.long, device=device) if rows else None,
            gather=torch.tensor(gather, dtype=torch.long, device=device) if rows else None,
            slots=torch.tensor(gather_slots, dtype=torch.long, device=device) if rows else None,
            chunks=chunks,
        )


@dataclass
class StepLora:
    """One step's LoRA work: decode `rows` (read through `gather`, see for_step) use `slots`;
    `chunks` are prefill spans (start, end, slot)."""

    stack: LoraStack
    rows: torch.Tensor | None
    gather: torch.Tensor | None
    slots: torch.Tensor | None
    chunks: list[tuple[int, int, int]]

    def add(self, layer: int, group: str, x: torch.Tensor, y: torch.Tensor) -> None:
        """y[:, columns of each module of `group`] += that module's LoRA delta of x, in place.
        `x` is the input of the fused projection `group`, `y` its output."""
        stack = self.stack
        modules = stack.modules_in(group)
        if not modules:
            return
        cdt = stack.dtype
        xd = None
        if self.gather is not None:
            xd = x.index_select(0, self.gather).to(cdt).unsqueeze(1)  # [m, 1, in]
        for module in modules:
            a, b = stack.a[module][layer], stack.b[module][layer]
            c0, c1 = stack.columns[module]
            if xd is not None and self.rows is not None and self.slots is not None:
                s = torch.bmm(xd, a.index_select(0, self.slots))  # [m, 1, r]
                d = torch.bmm(s, b.index_select(0, self.slots)).squeeze(1)  # [m, out]
                n = self.rows.shape[0]
                y[:, c0:c1].index_add_(0, self.rows, d[:n].to(y.dtype))
            for start, end, slot in self.chunks:
                d = (x[start:end].to(cdt) @ a[slot]) @ b[slot]
                y[start:end, c0:c1] += d.to(y.dtype)
