"""The `builtin` engine: a real model on PyTorch (CPU or CUDA) with continuous batching.

`build_generator(args)` is what `python -m modelhost.engine --engine builtin` calls. Heavy
imports (torch, transformers) happen inside it, so importing this package stays cheap.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

# Must be set before torch loads libgomp. With the default (spinning) wait policy a step's
# ~300 parallel regions each wait for a descheduled worker whenever other processes share the
# cores, which measured 10x slower steps on a busy 2-core machine; passive waiting cost nothing
# when the machine was quiet.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from modelhost.engine.builtin.options import BuiltinOptions, OptionsError, parse_options

if TYPE_CHECKING:
    from modelhost.engine.args import EngineArgs
    from modelhost.engine.builtin.generator import BuiltinGenerator


def build_generator(args: EngineArgs) -> BuiltinGenerator:
    """Raises OptionsError (a ValueError) naming the flag when an engine flag is invalid."""
    from modelhost.engine.builtin.generator import BuiltinGenerator, WeightsSource

    options = parse_options(args.extra)
    return BuiltinGenerator(
        served_model_name=args.served_model_name,
        max_batch_size=args.max_batch_size,
        weights=WeightsSource(
            local=args.weights_local,
            hf_repo=args.weights_hf_repo,
            hf_revision=args.weights_hf_revision,
        ),
        device=args.device,
        options=options,
        adapter_dir=args.adapter_dir,
        max_active_adapters=args.max_active_adapters,
        preload_adapters=args.preload_adapters,
    )


__all__ = ["BuiltinOptions", "OptionsError", "build_generator", "parse_options"]
