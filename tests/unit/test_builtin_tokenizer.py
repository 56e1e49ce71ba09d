"""The builtin engine's tokenizer wrapper: tokenizer.json + chat template, no transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelhost.engine.builtin.prompting import PromptBuilder
from modelhost.engine.builtin.tokenizer import ChatTemplateError, FastTokenizer
from modelhost.engine.protocol import ChatMessage, GenerationRequest, GeneratorError, SamplingParams

VOCAB = ["<unk>", "<s>", "</s>", "hello", "world", "[user]", "[bot]"]
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
    "[{{ m['role'] }}] {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}[bot]{% endif %}"
)


def write_tokenizer(folder: Path, config: dict[str, object]) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def test_encode_decode_and_add_bos(tmp_path: Path) -> None:
    write_tokenizer(tmp_path, {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True})
    tok = FastTokenizer.load(tmp_path)
    assert tok.bos_token_id == 1
    assert tok.encode("hello world") == [1, 3, 4]
    assert tok.encode("hello world", add_special_tokens=False) == [3, 4]
    assert tok.decode([1, 3, 4, 2]) == "hello world"
    assert tok.all_special_ids == [0, 1, 2]
    clone = tok.clone()
    assert clone.encode("world") == [1, 4]


def test_chat_template_from_config_renders_like_transformers(tmp_path: Path) -> None:
    write_tokenizer(tmp_path, {"bos_token": {"content": "<s>"}, "chat_template": TEMPLATE})
    tok = FastTokenizer.load(tmp_path)
    text = tok.render_chat([{"role": "user", "content": "hello"}])
    assert text == "<s>[user] hello [bot]"
    with pytest.raises(ChatTemplateError, match="no system role"):
        tok.render_chat([{"role": "system", "content": "x"}])


def test_chat_template_file_and_named_templates(tmp_path: Path) -> None:
    write_tokenizer(
        tmp_path, {"chat_template": [{"name": "default", "template": "{{ messages[0].content }}"}]}
    )
    assert FastTokenizer.load(tmp_path).render_chat([{"role": "u", "content": "hi"}]) == "hi"
    (tmp_path / "chat_template.jinja").write_text("file:{{ messages | length }}")
    assert FastTokenizer.load(tmp_path).render_chat([{"role": "u", "content": "hi"}]) == "file:1"


def test_prompt_builder_errors(tmp_path: Path) -> None:
    write_tokenizer(tmp_path, {"bos_token": "<s>", "chat_template": TEMPLATE})
    builder = PromptBuilder(FastTokenizer.load(tmp_path))
    system = GenerationRequest("r", SamplingParams(), messages=(ChatMessage("system", "x"),))
    with pytest.raises(GeneratorError, match="no system role"):
        builder.encode(system)
    assert builder.encode(GenerationRequest("r", SamplingParams(), prompt="")) == [1]
    user = GenerationRequest("r", SamplingParams(), messages=(ChatMessage("user", "hello"),))
    assert builder.encode(user) == [1, 5, 3, 6]
    write_tokenizer(tmp_path, {})
    bare = PromptBuilder(FastTokenizer.load(tmp_path))
    with pytest.raises(GeneratorError, match="no chat template"):
        bare.encode(user)
    with pytest.raises(GeneratorError, match="empty"):
        bare.encode(GenerationRequest("r", SamplingParams(), prompt=""))
