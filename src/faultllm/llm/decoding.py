"""The study's protocol: greedy decoding of a few tokens, and `Y = k` parsed from the text."""

from __future__ import annotations

import re

from faultllm.llm.inference import over_batches

_ANSWER = re.compile(r"Y\s*=\s*")
_END = re.compile(r"\s|</s>|$|[.,;]")


def parse_answer(text: str, labels: list):
    """The label in `Y = k` (labels may hold spaces: the longest that fits wins), or None when invalid."""
    match = _ANSWER.search(text)
    if not match:
        return None
    rest = text[match.end() :].strip()
    for label in sorted(labels, key=lambda label: -len(str(label))):
        name = str(label)
        if rest.startswith(name) and _END.match(rest, len(name)):
            return label
    return None


def generate_answers(
    model, tokenizer, prompts: list[str], max_new_tokens: int = 5, batch_size: int = 1, progress: str | None = None
) -> list[str]:
    """Greedy decoding in eval mode (no LoRA dropout), left padded; the study used batch 1 and 5 new tokens.
    Under torchrun/accelerate the batches are shared out between the ranks and gathered (`over_batches`):
    every rank gets every answer. `progress`: a progress bar with that title."""
    device = next(model.parameters()).device

    def decode(texts: list[str]) -> list[str]:
        batch = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left").to(device)
        out = model.generate(
            **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,  # the answer's end: the template's end of turn, not the base's EOS
        )  # fmt: skip
        return tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)

    batches = [prompts[start : start + batch_size] for start in range(0, len(prompts), batch_size)]
    title = progress or f"generating for {len(prompts)} prompts"
    return [text for texts in over_batches(model, batches, decode, title, bar=progress is not None) for text in texts]
