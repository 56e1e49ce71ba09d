"""Batched multi-LoRA for the builtin engine: adapter weights, their slot stack, and the
per-row delta of a mixed batch.

Every resident adapter owns a slot of `LoraStack`. Per layer, the stack holds A^T of every slot
as [slots, in, R] per fused projection (q/k/v share their input, as do gate/up; R = r_max x the
group's modules) and scale * B^T as [slots, r_max, out] per module, zero-padded to the largest
rank seen, so any mix of ranks shares one layout and the padding adds exactly zero. The base
weights are never touched: after each base projection, `StepLora.add` adds
y += scale * (x A_i^T) B_i^T to the rows that use an adapter, in the spirit of Punica's BGMV /
S-LoRA: rows are laid out as lanes of one batched matmul (batch element = slot, lane = a row of
that slot), so one `torch.bmm` shrinks every row with its own adapter and one more per module
expands it, reading the stack in place. The step's decode rows (any mix of adapters) form one
such segment, its prefill chunks another.

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
_SINGLE_THREAD_ROWS = 256  # LoRA segments up to this many lanes run on one thread (see add)
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


def read_adapter(adapter_id: str, folder: Path, spec: ModelSpec, dtype: torch.dtype) -> LoraWeights:
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
    except Exception as exc:  # safetensors' own error types too: any unreadable file
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
        # Only modules some installed adapter targets exist. A is stored per fused projection
        # ("group": q/k/v share their input, as do gate/up): one matmul shrinks x for every
        # module of the group, module j's A in columns [j * rank, (j + 1) * rank).
        self.group_modules: dict[str, list[str]] = {}
        self.a: dict[str, list[torch.Tensor]] = {}  # group -> per layer [slots, in, R]
        self.b: dict[str, list[torch.Tensor]] = {}  # module -> per layer [slots, rank, out]

    @property
    def allocated_bytes(self) -> int:
        return sum(t.nbytes for ts in (*self.a.values(), *self.b.values()) for t in ts)

    def modules_in(self, group: str) -> list[str]:
        return self.group_modules.get(group, [])

    def install(self, slot: int, weights: LoraWeights) -> None:
        """Put an adapter into `slot` (replacing whatever was there). Called between steps."""
        if not 0 <= slot < self.max_slots:
            raise ValueError(f"slot {slot} out of range")
        self._grow(slot + 1, max(self.rank, weights.rank), weights.modules)
        for tensors in (*self.a.values(), *self.b.values()):
            for t in tensors:
                t[slot].zero_()
        for (layer, module), (a_t, b_t) in weights.pairs.items():
            group = GROUP_OF[module]
            col = self.group_modules[group].index(module) * self.rank
            r = a_t.shape[1]
            self.a[group][layer][slot, :, col : col + r].copy_(a_t)
            self.b[module][layer][slot, :r, :].copy_(b_t)

    def _grow(self, slots: int, rank: int, modules: frozenset[str]) -> None:
        new_cap = self.capacity
        if slots > self.capacity:
            # At least two slots, so a segment can always read two neighbours (see _segment).
            new_cap = max(2, min(self.max_slots, -(-slots // _SLOT_STEP) * _SLOT_STEP))
        wanted = {
            g: [m for m in MODULES if GROUP_OF[m] == g and (m in modules or m in self.b)]
            for g in {GROUP_OF[m] for m in (*modules, *self.b)}
        }
        layers = range(self.spec.num_layers)
        for group, mods in wanted.items():
            old_mods = self.group_modules.get(group, [])
            if mods == old_mods and new_cap == self.capacity and rank == self.rank:
                continue
            fan_in = self._shapes[mods[0]][0]
            new_a = [self._zeros(new_cap, fan_in, rank * len(mods)) for _ in layers]
            for j, module in enumerate(old_mods):  # keep what is installed
                k = mods.index(module)
                for old, new in zip(self.a[group], new_a, strict=True):
                    src = old[:, :, j * self.rank : (j + 1) * self.rank]
                    new[: self.capacity, :, k * rank : k * rank + self.rank].copy_(src)
            self.a[group] = new_a
            self.group_modules[group] = mods
        for mods in wanted.values():
            for module in mods:
                if module in self.b:
                    if new_cap != self.capacity or rank != self.rank:
                        self.b[module] = [self._resized(t, new_cap, rank) for t in self.b[module]]
                else:
                    fan_out = self._shapes[module][1]
                    self.b[module] = [self._zeros(new_cap, rank, fan_out) for _ in layers]
        self.capacity, self.rank = new_cap, rank

    def _zeros(self, *shape: int) -> torch.Tensor:
        return torch.zeros(shape, dtype=self.dtype, device=self.device)

    def _resized(self, t: torch.Tensor, slots: int, rank: int) -> torch.Tensor:
        shape = list(t.shape)
        shape[0], shape[1] = slots, rank
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
        segments: list[Segment] = []
        by_slot: dict[int, list[int]] = {}
        for row in range(decode_rows):
            if adapters[row] >= 0:
                by_slot.setdefault(adapters[row], []).append(row)
        if by_slot:
            segments.append(self._segment(by_slot))
        # Prefill chunks in a segment of their own: a chunk's many rows would pad every decode
        # slot to as many lanes. Chunks of sequences with the same adapter share its lanes.
        prefill: dict[int, list[int]] = {}
        for row, n in spans:
            if adapters[row] >= 0:
                prefill.setdefault(adapters[row], []).extend(range(row, row + n))
        if prefill:
            segments.append(self._segment(prefill))
        return StepLora(self, segments) if segments else None

    def _segment(self, by_slot: dict[int, list[int]]) -> Segment:
        """Lay rows out as lanes of a batched matmul: batch element i is slot lo + i (or the
        i-th gathered slot), lane j its j-th row, so one `torch.bmm` applies every row's own
        adapter. float32 bmm rounds a row the same way for any batch >= 2 and any lane count
        >= 2 (measured; a batch or lane count of one takes other kernels), so both are at least
        two: a row's delta then has the same bits alone and in any crowd."""
        slots = sorted(by_slot)
        device = self.device

        def tensor(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.long, device=device)

        if len(slots) == 1:
            # One adapter (one prefill chunk, or a batch of one adapter): its rows fill two
            # batch elements that both read the slot in place (a stride-0 view), so no lane
            # is padding.
            (slot,) = slots
            only = by_slot[slot]
            lanes_per = max(2, -(-len(only) // 2))
            return Segment(
                rows=tensor(only),
                lanes=tensor(list(range(len(only)))),
                lane_rows=tensor(only + [only[0]] * (2 * lanes_per - len(only))),
                batch=2,
                lanes_per=lanes_per,
                lo=slot,
                gather=None,
                repeat=True,
            )
        lanes_per = max(2, max(len(rows) for rows in by_slot.values()))
        lo, hi = slots[0], slots[-1] + 1
        gather: list[int] | None = None
        if hi - lo <= 2 * len(slots) + 8:
            # Dense enough: read the stack's slots [lo, hi) in place, no copy.
            position = {slot: slot - lo for slot in slots}
            batch = hi - lo
        else:
            # Sparse: copy just the slots in use (padded to two).
            gather = slots if len(slots) >= 2 else slots * 2
            position = {slot: i for i, slot in enumerate(slots)}
            batch = len(gather)
        rows: list[int] = []
        lanes: list[int] = []
        # Lanes nobody uses read some real row: their results are never picked, and this
        # saves zero-filling a buffer in every layer.
        lane_rows = [next(iter(by_slot.values()))[0]] * (batch * lanes_per)
        for slot, slot_rows in by_slot.items():
            base = position[slot] * lanes_per
            rows.extend(slot_rows)
            lanes.extend(range(base, base + len(slot_rows)))
            lane_rows[base : base + len(slot_rows)] = slot_rows
        return Segment(
            rows=tensor(rows),
            lanes=tensor(lanes),
            lane_rows=tensor(lane_rows),
            batch=batch,
            lanes_per=lanes_per,
            lo=lo,
            gather=tensor(gather) if gather is not None else None,
        )


@dataclass
class Segment:
    """Rows computed by one batched matmul per module (see LoraStack._segment)."""

    rows: torch.Tensor  # [n] rows of the step
    lanes: torch.Tensor  # [n] their flat positions in [batch * lanes_per]
    lane_rows: torch.Tensor  # [batch * lanes_per] the row each lane reads
    batch: int
    lanes_per: int
    lo: int  # first slot, when reading slots [lo, lo + batch) in place
    gather: torch.Tensor | None  # else: the slots to copy, one per batch element
    repeat: bool = False  # every batch element reads slot `lo`

    @property
    def width(self) -> int:
        return self.batch * self.lanes_per

    def weights(self, stacked: torch.Tensor) -> torch.Tensor:
        if self.repeat:
            return stacked[self.lo : self.lo + 1].expand(self.batch, -1, -1)
        if self.gather is not None:
            return stacked.index_select(0, self.gather)
        return stacked[self.lo : self.lo + self.batch]


@dataclass
class StepLora:
    """One step's LoRA work: the decode rows (one segment) and each prefill chunk (one each)."""

    stack: LoraStack
    segments: list[Segment]

    def add(self, layer: int, group: str, x: torch.Tensor, y: torch.Tensor) -> None:
        """y[:, columns of each module of `group`] += that module's LoRA delta of x, in place.
        `x` is the input of the fused projection `group`, `y` its output."""
        modules = self.stack.modules_in(group)
        if not modules:
            return
        threads = torch.get_num_threads()
        for seg in self.segments:
            # A decode segment's ops are tiny: waking the other threads for each costs more
            # than the op (measured 2-3x slower per op with 2 threads on a shared machine).
            # Prefill segments have enough rows to be worth the threads.
            single = threads > 1 and x.device.type == "cpu" and seg.width <= _SINGLE_THREAD_ROWS
            if single:
                torch.set_num_threads(1)
            try:
                self._add(seg, layer, group, modules, x, y)
            finally:
                if single:
                    torch.set_num_threads(threads)

    def _add(
        self,
        seg: Segment,
        layer: int,
        group: str,
        modules: list[str],
        x: torch.Tensor,
        y: torch.Tensor,
    ) -> None:
        stack = self.stack
        xs = x.index_select(0, seg.lane_rows).to(stack.dtype).view(seg.batch, seg.lanes_per, -1)
        shrunk = torch.bmm(xs, seg.weights(stack.a[group][layer]))  # every module at once
        r = stack.rank
        for j, module in enumerate(modules):
            c0, c1 = stack.columns[module]
            part = shrunk[:, :, j * r : (j + 1) * r] if len(modules) > 1 else shrunk
            delta = torch.bmm(part, seg.weights(stack.b[module][layer]))
            picked = delta.view(seg.width, -1).index_select(0, seg.lanes)
            y[:, c0:c1].index_add_(0, seg.rows, picked.to(y.dtype))
