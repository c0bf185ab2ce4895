"""Serialize a table row as a Llama-2 chat prompt, and the answer it should get.

[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{question} [/INST]   <- prompt (the tokenizer adds BOS)
 Y = {label}                                                  <- completion (EOS appended by the trainer)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from faultllm.loaders import LABEL


@dataclass(frozen=True)
class PromptFormat:
    system: str  # already filled in with the data set's name
    name_features: bool
    decimals: int | None  # None: shortest exact form (1, 0.05); an int: fixed decimals (0.0500)

    @classmethod
    def from_config(cls, prompt_cfg, data_cfg) -> PromptFormat:
        return cls(system=data_cfg.system_prompt, name_features=prompt_cfg.name_features, decimals=prompt_cfg.decimals)


def format_value(value: float, decimals: int | None) -> str:
    if decimals is not None:
        return f"{value:.{decimals}f}"
    return np.format_float_positional(float(value), trim="-")


def label_choices(labels: Sequence) -> str:
    """'0 or 1'; '0, 1, 4 or 5'."""
    names = [str(label) for label in labels]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def question(values: Sequence[float], features: Sequence[str], labels: Sequence, fmt: PromptFormat) -> str:
    shown = [format_value(v, fmt.decimals) for v in values]
    if fmt.name_features:
        body = "If " + ", ".join(f"feature {name} = {v}" for name, v in zip(features, shown, strict=True)) + "."
    else:
        body = "If the features are: " + ", ".join(shown) + "."
    return f"Tell me if the value of Y is {label_choices(labels)}. {body} What should be Y?"


def chat_prompt(user_message: str, system: str) -> str:
    """Llama-2 chat layout without BOS: the tokenizer adds it, a literal `<s>` would double it."""
    return f"[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user_message} [/INST]"


# The study's follow-up question asking the model to explain itself (its section 4.3).
WHY_QUESTION = " can you tell me why do you have this decision? What is the reasoning behind your decision?"


def answer(label) -> str:
    return f" Y = {label}"


@dataclass(frozen=True)
class Prompts:
    """Rendered prompts and the true label of each row: evaluation sets and SFT rows come from one rendering."""

    texts: list[str]
    truth: list  # the true label of each row
    labels: list  # every label the model may answer, in prompt order

    def sft_rows(self) -> list[dict[str, str]]:
        """prompt/completion rows: with `completion_only_loss` the loss covers only the answer (and EOS)."""
        return [
            {"prompt": text, "completion": answer(label)} for text, label in zip(self.texts, self.truth, strict=True)
        ]


@dataclass(frozen=True)
class Serializer:
    """A data set's features and labels in a prompt format: table rows in, prompts out."""

    features: list[str]
    labels: list
    fmt: PromptFormat

    @classmethod
    def from_config(cls, prompt_cfg, data_cfg, features: list[str], labels: list) -> Serializer:
        return cls(list(features), list(labels), PromptFormat.from_config(prompt_cfg, data_cfg))

    def question(self, values: Sequence[float]) -> str:
        return question(values, self.features, self.labels, self.fmt)

    def chat(self, user_message: str) -> str:
        return chat_prompt(user_message, self.fmt.system)

    def render(self, frame: pd.DataFrame) -> Prompts:
        values = frame[self.features].to_numpy(np.float64)
        texts = [self.chat(self.question(row)) for row in values]
        return Prompts(texts=texts, truth=frame[LABEL].tolist(), labels=self.labels)
