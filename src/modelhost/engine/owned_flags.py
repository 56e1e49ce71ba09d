"""Engine flags modelhost sets itself, which a deployment's `engine_args` may not override.

The engine parses its command line with argparse (`modelhost.engine.args.build_parser`), which
lets the last occurrence of a flag win and expands unique prefixes (`--ho` means `--host`), and
takes `--host=x` as well as `--host x`. So a user flag is refused when argparse would read it
as one of ours, in any of those spellings: otherwise `--host 0.0.0.0` would expose a replica's
unauthenticated engine API beyond loopback.

The `vllm` engine's flags go to vLLM's parser, which reads `--max_num_seqs` as `--max-num-seqs`
and `--model.x v` as `--model '{"x": v}'` as well; there modelhost owns the launcher's flags
(`modelhost.engine.vllm_launch`), the vLLM flags the launcher sets, and the vLLM flags that
would reach beyond the replica's devices, port and weights (other GPUs, files or code of the
server, an API key the gateway does not know).
"""

from __future__ import annotations

from collections.abc import Iterable

from modelhost.engine.args import build_parser
from modelhost.engine.vllm_launch import launcher_flags

# vLLM flags a deployment's engine_args may not set on the vllm engine.
VLLM_OWNED_FLAGS = (
    # Set by the launcher from the deployment's fields.
    "--model",
    "--served-model-name",
    "--host",
    "--port",
    "--max-num-seqs",
    "--tensor-parallel-size",
    "-tp",
    "--enable-lora",
    "--max-loras",
    "--max-cpu-loras",
    "--lora-modules",
    "--revision",
    "--tokenizer-revision",
    "--quantization",
    "-q",
    # More devices or processes than the replica was given.
    "--pipeline-parallel-size",
    "-pp",
    "--data-parallel-size",
    "-dp",
    "--data-parallel-size-local",
    "-dpl",
    "--data-parallel-address",
    "--data-parallel-rpc-port",
    "--data-parallel-backend",
    "--distributed-executor-backend",
    "--nnodes",
    "--node-rank",
    "--headless",
    "--api-server-count",
    # Where and how it listens: the gateway calls 127.0.0.1:<port> without a key.
    "--uds",
    "--api-key",
    "--root-path",
    "--ssl-keyfile",
    "--ssl-certfile",
    "--ssl-ca-certs",
    # Files, code or credentials of the server.
    "--config",
    "--download-dir",
    "--hf-token",
    "--tokenizer",
    "--hf-config-path",
    "--trust-remote-code",
    "--middleware",
    "--tool-parser-plugin",
    "--reasoning-parser-plugin",
    "--logits-processors",
    "--worker-cls",
    "--worker-extension-cls",
    "--allowed-local-media-path",
    "--chat-template",
    "--model-loader-extra-config",
    "--help",
    "-h",
)


def owned_flags(engine: str = "builtin") -> tuple[str, ...]:
    """The flags `engine_args` may not set on `engine`: every option string of the engine's
    common parser (`--help` included: it would exit); on vllm the launcher's and
    VLLM_OWNED_FLAGS; on `auto`, either engine's."""
    parser = build_parser()
    common = {s for action in parser._actions for s in action.option_strings}
    vllm = {*launcher_flags(), *VLLM_OWNED_FLAGS}
    if engine == "vllm":
        return tuple(sorted(vllm))
    if engine == "auto":
        return tuple(sorted(common | vllm))
    return tuple(sorted(common))


def _vllm_name(name: str) -> str:
    """How vLLM's parser reads a flag's name: underscores as dashes, up to the first dot."""
    if not name.startswith("--"):
        return name
    return "--" + name[2:].split(".", 1)[0].replace("_", "-")


def _claims(arg: str, owned: Iterable[str]) -> list[str]:
    """The owned flags argparse could read `arg` as (exact, `=value`, or an abbreviation)."""
    if not arg.startswith("-") or arg == "--":
        return []
    name = arg.split("=", 1)[0]
    if name.startswith("--"):
        # Any prefix argparse would expand, or refuse as ambiguous: both are ours to refuse.
        return [flag for flag in owned if flag.startswith("--") and flag.startswith(name)]
    # A single dash: argparse reads `-hx` as `-h` with the value `x` (and `-tp2` as `-tp 2`).
    return [flag for flag in owned if not flag.startswith("--") and name.startswith(flag)]


# Engine flags whose value is a path on the server (the builtin engine's cache of converted
# weights and hub downloads): an operator's choice, like `local` sources, not a tenant's, who
# could otherwise make the server read or write any folder it can.
SERVER_PATH_FLAGS = ("--cache-dir",)


def _matching(args: Iterable[str], flags: Iterable[str], engine: str) -> list[str]:
    flags = tuple(flags)
    out: list[str] = []
    for arg in args:
        hit = _claims(arg, flags)
        if not hit and engine in ("vllm", "auto") and arg.startswith("--"):
            name, eq, value = arg.partition("=")
            hit = _claims(_vllm_name(name) + eq + value, flags)
        if hit and arg not in out:
            out.append(arg)
    return out


def refused_engine_args(args: Iterable[str], engine: str = "builtin") -> list[str]:
    """The user's args that name a flag modelhost owns on `engine`, in the order given,
    without repeats."""
    return _matching(args, owned_flags(engine), engine)


def server_path_args(args: Iterable[str], engine: str = "builtin") -> list[str]:
    """The user's args that name a server path flag (SERVER_PATH_FLAGS), in any spelling."""
    return _matching(args, SERVER_PATH_FLAGS, engine)


def refusal_message(refused: list[str], engine: str = "builtin") -> str:
    named = ", ".join(refused)
    owned = ", ".join(f for f in owned_flags(engine) if f.startswith("--"))
    on = "" if engine in ("builtin", "simulator") else f" on engine {engine}"
    return (
        f"engine_args may not set flags modelhost sets itself{on}: {named} (modelhost owns "
        f"{owned}, in any spelling or abbreviation); use the deployment's own fields instead "
        "(max_batch_size, max_active_adapters, preloaded_adapters, quantization, the weights "
        "and gpu)"
    )
