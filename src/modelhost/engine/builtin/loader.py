"""Start-up: weights to a ready model — resolve, read, convert to the serving dtype, warm up.

Every failure a user can fix (missing file, offline hub, unsupported architecture, bad flag
value) surfaces as WeightsError with a one-line message; the engine server prints it with the
fatal prefix so the control plane shows it as the deployment's reason.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from modelhost.engine.builtin import row_blocks
from modelhost.engine.builtin.dtype_choice import (
    DtypeChoice,
    attention_dtype,
    choose,
    detect_cpu,
)
from modelhost.engine.builtin.kv_cache import CacheShape, SlotKVCache
from modelhost.engine.builtin.model import (
    CausalLM,
    PrefillSpan,
    StepInput,
    WeightsMissing,
    load_model,
)
from modelhost.engine.builtin.options import BuiltinOptions, default_cache_dir
from modelhost.engine.builtin.prompting import PromptBuilder
from modelhost.engine.builtin.spec import UnsupportedModel, load_spec
from modelhost.engine.builtin.tokenizer import TextTokenizer, TokenizerError, load_tokenizer
from modelhost.engine.builtin.weights import WeightsError, resolve_weights

_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


@dataclass
class LoadedModel:
    model: CausalLM
    prompts: PromptBuilder  # tokenizer used on the asyncio side
    decode_tokenizer: TextTokenizer  # a second instance, used only by the engine thread
    context_length: int
    kv_budget_tokens: int
    description: str
    folder: Path  # the HF-format folder the weights were read from
    dtype_reason: str = ""  # why this dtype (see dtype_choice.py)
    row_blocks: dict[str, tuple[int, ...]] = field(default_factory=dict)  # per weight shape
    timings: dict[str, float] = field(default_factory=dict)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def pick_dtype(name: str, device: str) -> DtypeChoice:
    cpu = None if device.startswith("cuda") else detect_cpu()
    return choose(name, device, cpu)


def pick_attention_dtype(model_dtype: str, device: str) -> str:
    cpu = None if device.startswith("cuda") else detect_cpu()
    return attention_dtype(model_dtype, device, cpu)


def load(
    *,
    local: str | None,
    hf_repo: str | None,
    hf_revision: str | None,
    device: str,
    options: BuiltinOptions,
    max_batch_size: int,
) -> LoadedModel:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if device == "cpu":
        torch.set_num_threads(options.threads or available_cores())
    elif not device.startswith("cuda"):
        raise WeightsError(f"the builtin engine runs on cpu or cuda, not {device!r}")
    elif not torch.cuda.is_available():
        raise WeightsError("device cuda was requested but this torch build sees no CUDA GPU")
    files = resolve_weights(
        local=local,
        hf_repo=hf_repo,
        hf_revision=hf_revision,
        cache_dir=options.cache_dir or default_cache_dir(),
    )
    timings["resolve_s"] = time.perf_counter() - t0
    try:
        spec = load_spec(files.folder)
    except UnsupportedModel as exc:
        raise WeightsError(str(exc)) from None
    context = options.context_length or spec.max_positions
    if context > spec.max_positions:
        raise WeightsError(
            f"--context-length {context} exceeds the model's maximum of {spec.max_positions}"
        )
    choice = pick_dtype(options.dtype, device)
    dtype = _DTYPES[choice.name]
    kv_dtype = _DTYPES[pick_attention_dtype(choice.name, device)]
    t1 = time.perf_counter()
    try:
        model = load_model(files.folder, spec, dtype, device, kv_dtype)
    except WeightsMissing as exc:
        raise WeightsError(f"cannot load {files.description}: {exc}") from None
    except OSError as exc:
        raise WeightsError(f"cannot read the weights of {files.description}: {exc}") from None
    timings["weights_load_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    prompts_tok, decode_tok = _tokenizers(files.folder)
    timings["tokenizer_load_s"] = time.perf_counter() - t2
    t3 = time.perf_counter()
    row_blocks = _calibrate(model, options.cache_dir or default_cache_dir())
    timings["calibrate_s"] = time.perf_counter() - t3
    t4 = time.perf_counter()
    warm_up(model)
    timings["warmup_s"] = time.perf_counter() - t4
    element = torch.empty((), dtype=kv_dtype).element_size()
    budget = int(options.kv_cache_gb * 1e9) // (spec.kv_elements_per_token * element)
    timings["load_total_s"] = time.perf_counter() - t0
    return LoadedModel(
        model=model,
        prompts=PromptBuilder(prompts_tok),
        decode_tokenizer=decode_tok,
        context_length=context,
        kv_budget_tokens=max(budget, context),
        description=files.description,
        folder=files.folder,
        dtype_reason=choice.reason,
        row_blocks=row_blocks,
        timings=timings,
    )


def _calibrate(model: CausalLM, cache_dir: Path) -> dict[str, tuple[int, ...]]:
    """The row blocks of every linear (row_blocks.py), probed once per machine and weight
    shape and cached: the probe costs about a second, a cache hit nothing."""
    if model.device.type != "cpu":
        return model.calibrate_row_blocks()
    path = cache_dir / "row-blocks" / f"{row_blocks.machine_key(model.dtype)}.json"
    known = row_blocks.load_known(path)
    found = model.calibrate_row_blocks(known)
    if found != known:
        row_blocks.save_known(path, found)
    return found


def _tokenizers(folder: Path) -> tuple[TextTokenizer, TextTokenizer]:
    try:
        tokenizer = load_tokenizer(folder)
    except TokenizerError as exc:
        raise WeightsError(str(exc)) from None
    # Two instances, one per thread: the asyncio side encodes while the engine decodes.
    return tokenizer, tokenizer.clone()


def warm_up(model: CausalLM) -> None:
    """One prefill and one decode so the first request does not pay for kernel setup."""
    spec = model.spec
    shape = CacheShape(
        spec.num_layers, spec.num_kv_heads, spec.head_dim, model.kv_dtype, model.device
    )
    cache = SlotKVCache(shape, max_slots=2, max_length=64)
    cache.ensure(2, 64)
    dev = model.device
    n = 8

    def ids(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=dev)

    prefill = StepInput(
        tokens=ids([0] * n),
        positions=ids(list(range(n))),
        slots=ids([0] * n),
        adapter_rows=ids([-1] * n),
        decode_rows=0,
        active_slots=1,
        slot_lengths=ids([n]),
        prefill=(PrefillSpan(row=0, length=n, slot=0, start=0),),
        sample_rows=ids([n - 1]),
    )
    model.forward(prefill, cache)
    decode = StepInput(
        tokens=ids([0]),
        positions=ids([n]),
        slots=ids([0]),
        adapter_rows=ids([-1]),
        decode_rows=1,
        active_slots=1,
        slot_lengths=ids([n + 1]),
        prefill=(),
        sample_rows=ids([0]),
    )
    model.forward(decode, cache)
