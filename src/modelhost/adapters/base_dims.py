"""The dimensions of a base model, read from its files without loading its weights."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from modelhost.adapters.validate import BaseDims


def from_hf_config(config: dict[str, object]) -> BaseDims:
    def num(key: str, default: object = None) -> int:
        value = config.get(key, default)
        if not isinstance(value, int):
            raise ValueError(f"config.json has no integer {key}")
        return value

    heads = num("num_attention_heads")
    hidden = num("hidden_size")
    archs = config.get("architectures") or [config.get("model_type", "?")]
    return BaseDims(
        architecture=str(archs[0]) if isinstance(archs, list) else str(archs),
        num_layers=num("num_hidden_layers"),
        hidden_size=hidden,
        intermediate_size=num("intermediate_size"),
        num_heads=heads,
        num_kv_heads=num("num_key_value_heads", heads),
        head_dim=num("head_dim") if config.get("head_dim") else hidden // heads,
    )


def from_gguf(path: Path) -> BaseDims:
    stat = path.stat()
    return _from_gguf(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _from_gguf(path_str: str, _size: int, _mtime_ns: int) -> BaseDims:
    """Parsing a GGUF header maps the whole file (seconds for a large model): cached per
    file version."""
    from gguf import GGUFReader

    path = Path(path_str)
    reader = GGUFReader(str(path))

    def value(key: str) -> object:
        field = reader.fields.get(key)
        if field is None:
            raise ValueError(f"{path.name} has no {key}")
        return field.contents()

    arch = str(value("general.architecture"))
    heads = int(value(f"{arch}.attention.head_count"))  # type: ignore[call-overload]
    hidden = int(value(f"{arch}.embedding_length"))  # type: ignore[call-overload]
    kv_field = reader.fields.get(f"{arch}.attention.head_count_kv")
    return BaseDims(
        architecture=arch,
        num_layers=int(value(f"{arch}.block_count")),  # type: ignore[call-overload]
        hidden_size=hidden,
        intermediate_size=int(value(f"{arch}.feed_forward_length")),  # type: ignore[call-overload]
        num_heads=heads,
        num_kv_heads=int(kv_field.contents()) if kv_field is not None else heads,
        head_dim=hidden // heads,
    )


def base_dims(weights_path: str | None) -> BaseDims | None:
    """Dimensions of a local base model (folder or .gguf); None when its files are not on this
    server (a Hub model the replicas download themselves)."""
    if not weights_path:
        return None
    path = Path(weights_path)
    if path.is_file() and path.suffix == ".gguf":
        return from_gguf(path)
    config = path / "config.json"
    if config.is_file():
        return from_hf_config(json.loads(config.read_text()))
    return None
