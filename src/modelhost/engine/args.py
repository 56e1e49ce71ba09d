"""Command line of an engine process: `python -m modelhost.engine ...`.

The control plane's runtimes build this command line; nothing secret ever goes on it (an HF
token travels in the child's environment as HF_TOKEN). Engine-specific flags (the `engine_args`
of a deployment) follow the common ones and are parsed by the chosen engine.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

# A replica that cannot start prints one line with this prefix to stderr and exits with
# FATAL_EXIT_CODE; the orchestrator turns the line into the deployment's fail_reason.
FATAL_PREFIX = "modelhost-fatal: "
FATAL_EXIT_CODE = 3


@dataclass(frozen=True)
class EngineArgs:
    engine: str  # "builtin" | "simulator"
    host: str
    port: int
    served_model_name: str
    max_batch_size: int
    weights_local: str | None = None
    weights_hf_repo: str | None = None
    weights_hf_revision: str | None = None
    # Devices this replica may use: "cpu", or "cuda" (CUDA_VISIBLE_DEVICES narrows which).
    device: str = "cpu"
    # Multi-LoRA: adapters live in <adapter_dir>/<adapter_id>/ (adapter_config.json +
    # adapter_model.safetensors); at most max_active_adapters are resident at once.
    adapter_dir: str | None = None
    max_active_adapters: int = 32
    preload_adapters: tuple[str, ...] = ()
    extra: tuple[str, ...] = field(default_factory=tuple)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m modelhost.engine")
    p.add_argument("--engine", choices=["builtin", "simulator"], required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--served-model-name", required=True)
    p.add_argument("--max-batch-size", type=int, default=96)
    p.add_argument("--weights-local")
    p.add_argument("--weights-hf-repo")
    p.add_argument("--weights-hf-revision")
    p.add_argument("--device", default="cpu")
    p.add_argument("--adapter-dir")
    p.add_argument("--max-active-adapters", type=int, default=32)
    p.add_argument("--preload-adapter", action="append", default=[])
    return p


def parse(argv: list[str]) -> EngineArgs:
    ns, extra = build_parser().parse_known_args(argv)
    return EngineArgs(
        engine=ns.engine,
        host=ns.host,
        port=ns.port,
        served_model_name=ns.served_model_name,
        max_batch_size=ns.max_batch_size,
        weights_local=ns.weights_local,
        weights_hf_repo=ns.weights_hf_repo,
        weights_hf_revision=ns.weights_hf_revision,
        device=ns.device,
        adapter_dir=ns.adapter_dir,
        max_active_adapters=ns.max_active_adapters,
        preload_adapters=tuple(ns.preload_adapter),
        extra=tuple(extra),
    )
