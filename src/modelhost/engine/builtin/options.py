"""Engine-specific flags of the builtin engine (the `engine_args` of a deployment).

They follow the common engine flags on the command line (`modelhost.engine.args` leaves them in
`EngineArgs.extra`). Defaults are chosen for CPU serving of small models; every one is
documented in docs/engine-builtin.md.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

DTYPES = ("auto", "bfloat16", "float32", "float16")


class OptionsError(ValueError):
    """An engine flag has a value the engine cannot use; the message names the flag."""


@dataclass(frozen=True)
class BuiltinOptions:
    dtype: str = "auto"  # "auto": bfloat16 (see docs/engine-builtin.md for why)
    context_length: int | None = None  # None: the model's own maximum
    threads: int | None = None  # None: every core this process may run on
    max_prefill_tokens: int = 512  # prompt tokens computed per step (chunked prefill)
    kv_cache_gb: float = 4.0  # memory the KV cache may reserve
    seed: int | None = None  # base of the random seeds given to unseeded requests
    cache_dir: Path | None = None  # None: MODELHOST_CACHE_DIR or ~/.cache/modelhost


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="builtin engine flags", add_help=False, exit_on_error=False)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--context-length", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--max-prefill-tokens", type=int, default=512)
    p.add_argument("--kv-cache-gb", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--cache-dir", default=None)
    return p


def parse_options(extra: tuple[str, ...] | list[str]) -> BuiltinOptions:
    """Parse the builtin engine's flags; unknown or malformed flags raise OptionsError so the
    deployment fails with a reason instead of silently ignoring a typo."""
    try:
        ns, unknown = _parser().parse_known_args(list(extra))
    except (argparse.ArgumentError, SystemExit) as exc:
        raise OptionsError(f"invalid builtin engine flag: {exc}") from None
    if unknown:
        raise OptionsError(f"unknown builtin engine flag(s): {' '.join(unknown)}")
    if ns.dtype not in DTYPES:
        raise OptionsError(f"--dtype must be one of {', '.join(DTYPES)}, not {ns.dtype!r}")
    if ns.context_length is not None and ns.context_length < 16:
        raise OptionsError("--context-length must be at least 16")
    if ns.threads is not None and ns.threads < 1:
        raise OptionsError("--threads must be at least 1")
    if ns.max_prefill_tokens < 16:
        raise OptionsError("--max-prefill-tokens must be at least 16")
    if ns.kv_cache_gb <= 0:
        raise OptionsError("--kv-cache-gb must be positive")
    cache = ns.cache_dir or os.environ.get("MODELHOST_CACHE_DIR")
    return BuiltinOptions(
        dtype=ns.dtype,
        context_length=ns.context_length,
        threads=ns.threads,
        max_prefill_tokens=ns.max_prefill_tokens,
        kv_cache_gb=ns.kv_cache_gb,
        seed=ns.seed,
        cache_dir=Path(cache).expanduser() if cache else None,
    )


def default_cache_dir() -> Path:
    env = os.environ.get("MODELHOST_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "modelhost"
