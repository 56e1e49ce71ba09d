"""The builtin engine's forward pass: a Llama-family decoder over HF weights.

One call computes one engine step for a ragged batch: rows are tokens of many sequences (decode
tokens and prefill chunks side by side, see `StepInput`), so every linear layer runs once per
step over all rows. Attention is the only per-sequence part: decode rows read their slot of the
KV cache in one batched SDPA call; each prefill chunk attends over its own slot.

Greedy output must not depend on the batch, so every kernel here must give a row the same bits
whatever else is in the batch. Linears run on blocks of row counts checked at start to have
that property on this CPU (row_blocks.py); SDPA with a mask is invariant when the key length is
padded to a multiple of 32 (KEY_BLOCK), which is why key lengths are rounded up. Weights are
read from safetensors once; on CPU, linears are pre-packed for oneDNN.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from modelhost.engine.builtin.kv_cache import SlotKVCache, round_up
from modelhost.engine.builtin.row_blocks import CANDIDATES, consistent_sizes, run_in_blocks
from modelhost.engine.builtin.spec import ModelSpec

if TYPE_CHECKING:
    from modelhost.engine.builtin.lora import StepLora

KEY_BLOCK = 32  # attention key lengths are padded to a multiple of this (batch invariance)
_PACK_HINT = 16  # oneDNN blocks packed weights for this many rows; fastest from 1 to 64 rows
# The LM head only sees the rows that sample (a batch's decode rows and its prompts' last rows);
# probing it beyond 64 rows would cost more start time than it saves.
_LM_HEAD_CANDIDATES = tuple(c for c in CANDIDATES if c <= 64)


class WeightsMissing(Exception):
    """A tensor the architecture needs is absent from the checkpoint."""


class Linear:
    """y = x W^T (+ b). On CPU the weight is pre-packed for oneDNN once (bf16 and fp32), which
    skips the per-call reorder and is about twice as fast as MKL's fp32 GEMM here. `sizes`, once
    calibrated, are the row counts each call is made with (row_blocks.py); None: any count."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, packed: bool) -> None:
        self.bias = bias
        self.in_features = weight.shape[1]
        self.out_features = weight.shape[0]
        self.packed = packed
        self.weight = (
            torch.ops.mkldnn._reorder_linear_weight(weight, _PACK_HINT) if packed else weight
        )
        self.sizes: tuple[int, ...] | None = None

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """One GEMM over every row of x, whatever their count."""
        if self.packed:
            out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(
                x, self.weight, self.bias, "none", [], ""
            )
            return out
        return F.linear(x, self.weight, self.bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.sizes is None:
            return self.apply(x)
        return run_in_blocks(self.apply, x, self.sizes)

    def shape_key(self) -> tuple[int, int, int, int]:
        return (self.out_features, self.in_features, int(self.bias is not None), int(self.packed))


@dataclass
class Layer:
    input_norm: torch.Tensor
    qkv: Linear
    o_proj: Linear
    post_norm: torch.Tensor
    gate_up: Linear
    down: Linear


@dataclass(frozen=True)
class PrefillSpan:
    """A chunk of one sequence's prompt: rows [row, row+length) of the step, positions
    [start, start+length) of slot `slot`."""

    row: int
    length: int
    slot: int
    start: int


@dataclass(frozen=True)
class StepInput:
    """One engine step, flattened. Rows are tokens; decode rows come first, then prefill spans.

    `adapter_rows` is the per-row LoRA adapter index (-1 = base model). It is carried already so
    the multi-LoRA work can apply each row's delta with a gather/segmented matmul without
    changing the batch layout; the base forward ignores it.
    """

    tokens: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    slots: torch.Tensor  # [T] int64, the KV-cache slot of each row
    adapter_rows: torch.Tensor  # [T] int64
    decode_rows: int  # rows [0, decode_rows) are single decode tokens
    active_slots: int  # slots 0..active_slots-1 are in use
    slot_lengths: torch.Tensor  # [active_slots] int64, tokens in each slot after this step
    prefill: tuple[PrefillSpan, ...]
    sample_rows: torch.Tensor  # [S] int64, rows whose next-token logits are wanted


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # Same op order as HF's LlamaRMSNorm so results match it bit for bit in the same dtype.
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


class CausalLM:
    def __init__(
        self,
        spec: ModelSpec,
        tensors: dict[str, torch.Tensor],
        dtype: torch.dtype,
        device: str,
        kv_dtype: torch.dtype | None = None,
    ) -> None:
        self.spec = spec
        self.dtype = dtype
        # The KV cache and attention may run in another dtype than the linears (see
        # dtype_choice.attention_dtype): fp32 attention is 4x faster on CPUs without AMX.
        self.kv_dtype = kv_dtype or dtype
        self.device = torch.device(device)
        packed = self.device.type == "cpu" and can_pack(dtype)

        def get(name: str) -> torch.Tensor:
            if name not in tensors:
                raise WeightsMissing(f"the checkpoint has no tensor {name}")
            return tensors[name].to(device=self.device, dtype=dtype).contiguous()

        def opt(name: str) -> torch.Tensor | None:
            return get(name) if name in tensors else None

        self.embed = get("model.embed_tokens.weight")
        self.norm = get("model.norm.weight")
        head = self.embed if spec.tie_word_embeddings else opt("lm_head.weight")
        self.lm_head = Linear(self.embed if head is None else head, None, packed)
        self.layers: list[Layer] = []
        for i in range(spec.num_layers):
            p = f"model.layers.{i}."
            a = p + "self_attn."
            qkv_w = torch.cat([get(a + n + "_proj.weight") for n in "qkv"])
            qkv_b = torch.cat([get(a + n + "_proj.bias") for n in "qkv"]) if spec.qkv_bias else None
            gate_up = torch.cat([get(p + "mlp.gate_proj.weight"), get(p + "mlp.up_proj.weight")])
            self.layers.append(
                Layer(
                    input_norm=get(p + "input_layernorm.weight"),
                    qkv=Linear(qkv_w, qkv_b, packed),
                    o_proj=Linear(get(a + "o_proj.weight"), opt(a + "o_proj.bias"), packed),
                    post_norm=get(p + "post_attention_layernorm.weight"),
                    gate_up=Linear(gate_up, None, packed),
                    down=Linear(get(p + "mlp.down_proj.weight"), None, packed),
                )
            )
        positions = torch.arange(spec.max_positions, dtype=torch.float32)
        freqs = positions[:, None] * spec.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos = (emb.cos() * spec.rope_scaling).to(device=self.device, dtype=dtype)
        sin = emb.sin() * spec.rope_scaling
        half = spec.head_dim // 2
        # rotate_half(x) = [-x2, x1] = flip(x halves) with the first half's sign flipped.
        self.signed_sin = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1).to(
            device=self.device, dtype=dtype
        )

    @torch.inference_mode()
    def forward(
        self, step: StepInput, cache: SlotKVCache, lora: StepLora | None = None
    ) -> torch.Tensor:
        """Run one step, writing the new keys/values into `cache`; returns float32 logits
        [len(sample_rows), vocab]. `lora` adds each row's adapter delta (lora.py)."""
        spec = self.spec
        nh, nkv, hd = spec.num_heads, spec.num_kv_heads, spec.head_dim
        t = step.tokens.shape[0]
        x = F.embedding(step.tokens, self.embed)
        cos = self.cos[step.positions].unsqueeze(1)
        sin = self.signed_sin[step.positions].unsqueeze(1)
        half = hd // 2
        decode_mask, key_len = self._decode_mask(step)
        prefill_masks = [self._prefill_mask(span) for span in step.prefill]
        flat_index = step.slots * cache.length_capacity + step.positions  # rows of a flat view
        for i, (layer, keys, values) in enumerate(
            zip(self.layers, cache.keys, cache.values, strict=True)
        ):
            h = _rms_norm(x, layer.input_norm, spec.rms_norm_eps)
            qkv = layer.qkv(h)
            if lora is not None:
                lora.add(i, "qkv", h, qkv)
            # RoPE on q and k in one go; flip(halves) * signed sin == rotate_half(x) * sin.
            qk = qkv[:, : (nh + nkv) * hd].view(t, nh + nkv, hd)
            swapped = qk.view(t, nh + nkv, 2, half).flip(-2).view(t, nh + nkv, hd)
            qk = qk * cos + swapped * sin
            q, k = qk[:, :nh], qk[:, nh:]
            v = qkv[:, (nh + nkv) * hd :].view(t, nkv, hd)
            if self.kv_dtype != x.dtype:
                q, k, v = q.to(self.kv_dtype), k.to(self.kv_dtype), v.to(self.kv_dtype)
            keys.view(-1, nkv, hd).index_copy_(0, flat_index, k)
            values.view(-1, nkv, hd).index_copy_(0, flat_index, v)
            if not step.prefill:
                attn = self._decode_attention(q, step, keys, values, decode_mask, key_len)
            else:
                attn = torch.empty((t, nh * hd), dtype=self.kv_dtype, device=x.device)
            if step.decode_rows and step.prefill:
                attn[: step.decode_rows] = self._decode_attention(
                    q[: step.decode_rows], step, keys, values, decode_mask, key_len
                )
            for span, mask in zip(step.prefill, prefill_masks, strict=True):
                rows = slice(span.row, span.row + span.length)
                attn[rows] = self._prefill_attention(q[rows], span, keys, values, mask)
            attn = attn.to(x.dtype)
            o = layer.o_proj(attn)
            if lora is not None:
                lora.add(i, "o", attn, o)
            x = x + o
            h = _rms_norm(x, layer.post_norm, spec.rms_norm_eps)
            gate_up = layer.gate_up(h)
            if lora is not None:
                lora.add(i, "gate_up", h, gate_up)
            gate, up = gate_up.chunk(2, dim=-1)
            act = F.silu(gate) * up
            down = layer.down(act)
            if lora is not None:
                lora.add(i, "down", act, down)
            x = x + down
        last = _rms_norm(x[step.sample_rows], self.norm, spec.rms_norm_eps)
        return self.lm_head(last).float()

    def linears(self) -> Iterator[tuple[Linear, tuple[int, ...]]]:
        """Every linear with the row counts worth probing for it."""
        for layer in self.layers:
            for linear in (layer.qkv, layer.o_proj, layer.gate_up, layer.down):
                yield linear, CANDIDATES
        yield self.lm_head, _LM_HEAD_CANDIDATES

    def calibrate_row_blocks(
        self, known: dict[str, tuple[int, ...]] | None = None
    ) -> dict[str, tuple[int, ...]]:
        """Give every linear the row counts that keep its rows batch-invariant (row_blocks.py),
        probing one linear of each weight shape unless `known` (an earlier probe on this
        machine) has it. On CUDA nothing is probed: cuBLAS chooses its kernels by shape, so
        batch invariance is not promised there (docs/engine-builtin.md). Returns the sizes per
        shape."""
        if self.device.type != "cpu":
            return {}
        found = dict(known or {})
        with torch.inference_mode():
            for linear, candidates in self.linears():
                key = "x".join(map(str, linear.shape_key()))
                if key not in found:
                    found[key] = consistent_sizes(
                        linear.apply,
                        linear.in_features,
                        linear.out_features,
                        self.dtype,
                        self.device,
                        candidates,
                    )
                linear.sizes = found[key]
        return found

    def _decode_mask(self, step: StepInput) -> tuple[torch.Tensor | None, int]:
        if not step.decode_rows:
            return None, 0
        key_len = round_up(int(step.slot_lengths.max()), KEY_BLOCK)
        span = torch.arange(key_len, device=self.device)
        # Slots busy with prefill get a dummy query below; letting them see position 0 keeps
        # their (discarded) softmax finite.
        lengths = step.slot_lengths.clamp(min=1)
        visible = (span[None, :] < lengths[:, None])[:, None, None, :]
        # Additive form built once per step; SDPA would convert a boolean mask in every layer.
        mask = torch.zeros(visible.shape, dtype=self.kv_dtype, device=self.device)
        return mask.masked_fill_(~visible, float("-inf")), key_len

    def _decode_attention(
        self,
        q: torch.Tensor,
        step: StepInput,
        keys: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor | None,
        key_len: int,
    ) -> torch.Tensor:
        n, nh, hd = step.active_slots, self.spec.num_heads, self.spec.head_dim
        decode_slots = step.slots[: step.decode_rows]
        if step.decode_rows == n:
            # Common steady state: every slot decodes, rows are in slot order.
            query = q.reshape(n, nh, 1, hd)
        else:
            query = torch.zeros((n, nh, 1, hd), dtype=q.dtype, device=q.device)
            query[decode_slots] = q.unsqueeze(2)
        out = F.scaled_dot_product_attention(
            query,
            keys[:n, :key_len].transpose(1, 2),
            values[:n, :key_len].transpose(1, 2),
            attn_mask=mask,
            enable_gqa=True,
        )
        if step.decode_rows != n:
            out = out[decode_slots]
        return out.reshape(step.decode_rows, nh * hd)

    def _prefill_mask(self, span: PrefillSpan) -> torch.Tensor:
        key_len = round_up(span.start + span.length, KEY_BLOCK)
        rows = torch.arange(span.start, span.start + span.length, device=self.device)
        visible = torch.arange(key_len, device=self.device)[None, :] <= rows[:, None]
        mask = torch.zeros(visible.shape, dtype=self.kv_dtype, device=self.device)
        return mask.masked_fill_(~visible, float("-inf"))

    def _prefill_attention(
        self,
        q: torch.Tensor,
        span: PrefillSpan,
        keys: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        key_len = mask.shape[1]
        s = span.slot
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1).unsqueeze(0),
            keys[s : s + 1, :key_len].transpose(1, 2),
            values[s : s + 1, :key_len].transpose(1, 2),
            attn_mask=mask,
            enable_gqa=True,
        )
        return out[0].transpose(0, 1).reshape(span.length, -1)


def can_pack(dtype: torch.dtype) -> bool:
    """Whether oneDNN can pre-pack CPU weights of this dtype here (bf16 needs AVX-512 or
    AVX-NE-CONVERT; fp32 works on any x86-64 CPU torch runs on)."""
    if not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
        return False
    if dtype == torch.float32:
        return platform.machine().lower() in ("x86_64", "amd64")
    return dtype == torch.bfloat16 and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def read_safetensors(folder: Path) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise WeightsMissing(f"no .safetensors files in {folder}")
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a dict
                yield name, handle.get_tensor(name)


def load_model(
    folder: Path,
    spec: ModelSpec,
    dtype: torch.dtype,
    device: str,
    kv_dtype: torch.dtype | None = None,
) -> CausalLM:
    tensors = dict(read_safetensors(folder))
    return CausalLM(spec, tensors, dtype, device, kv_dtype)
