"""OpenAI request bodies as pydantic models (the edge), plus the parsing of their errors.

Every model forbids unknown fields: a parameter the engine does not know is a 400 naming it,
never silently dropped. Parameters the engine knows but cannot honour are typed `Any` here and
rejected at a non-default value by `openai_api` (so the message can say *why*).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

MAX_STOP_SEQUENCES = 16


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Strict):
    include_usage: bool | None = None
    continuous_usage_stats: bool | None = None


class ContentPart(BaseModel):
    # Parts of other types (image_url, input_audio, ...) must parse so that the rejection can
    # say "only text parts are supported" instead of a generic schema error.
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessageIn(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    refusal: str | None = None
    tool_calls: Any = None
    tool_call_id: Any = None
    function_call: Any = None


class _SamplingFields(_Strict):
    model: str = ""
    stream: StrictBool | None = False  # "yes" is not a boolean: refused, not guessed
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = Field(default=None, ge=1)
    user: str | None = None
    ignore_eos: bool | None = None
    ignore_eos_token: bool | None = None  # LoRAX's spelling on its OpenAI routes
    # Known, but honoured only at their defaults (checked in openai_api):
    logit_bias: Any = None
    response_format: Any = None
    stop_token_ids: Any = None
    adapter_source: Any = None
    api_token: Any = None  # LoRAX: a token for private adapters; not needed here, ignored
    prompt_cache_key: Any = None  # a routing/cache hint; ignoring it changes no output
    safety_identifier: Any = None  # like `user`: an end-user id, ignored
    metadata: Any = None
    store: Any = None
    service_tier: Any = None


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0)
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: Any = None
    functions: Any = None
    function_call: Any = None
    reasoning_effort: Any = None
    modalities: Any = None
    audio: Any = None
    prediction: Any = None
    web_search_options: Any = None
    verbosity: Any = None
    chat_template_kwargs: Any = None


class CompletionRequest(_SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    suffix: str | None = None
    echo: bool | None = None
    best_of: int | None = Field(default=None, ge=1)
    logprobs: int | None = Field(default=None, ge=0)
