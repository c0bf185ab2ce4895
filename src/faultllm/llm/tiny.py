"""A tiny Llama for CPU smoke runs and tests: shipped prebuilt for the default spec, else built locally and cached.

Llama-2-like tokenizer (BPE over Metaspace words, every digit its own token, special
tokens <unk> <s> </s> <pad>, BOS added by the tokenizer) and a few-layer LlamaConfig.
A randomly initialised model barely learns through LoRA because `lm_head` is not
adapted, so it gets a short full-parameter warm-up on the prompt format with random
answers: it learns the layout (`[/INST] Y = k</s>`), not any data set's labels.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from faultllm.prompts.templates import WHY_QUESTION, PromptFormat, answer, chat_prompt, question
from faultllm.runtime.files import write_text
from faultllm.runtime.paths import PACKAGE_DIR

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]
# The TEP and HST feature names (data.tep.TEP_FEATURES, data.datasets.HST_FEATURES; tests/test_tiny.py checks they agree)
TEP_NAMES = [f"xmeas_{i}" for i in range(1, 42)] + [f"xmv_{i}" for i in range(1, 12)]
HST_NAMES = [str(i) for i in range(46)]
_SYSTEM_PROMPTS = [
    "You are an expert in fault diagnosis of chemical plants operation. You master the reaction process and "
    "control structures in the Tennessee Eastman Process. You are capable of accurately determining the plant "
    "process state based on given variables and their values. Below is a sample of the monitoring.",
    "You are an expert in fault diagnosis of high-speed train braking systems. You master the mechanical, "
    "electrical and pneumatic components. Below is a sample of the braking system monitoring.",
    "You are an expert in fault diagnosis of industrial systems. Below is a sample of the monitoring data.",
]


# Built by scripts/build_tiny_model.py from configs/model/tiny.yaml: every host starts from the same
# weights (a build drifts between CPUs with different kernels) and nobody waits for the warm-up.
SHIPPED = PACKAGE_DIR / "assets" / "tiny-llama"


def spec_of(model_cfg) -> dict:
    """The build's numbers from model.* (a ModelConfig with build=tiny)."""
    keys = ("hidden_size", "layers", "heads", "vocab_size", "warmup_steps", "seed")
    return {key: int(getattr(model_cfg, key)) for key in keys} | {"version": 2}


def ensure_tiny_model(model_cfg, cache_dir: str) -> Path:
    """The shipped tiny model when the spec is the shipped one, else one built on first use (minutes) and cached."""
    spec = spec_of(model_cfg)
    if (SHIPPED / "spec.json").exists() and json.loads((SHIPPED / "spec.json").read_text()) == spec:
        return SHIPPED
    key = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    target = Path(cache_dir).expanduser() / f"tiny-llama-{key}"
    if not (target / "config.json").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        # a name no other builder has (HPO workers, torchrun ranks, other hosts on a shared cache)
        partial = Path(tempfile.mkdtemp(prefix=f"{target.name}.", suffix=".tmp", dir=target.parent))
        try:
            build_tiny_model(spec, partial)
            partial.rename(target)  # atomic: concurrent builders never see half a model
        except OSError:
            if not (target / "config.json").exists():  # not another builder's finished model: a real failure
                raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return target


def _random_prompt(rng: np.random.Generator) -> tuple[str, str]:
    names = TEP_NAMES if rng.random() < 0.5 else HST_NAMES
    n_features = int(rng.integers(3, len(names) + 1))
    labels = sorted(rng.choice(21, size=int(rng.integers(2, 6)), replace=False).tolist())
    fmt = PromptFormat(  # mostly short forms: warm-up steps on long prompts cost minutes on a CPU
        system=str(rng.choice(_SYSTEM_PROMPTS)),
        name_features=bool(rng.random() < 0.25),
        decimals=[None, 1, 2, 4][int(rng.choice(4, p=[0.2, 0.4, 0.3, 0.1]))],
    )
    values = np.round(rng.uniform(0, 1, n_features) * 10.0 ** rng.integers(0, 4), 4)
    user = question(values, names[:n_features], labels, fmt) + (WHY_QUESTION if rng.random() < 0.1 else "")
    return chat_prompt(user, fmt.system), answer(int(rng.choice(labels)))


