"""Requests to prompt token ids: chat templates from the model's tokenizer, plain prompts."""

from __future__ import annotations

from modelhost.engine.builtin.tokenizer import ChatTemplateError, TextTokenizer
from modelhost.engine.protocol import GenerationRequest, GeneratorError


class PromptBuilder:
    def __init__(self, tokenizer: TextTokenizer) -> None:
        self._tok = tokenizer

    def encode(self, request: GenerationRequest) -> list[int]:
        if request.messages is not None:
            if not self._tok.chat_template:
                raise GeneratorError(
                    "this model has no chat template; use the completions API with a prompt"
                )
            messages = [{"role": m.role, "content": m.content} for m in request.messages]
            try:
                text = self._tok.render_chat(messages)
            except ChatTemplateError as exc:
                raise GeneratorError(
                    f"the model's chat template rejected the messages: {exc}"
                ) from None
            # The template already wrote any BOS/special tokens it wants.
            ids = self._tok.encode(text, add_special_tokens=False)
        else:
            ids = self._tok.encode(request.prompt or "")
        bos = self._tok.bos_token_id
        if not ids and bos is not None:
            ids = [bos]  # an empty prompt still needs one position to predict from
        if not ids:
            raise GeneratorError("the prompt is empty")
        return ids
