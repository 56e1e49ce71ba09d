"""Request bodies of the control-plane API (pydantic, strict about unknown fields)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateUser(_Strict):
    username: str
    gpu_limit: int | None = Field(default=None, ge=0, le=1024)
    is_admin: bool = False


class CreateToken(_Strict):
    name: str = Field(min_length=1, max_length=128)


class HFWeights(_Strict):
    repo: str = Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
    revision: str | None = Field(default=None, max_length=128)
    token: str | None = Field(default=None, max_length=512)


class LocalWeights(_Strict):
    path: str = Field(min_length=1, max_length=4096)


class CreateLLM(_Strict):
    model_name: str
    gpu: str
    num_gpus: int = Field(default=1, ge=1, le=8)
    max_batch_size: int = Field(default=96, ge=1, le=256)
    hf: HFWeights | None = None
    local: LocalWeights | None = None
    base_model: str | None = None
    engine: str = "auto"
    engine_args: list[str] = Field(default_factory=list, max_length=64)
    # DeepInfra's name for engine_args.
    extra_args: list[str] | None = Field(default=None, max_length=64)
    # DeepInfra accepts a container image; modelhost runs its own engines, so only null is valid.
    container_image: None = None
    settings: dict[str, Any] | None = None
    public: bool = False
    # Multi-LoRA: adapters (`<username>/<name>` or your own bare names) loaded at replica start,
    # and how many may be resident per replica at once.
    preloaded_adapters: list[str] = Field(default_factory=list, max_length=1024)
    max_active_adapters: int = Field(default=64, ge=1, le=1024)


class HFUpdate(_Strict):
    revision: str | None = Field(default=None, max_length=128)
    token: str | None = Field(default=None, max_length=512)


class ConfigUpdate(_Strict):
    max_batch_size: int | None = Field(default=None, ge=1, le=256)
    engine_args: list[str] | None = Field(default=None, max_length=64)
    hf: HFUpdate | None = None
    preloaded_adapters: list[str] | None = Field(default=None, max_length=1024)
    max_active_adapters: int | None = Field(default=None, ge=1, le=1024)


class UpdateDeployment(_Strict):
    settings: dict[str, Any] | None = None
    config: ConfigUpdate | None = None
    public: bool | None = None
