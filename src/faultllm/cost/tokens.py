"""Tokens per row of a rendered set, as training and restricted scoring see them: what `faultllm plan`
counts its work in and `faultllm bench` its rates."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from faultllm.llm.scoring import AnswerSpace
from faultllm.prompts.serialize import Prompts


@dataclass(frozen=True)
class RowTokens:
    """Tokens per row of one rendered set: the prompt (BOS included), the completion (answer and end token),
    and what restricted scoring runs through the model (prompt, the answer tokens before the last, and with
    labels sharing first tokens every label's continuation)."""

    prompt: np.ndarray
    completion: np.ndarray
    scored: np.ndarray

    @property
    def trained(self) -> np.ndarray:
        """A training row is prompt + completion: TRL tokenizes them together, prompts end on a token boundary."""
        return self.prompt + self.completion


def row_tokens(tokenizer, prompts: Prompts, space: AnswerSpace) -> RowTokens:
    prompt = np.array([len(ids) for ids in tokenizer(prompts.texts)["input_ids"]], dtype=np.int64)
    index = {label: i for i, label in enumerate(space.labels)}
    answer = np.array([len(space.shared) + len(space.suffixes[index[label]]) for label in prompts.truth], np.int64)
    # restricted scoring: one forward over the prompt, the shared answer tokens and the answers' prefix tree
    scored = prompt + len(space.shared) + len(space.tree.tokens)
    return RowTokens(prompt, answer, scored)