def train_tokenizer(rng: np.random.Generator, vocab_size: int):
    corpus = [prompt + completion for prompt, completion in (_random_prompt(rng) for _ in range(2000))]
    return bpe_tokenizer(
        corpus, vocab_size, SPECIAL_TOKENS, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


def bpe_tokenizer(corpus: list[str], vocab_size: int, special_tokens: list[str], prepend_scheme="first", **roles):
    """A Llama-2-like BPE tokenizer (Metaspace words, single digits) trained on `corpus`; `roles` name the
    bos/eos/unk/pad tokens among `special_tokens` (any may be absent). BOS, if any, is added by the tokenizer.
    `prepend_scheme="always"` puts `▁` after special tokens too, as sentencepiece's legacy mode does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=roles.get("unk_token")))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(prepend_scheme=prepend_scheme), pre_tokenizers.Digits(individual_digits=True)]
    )
    tokenizer.decoder = decoders.Metaspace(prepend_scheme=prepend_scheme)
    alphabet = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;=?!'\"-_()[]<>/\n")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens, initial_alphabet=alphabet)
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    _bos_first(tokenizer, roles.get("bos_token"))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **roles)


def _bos_first(tokenizer, bos: str | None) -> None:
    """The tokenizer puts `bos` (if any) before every text, as Llama's does."""
    from tokenizers import processors

    tokenizer.post_processor = None
    if bos:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.token_to_id(bos))]
        )


def stand_in_tokenizer(vocab_size: int, special_tokens: dict[str, int], chat_template: str | None = None, **roles):
    """The shipped tiny model's Llama-2-like tokenizer grown to `vocab_size` ids, for a model whose own
    tokenizer is not at hand (model.init=random times the real architecture offline): `special_tokens`
    (token -> id) at the model's own ids, `roles` naming bos/eos/unk/pad among them, the tiny vocabulary
    in the free ids from 0 up and never-produced filler tokens in the rest. Prompts come out as long as
    the tiny tokenizer makes them (every digit a token, as in Llama-2): right for timing, not for results."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads((SHIPPED / "tokenizer.json").read_text())
    taken = set(special_tokens.values())
    free = (i for i in range(vocab_size) if i not in taken)
    ordinary = sorted((t for t in spec["model"]["vocab"] if t not in SPECIAL_TOKENS), key=spec["model"]["vocab"].get)
    vocab = {token: next(free) for token in ordinary} | special_tokens
    spec["model"]["vocab"] = vocab | {f"<unused_{i}>": i for i in free}  # the rest of the ids
    spec["model"]["unk_token"] = roles.get("unk_token")
    spec["added_tokens"], spec["padding"] = [], None  # the tiny tokenizer pads with its own <pad>
    tokenizer = Tokenizer.from_str(json.dumps(spec))
    tokenizer.add_special_tokens(list(special_tokens))  # at the ids the vocabulary gives them
    _bos_first(tokenizer, roles.get("bos_token"))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, chat_template=chat_template, **roles)


def build_tiny_model(spec: dict, target: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    rng = np.random.default_rng(spec["seed"])
    torch.manual_seed(spec["seed"])
    tokenizer = train_tokenizer(rng, spec["vocab_size"])
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec["hidden_size"],
        intermediate_size=spec["hidden_size"] * 8 // 3,
        num_hidden_layers=spec["layers"],
        num_attention_heads=spec["heads"],
        num_key_value_heads=spec["heads"],
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    _warm_up(model, tokenizer, rng, spec["warmup_steps"])
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    write_text(target / "spec.json", json.dumps(spec, sort_keys=True) + "\n")


def _warm_up(model, tokenizer, rng: np.random.Generator, steps: int, batch_size: int = 8) -> None:
    """Full-parameter LM training on prompt-format text with random answers."""
    import torch
    from tqdm.auto import tqdm

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    tokenizer.padding_side = "right"
    for _ in tqdm(
        range(steps), desc="building the tiny model (once)", unit="step", disable=None
    ):  # None: no bar off a terminal
        texts = [p + c + tokenizer.eos_token for p, c in (_random_prompt(rng) for _ in range(batch_size))]
        batch = tokenizer(texts, return_tensors="pt", padding=True)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
