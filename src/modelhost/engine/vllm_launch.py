"""`python -m modelhost.engine.vllm_launch`: start vLLM's OpenAI server for one replica.

The `vllm` runtime starts this launcher with the project's interpreter and modelhost's engine
flags (the same names as `python -m modelhost.engine`), followed by the deployment's
`engine_args`. The launcher

- resolves the weights to something vLLM loads: a local HF folder as it is; a .gguf file (or a
  folder holding one) through the very folder the builtin engine converts it into and caches
  (`engine/builtin/weights.py`); a Hugging Face repo passed through as `--model REPO --revision
  REV` (its token only ever in the environment, as HF_TOKEN);
- picks `--dtype` on CPUs the way the builtin engine does (`engine/builtin/dtype_choice.py`:
  bf16 only where the CPU multiplies it natively, else float32), unless the deployment set one;
  on GPUs vLLM's own `auto` stays;
- translates modelhost's flags into vLLM's (`--max-batch-size` -> `--max-num-seqs`, the GPU
  count -> `--tensor-parallel-size`, `--context-length` -> `--max-model-len`, adapters ->
  `--enable-lora --max-loras --max-lora-rank` and `--lora-modules` for preloaded ones) and
  passes every other flag through to vLLM;
- replaces itself (`os.execve`) with vLLM's interpreter running
  `-m vllm.entrypoints.openai.api_server`, so the replica's pid is vLLM's server and the
  backend's signals reach it.

A launch that cannot happen prints one `modelhost-fatal: <reason>` line and exits with
FATAL_EXIT_CODE, like every engine; vLLM's own fatal errors are read from the replica's log by
the backend (`orchestrator/backends/local_process.py`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from modelhost.engine.args import FATAL_EXIT_CODE, FATAL_PREFIX

VLLM_MODULE = "vllm.entrypoints.openai.api_server"
# The CPU backend's KV cache (VLLM_CPU_KVCACHE_SPACE, GiB) when neither the deployment
# (`--kv-cache-gb`) nor the operator's environment sets it: vLLM's own default is 4 GiB, too
# much for several small replicas on one host.
DEFAULT_CPU_KV_CACHE_GIB = 2
# vllm-cpu keeps cores for its scheduler process, away from the model's threads. On a machine
# with this many usable cores or fewer, that halves the compute; there the reservation is off.
SMALL_CPU_CORES = 2
# LoRA ranks vLLM accepts for --max-lora-rank (vllm/config/lora.py: MaxLoRARanks).
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
DEFAULT_LORA_RANK = 16


class LaunchError(Exception):
    """The replica cannot be launched; the message is the deployment's fail_reason."""


def build_parser() -> argparse.ArgumentParser:
    """modelhost's flags for the vllm engine. Abbreviations are off: an abbreviated flag is
    vLLM's to read (and one of modelhost's own is refused in engine_args anyway)."""
    p = argparse.ArgumentParser(
        prog="python -m modelhost.engine.vllm_launch", allow_abbrev=False, exit_on_error=False
    )
    # Set by the runtime and the orchestrator: modelhost owns these.
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--served-model-name", required=True)
    p.add_argument("--max-batch-size", type=int, default=96)
    p.add_argument("--weights-local")
    p.add_argument("--weights-hf-repo")
    p.add_argument("--weights-hf-revision")
    p.add_argument("--device", default="cpu")
    p.add_argument("--num-gpus", type=int, default=1)
    p.add_argument("--adapter-dir")
    p.add_argument("--max-active-adapters", type=int, default=1)
    p.add_argument("--preload-adapter", action="append", default=[])
    p.add_argument("--quantization")
    p.add_argument("--vllm-python")
    # The deployment's to set (engine_args), with the builtin engine's names.
    p.add_argument("--cache-dir")  # a server path: admins only (engine/owned_flags.py)
    p.add_argument("--context-length", type=int)
    p.add_argument("--kv-cache-gb", type=float)
    p.add_argument("--dtype")
    p.add_argument("--max-lora-rank", type=int)
    return p


