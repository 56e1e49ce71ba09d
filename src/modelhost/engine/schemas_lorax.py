"""LoRAX request bodies (`/generate`, `/generate_stream`, `/`) as pydantic models.

Every field LoRAX's own Python client sends is declared, so its default requests parse; a
field the engine cannot honour at a non-default value is rejected by `lorax_api` with a 422
naming it. Unknown fields are rejected too.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraxParameters(_Strict):
    adapter_id: str | None = None
    adapter_source: str | None = None
    merged_adapters: Any = None
    api_token: str | None = None  # for private adapters on LoRAX; accepted and ignored here
    do_sample: bool | None = False
    max_new_tokens: int | None = Field(default=None, ge=1)
    ignore_eos_token: bool | None = False
    repetition_penalty: float | None = Field(default=None, gt=0.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    return_full_text: bool | None = False
    stop: list[str] | None = None
    seed: int | None = Field(default=None, ge=0)
    temperature: float | None = Field(default=None, ge=0.0)
    top_k: int | None = Field(default=None, gt=0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    truncate: int | None = Field(default=None, gt=0)
    typical_p: float | None = Field(default=None, gt=0.0, le=1.0)
    best_of: int | None = Field(default=None, gt=0)
    watermark: bool | None = False
    details: bool | None = False
    decoder_input_details: bool | None = False
    return_k_alternatives: int | None = Field(default=None, ge=0)
    response_format: Any = None
    apply_chat_template: bool | None = False


class LoraxRequest(_Strict):
    inputs: str = Field(min_length=1)
    parameters: LoraxParameters | None = None
    stream: StrictBool | None = False  # "yes" is not a boolean: refused, not guessed
