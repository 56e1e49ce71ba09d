"""The model's tokenizer and chat template, loaded without importing transformers.

`tokenizers` (the Rust library behind HF fast tokenizers) reads tokenizer.json directly and the
chat template is rendered with jinja2 the way transformers renders it (sandboxed, trim_blocks,
lstrip_blocks, `raise_exception`, `tojson`, `strftime_now`). Importing transformers costs
seconds of every replica's cold start, more than reading the weights of a small model. Folders
without a tokenizer.json (SentencePiece-only repos) fall back to transformers' AutoTokenizer.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol


class TokenizerError(Exception):
    """The tokenizer files cannot be read."""


class ChatTemplateError(Exception):
    """The chat template rejected the messages (it called raise_exception, or failed)."""


class TextTokenizer(Protocol):
    bos_token_id: int | None
    all_special_ids: list[int]
    chat_template: str | None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str: ...

    def render_chat(self, messages: list[dict[str, str]]) -> str: ...

    def clone(self) -> TextTokenizer: ...


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        content = value.get("content")
        return str(content) if content is not None else None
    return str(value) if value is not None else None


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent)


def compile_template(source: str) -> Any:
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


def _chat_template(folder: Path, config: dict[str, Any]) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.exists():
        return jinja.read_text()
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return str(template) if template else None


class FastTokenizer:
    def __init__(self, raw: Any, config: dict[str, Any], chat_template: str | None) -> None:
        self._raw = raw
        self._config = config
        self.chat_template = chat_template
        self._template = compile_template(chat_template) if chat_template else None
        self._specials = {
            name: _token_text(config.get(name))
            for name in ("bos_token", "eos_token", "unk_token", "pad_token")
        }
        bos = self._specials["bos_token"]
        self.bos_token_id: int | None = raw.token_to_id(bos) if bos else None
        decoder = raw.get_added_tokens_decoder()
        self.all_special_ids = sorted(i for i, tok in decoder.items() if tok.special)
        # tokenizer.json's post-processor normally adds BOS itself; some configs only say
        # add_bos_token, which transformers then applies on top.
        self._prepend_bos = False
        if config.get("add_bos_token") and self.bos_token_id is not None:
            probe = raw.encode("a", add_special_tokens=True).ids
            self._prepend_bos = not probe or probe[0] != self.bos_token_id

    @classmethod
    def load(cls, folder: Path) -> FastTokenizer:
        from tokenizers import Tokenizer

        try:
            raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
            config_file = folder / "tokenizer_config.json"
            config = json.loads(config_file.read_text()) if config_file.exists() else {}
        except Exception as exc:  # tokenizers raises its own plain Exception
            raise TokenizerError(f"cannot load the tokenizer in {folder}: {exc}") from None
        return cls(raw, config, _chat_template(folder, config))

    def clone(self) -> FastTokenizer:
        """An independent instance (one per thread)."""
        from tokenizers import Tokenizer

        return FastTokenizer(
            Tokenizer.from_str(self._raw.to_str()), self._config, self.chat_template
        )

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids: list[int] = self._raw.encode(text, add_special_tokens=add_special_tokens).ids
        if add_special_tokens and self._prepend_bos and self.bos_token_id is not None:
            ids = [self.bos_token_id, *ids]
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        text: str = self._raw.decode(ids, skip_special_tokens=skip_special_tokens)
        return text

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        if self._template is None:
            raise ChatTemplateError("this model has no chat template")
        try:
            text: str = self._template.render(
                messages=messages,
                add_generation_prompt=True,
                **{k: v for k, v in self._specials.items() if v is not None},
            )
        except ChatTemplateError:
            raise
        except Exception as exc:  # jinja errors: the template cannot render these messages
            raise ChatTemplateError(str(exc)) from None
        return text


class TransformersTokenizer:
    """Fallback for folders without tokenizer.json (needs transformers, slower to import)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        self.bos_token_id: int | None = tokenizer.bos_token_id
        self.all_special_ids = list(tokenizer.all_special_ids)
        self.chat_template: str | None = getattr(tokenizer, "chat_template", None)

    def clone(self) -> TransformersTokenizer:
        import copy

        return TransformersTokenizer(copy.deepcopy(self._tok))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self._tok(text, add_special_tokens=add_special_tokens)["input_ids"])

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        text: str = self._tok.decode(ids, skip_special_tokens=skip_special_tokens)
        return text

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        if not self.chat_template:
            raise ChatTemplateError("this model has no chat template")
        try:
            return str(
                self._tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            )
        except Exception as exc:
            raise ChatTemplateError(str(exc)) from None


def load_tokenizer(folder: Path) -> TextTokenizer:
    if (folder / "tokenizer.json").exists():
        return FastTokenizer.load(folder)
    try:
        from transformers import AutoTokenizer

        return TransformersTokenizer(AutoTokenizer.from_pretrained(str(folder)))
    except (OSError, ValueError) as exc:
        raise TokenizerError(f"cannot load the tokenizer in {folder}: {exc}") from None