def launcher_flags() -> tuple[str, ...]:
    """Every option string of the launcher's parser that modelhost sets itself."""
    mine = {"--cache-dir", "--context-length", "--kv-cache-gb", "--dtype", "--max-lora-rank"}
    parser = build_parser()
    return tuple(
        sorted({s for action in parser._actions for s in action.option_strings if s not in mine})
    )


@dataclass(frozen=True)
class Launch:
    python: str  # vLLM's interpreter
    argv: list[str]  # what follows the interpreter: -m vllm.entrypoints.openai.api_server ...
    env: dict[str, str] = field(default_factory=dict)  # set on top of the launcher's own
    notes: tuple[str, ...] = ()  # one line each for the replica's log


def _cpu_dtype() -> tuple[str, str]:
    from modelhost.engine.builtin.dtype_choice import CpuFeatures, choose, detect_cpu

    cpu: CpuFeatures | None
    try:
        cpu = detect_cpu()
    except ImportError:  # no torch in the project's venv: fp32 is always right on a CPU
        cpu = None
    choice = choose("auto", "cpu", cpu)
    return choice.name, choice.reason


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _default_cache_dir(environ: Mapping[str, str]) -> Path:
    env = environ.get("MODELHOST_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "modelhost"


def _local_model(path: str, cache_dir: Path) -> str:
    """The folder vLLM loads for local weights: an HF folder as it is, a .gguf through the
    builtin engine's converted, cached copy."""
    from modelhost.engine.builtin.weights import WeightsError, resolve_weights

    try:
        files = resolve_weights(local=path, hf_repo=None, hf_revision=None, cache_dir=cache_dir)
    except WeightsError as exc:
        raise LaunchError(str(exc)) from None
    return str(files.folder)


def _adapter_rank(adapter_dir: str | None, adapter_ids: Sequence[str]) -> int:
    """The largest LoRA rank among the adapters a replica preloads (0 when none is readable)."""
    if not adapter_dir:
        return 0
    ranks = []
    for adapter_id in adapter_ids:
        try:
            path = Path(adapter_dir) / adapter_id / "adapter_config.json"
            config = json.loads(path.read_text())
            ranks.append(int(config.get("r", 0)))
        except (OSError, ValueError, TypeError, AttributeError):
            continue
    return max(ranks, default=0)


def lora_rank(needed: int) -> int:
    """The smallest rank vLLM accepts that holds `needed` (at least DEFAULT_LORA_RANK)."""
    for rank in LORA_RANKS:
        if rank >= max(needed, DEFAULT_LORA_RANK):
            return rank
    raise LaunchError(
        f"a preloaded adapter has LoRA rank {needed}, above vLLM's largest ({LORA_RANKS[-1]})"
    )


def plan(
    argv: Sequence[str],
    environ: Mapping[str, str],
    *,
    local_model: Callable[[str, Path], str] = _local_model,
    cpu_dtype: Callable[[], tuple[str, str]] = _cpu_dtype,
    usable_cores: Callable[[], int] = _usable_cores,
) -> Launch:
    """What to exec for `argv` (modelhost's flags, then the deployment's engine_args)."""
    try:
        ns, passthrough = build_parser().parse_known_args(list(argv))
    except (argparse.ArgumentError, SystemExit) as exc:
        raise LaunchError(f"invalid vllm engine flag: {exc}") from None
    python = ns.vllm_python or environ.get("MODELHOST_VLLM_PYTHON")
    if not python:
        raise LaunchError(
            "vLLM is not installed: no interpreter for it (run `make install`, which creates "
            ".venv-vllm, or set MODELHOST_VLLM_PYTHON to a Python that can import vllm)"
        )
    if not os.access(python, os.X_OK):
        raise LaunchError(
            f"vLLM is not installed: {python} is not an executable interpreter (run `make "
            "install`, or set MODELHOST_VLLM_PYTHON to a Python that can import vllm)"
        )
    on_gpu = ns.device.startswith("cuda")
    cache_dir = Path(ns.cache_dir).expanduser() if ns.cache_dir else _default_cache_dir(environ)
    notes: list[str] = []

    args = ["-m", VLLM_MODULE, "--host", ns.host, "--port", str(ns.port)]
    if ns.weights_local:
        model = local_model(ns.weights_local, cache_dir)
        args += ["--model", model]
        notes.append(f"weights: {ns.weights_local} (vLLM loads {model})")
    elif ns.weights_hf_repo:
        args += ["--model", ns.weights_hf_repo]
        if ns.weights_hf_revision:
            # The tokenizer's revision too: vLLM would take it from main otherwise.
            rev = ns.weights_hf_revision
            args += ["--revision", rev, "--tokenizer-revision", rev]
    else:
        raise LaunchError(
            "the vllm engine needs weights: a local path, a Hugging Face repo or a catalog model"
        )
    args += ["--served-model-name", ns.served_model_name]
    args += ["--max-num-seqs", str(ns.max_batch_size)]
    if on_gpu:
        args += ["--tensor-parallel-size", str(ns.num_gpus)]
    if ns.context_length is not None:
        args += ["--max-model-len", str(ns.context_length)]
    if ns.quantization:
        args += ["--quantization", ns.quantization]

    if ns.dtype and ns.dtype != "auto":
        args += ["--dtype", ns.dtype]
    elif not on_gpu:
        dtype, reason = cpu_dtype()
        args += ["--dtype", dtype]
        notes.append(f"dtype {dtype} ({reason})")

    # Multi-LoRA: every replica can take adapters at run time (the gateway loads them through
    # vLLM's adapter API), as many resident at once as the deployment allows.
    rank = ns.max_lora_rank or lora_rank(_adapter_rank(ns.adapter_dir, ns.preload_adapter))
    args += ["--enable-lora", "--max-loras", str(max(1, ns.max_active_adapters))]
    args += ["--max-lora-rank", str(rank)]
    if ns.preload_adapter:
        if not ns.adapter_dir:
            raise LaunchError("--preload-adapter needs --adapter-dir")
        args.append("--lora-modules")
        args += [f"{a}={Path(ns.adapter_dir) / a}" for a in ns.preload_adapter]

    env = {
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }
    # Hub downloads share the builtin engine's cache (the same layout as its snapshots).
    env["HF_HUB_CACHE"] = environ.get("HF_HUB_CACHE") or str(cache_dir / "hf")
    if on_gpu:
        if ns.kv_cache_gb is not None:
            args += ["--kv-cache-memory-bytes", str(int(ns.kv_cache_gb * 2**30))]
    else:
        if ns.kv_cache_gb is not None:
            env["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, math.ceil(ns.kv_cache_gb)))
        else:
            env["VLLM_CPU_KVCACHE_SPACE"] = environ.get(
                "VLLM_CPU_KVCACHE_SPACE", str(DEFAULT_CPU_KV_CACHE_GIB)
            )
        if "VLLM_CPU_NUM_OF_RESERVED_CPU" not in environ and usable_cores() <= SMALL_CPU_CORES:
            env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    args += passthrough
    return Launch(python=python, argv=args, env=env, notes=tuple(notes))


def fatal(message: str) -> NoReturn:
    print(f"{FATAL_PREFIX}{message}", file=sys.stderr, flush=True)
    sys.exit(FATAL_EXIT_CODE)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        launch = plan(args, os.environ)
    except LaunchError as exc:
        fatal(str(exc))
    except Exception as exc:  # anything unexpected still ends as a reason, not a traceback
        fatal(f"cannot launch vLLM: {type(exc).__name__}: {exc}")
    for note in launch.notes:
        print(f"[vllm-launch] {note}", file=sys.stderr)
    print(f"[vllm-launch] exec {launch.python} {' '.join(launch.argv)}", file=sys.stderr)
    sys.stderr.flush()
    sys.stdout.flush()
    env = {**os.environ, **launch.env}
    try:
        os.execve(launch.python, [launch.python, *launch.argv], env)
    except OSError as exc:
        fatal(f"vLLM is not installed: cannot run {launch.python}: {exc}")


if __name__ == "__main__":
    main()
