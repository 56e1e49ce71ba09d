"""Where a deployment's weights come from, turned into one local HF-format folder.

Sources: a local HF folder (config.json + *.safetensors + tokenizer files), a local .gguf file
(or a folder holding one), or a Hugging Face repo. GGUF files are de-quantized by transformers
once and cached as safetensors (with the tokenizer, whose GGUF conversion alone takes seconds)
under the cache dir, keyed by the file's path, size and mtime, so later starts skip it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from modelhost.engine.builtin.hub import HubDownloadError, download, stderr_progress

_COMPLETE_MARKER = "modelhost-complete"


class WeightsError(Exception):
    """The weights cannot be found, fetched or read; the message is shown to the user."""


@dataclass(frozen=True)
class ModelFiles:
    folder: Path  # config.json, *.safetensors and tokenizer files
    description: str  # where they came from, for logs and /info


def resolve_weights(
    *,
    local: str | None,
    hf_repo: str | None,
    hf_revision: str | None,
    cache_dir: Path,
    emit: Callable[[str], None] = stderr_progress,
    hf_endpoint: str | None = None,
) -> ModelFiles:
    if local:
        return _resolve_local(Path(local).expanduser(), cache_dir, emit)
    if hf_repo:
        try:
            folder = download(
                hf_repo, hf_revision, cache_dir / "hf", endpoint=hf_endpoint, emit=emit
            )
        except HubDownloadError as exc:
            raise WeightsError(str(exc)) from None
        if not any(folder.glob("*.safetensors")):
            raise WeightsError(
                f"{hf_repo} has no .safetensors weights; the builtin engine loads safetensors "
                "(or a local .gguf file)"
            )
        rev = f"@{hf_revision}" if hf_revision else ""
        return ModelFiles(folder, f"hf://{hf_repo}{rev}")
    raise WeightsError("no weights given: set a local path or a Hugging Face repo")


def _resolve_local(path: Path, cache_dir: Path, emit: Callable[[str], None]) -> ModelFiles:
    if not path.exists():
        raise WeightsError(f"weights not found: {path} does not exist")
    if path.is_file():
        if path.suffix != ".gguf":
            raise WeightsError(f"{path} is neither a .gguf file nor a folder of HF weights")
        return ModelFiles(gguf_to_folder(path, cache_dir, emit), str(path))
    if (path / "config.json").exists() and any(path.glob("*.safetensors")):
        return ModelFiles(path, str(path))
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return ModelFiles(gguf_to_folder(ggufs[0], cache_dir, emit), str(ggufs[0]))
    if len(ggufs) > 1:
        names = ", ".join(g.name for g in ggufs)
        raise WeightsError(f"{path} holds several .gguf files ({names}); name one of them")
    raise WeightsError(
        f"{path} has no HF weights (config.json and *.safetensors) and no .gguf file"
    )


def gguf_cache_folder(path: Path, cache_dir: Path) -> Path:
    """Where the converted weights of this exact file live: a changed file gets a new key."""
    stat = path.stat()
    ident = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    key = hashlib.sha256(ident.encode()).hexdigest()[:16]
    return cache_dir / "gguf" / f"{path.stem}-{key}"


def gguf_to_folder(path: Path, cache_dir: Path, emit: Callable[[str], None]) -> Path:
    target = gguf_cache_folder(path, cache_dir)
    if (target / _COMPLETE_MARKER).exists():
        emit(f"using converted weights of {path.name} cached in {target}")
        return target
    emit(f"converting {path.name} to safetensors (first start only) into {target}")
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _convert(path, tmp)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise WeightsError(f"cannot convert {path}: {exc}") from None
    except Exception as exc:  # transformers raises many types for unreadable GGUF files
        shutil.rmtree(tmp, ignore_errors=True)
        raise WeightsError(f"cannot read {path} as a GGUF model: {exc}") from None
    (tmp / _COMPLETE_MARKER).write_text(str(path) + "\n")
    try:
        os.replace(tmp, target)
    except OSError:
        # Another replica converted the same file at the same time; its copy is as good.
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / _COMPLETE_MARKER).exists():
            raise
    return target


def _convert(path: Path, out: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # its tqdm bars would flood the replica's log
    os.environ["TQDM_DISABLE"] = "1"  # the GGUF de-quantizer uses tqdm directly
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        # float32: the de-quantized values are exact there, and --dtype picks the serving type.
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32
        )
    finally:
        hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
        os.environ.pop("TQDM_DISABLE", None)
    out.mkdir(parents=True)
    # save_pretrained refuses models loaded from GGUF, so write the three parts by hand.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the saved copy is plain float weights
    config.architectures = [type(model).__name__]  # GGUF metadata does not carry it
    config.save_pretrained(str(out))
    model.generation_config.save_pretrained(str(out))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # shares storage with the embedding
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(str(out))
    print(f"converted {path} into {out}", file=sys.stderr)
