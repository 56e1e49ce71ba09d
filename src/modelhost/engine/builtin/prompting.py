"""Requests to prompt token ids: chat templates from the model's tokenizer, plain prompts."""

from __future__ import annotations

from typing import Any

from modelhost.engine.protocol import GenerationRequest, GeneratorError


class PromptBuilder:
    def __init__(self, tokenizer: Any, bos_token_id: int | None) -> None:
        self._tok = tokenizer
        self._bos = bos_token_id

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self._tok, "chat_template", None))

    def encode(self, request: GenerationRequest) -> list[int]:
        if request.messages is not None:
            if not self.has_chat_template:
                raise GeneratorError(
                    "this model has no chat template; use the completions API with a prompt"
                )
            messages = [{"role": m.role, "content": m.content} for m in request.messages]
            try:
                text = self._tok.apply_chat_template(
                    messages, add_generation_prompt=True, tokenize=False
                )
            except Exception as exc:  # jinja errors from a template that rejects the input
                raise GeneratorError(
                    f"the model's chat template rejected the messages: {exc}"
                ) from None
            # The template already wrote any BOS/special tokens it wants.
            ids = list(self._tok(str(text), add_special_tokens=False)["input_ids"])
        else:
            ids = list(self._tok(request.prompt or "")["input_ids"])
        if not ids and self._bos is not None:
            ids = [self._bos]  # an empty prompt still needs one position to predict from
        if not ids:
            raise GeneratorError("the prompt is empty")
        return ids
