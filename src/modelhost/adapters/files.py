"""Put an adapter's files where replicas load them: `<data_dir>/adapters/<adapter_id>/`.

Only `adapter_config.json` and `adapter_model.safetensors` are kept: safetensors cannot run code
when loaded, unlike the pickled `adapter_model.bin`, which is refused.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelhost.adapters.hub_errors import describe_hub_error
from modelhost.adapters.validate import AdapterError

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
MAX_ADAPTER_BYTES = 2 * 1024**3
HUB_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class AdapterFiles:
    folder: Path
    config: dict[str, Any]
    shapes: dict[str, tuple[int, ...]]
    size_bytes: int


def adapters_root(data_dir: Path) -> Path:
    return data_dir / "adapters"


def read_folder(folder: Path) -> AdapterFiles:
    config_path, weights_path = folder / CONFIG, folder / WEIGHTS
    if not config_path.is_file():
        if (folder / "adapter_model.bin").exists():
            raise AdapterError(
                "adapter_model.bin (pickle) is not accepted; save the adapter with "
                "safe_serialization=True to get adapter_model.safetensors"
            )
        raise AdapterError(f"no {CONFIG} in the adapter folder")
    if not weights_path.is_file():
        raise AdapterError(f"no {WEIGHTS} in the adapter folder")
    size = weights_path.stat().st_size
    if size > MAX_ADAPTER_BYTES:
        raise AdapterError(
            f"the adapter weights are {size} bytes; the limit is {MAX_ADAPTER_BYTES}"
        )
    try:
        config = json.loads(config_path.read_text())
    except ValueError:
        raise AdapterError(f"{CONFIG} is not valid JSON") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{CONFIG} is not a JSON object")
    return AdapterFiles(folder, config, _shapes(weights_path), size)


def _shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from the safetensors header, without loading the tensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except Exception as exc:
        raise AdapterError(f"{WEIGHTS} is not a valid safetensors file ({exc})") from None


def copy_local(path: str, dest: Path) -> AdapterFiles:
    src = Path(path)
    if not src.is_absolute():
        raise AdapterError("source.local.path must be an absolute path", "source.local.path")
    if not src.is_dir():
        raise AdapterError(
            f"source.local.path {path!r} is not a folder on the server", "source.local.path"
        )
    read_folder(src)  # refuse before copying anything
    dest.mkdir(parents=True, exist_ok=False)
    for name in (CONFIG, WEIGHTS):
        shutil.copyfile(src / name, dest / name)
    return read_folder(dest)


def download_hf(repo: str, revision: str | None, token: str | None, dest: Path) -> AdapterFiles:
    """Fetch the adapter from the Hugging Face Hub, failing fast and clearly when offline."""
    import os

    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", str(int(HUB_TIMEOUT_S)))
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", str(int(HUB_TIMEOUT_S)))
    from huggingface_hub import snapshot_download

    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        try:
            snapshot_download(
                repo,
                revision=revision,
                token=token or False,
                local_dir=tmp,
                allow_patterns=[CONFIG, WEIGHTS, "adapter_model.bin"],
            )
        except Exception as exc:
            raise AdapterError(describe_hub_error(repo, revision, exc), "source.hf.repo") from None
        read_folder(Path(tmp))
        dest.mkdir(parents=True, exist_ok=False)
        for name in (CONFIG, WEIGHTS):
            shutil.copyfile(Path(tmp) / name, dest / name)
    return read_folder(dest)


def remove(dest: Path) -> None:
    shutil.rmtree(dest, ignore_errors=True)
