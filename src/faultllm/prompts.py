"""Serialize a table row as a question, and render it with the model's prompt template (templates.py).

The study's question: "Tell me if the value of Y is 0 or 1. If the features are: 0.25, ... What
should be Y?", its answer `Y = k`; `prompt.*` sets feature names, decimals, missing values and
the feature order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from faultllm.errors import FaultLLMError
from faultllm.loaders import LABEL
from faultllm.schema import PromptConfig
from faultllm.templates import WHY_QUESTION, ChatTemplate, Llama2Layout, PromptFormat, question, template_for

__all__ = ["WHY_QUESTION", "PromptFormat", "Prompts", "Serializer", "ordered_features", "question"]


def ordered_features(
    order: str, features: Sequence[str], seed: int, importance: Mapping[str, float] | None = None
) -> list[str]:
    """The order features are written in (`prompt.feature_order`): as in the data, most important first by
    `importance` (a baselines run's, read by `rundir.baseline_importances`), or a seeded shuffle."""
    if order == "random":
        rng = np.random.default_rng([seed, 0x6F72646572])
        return [features[i] for i in rng.permutation(len(features))]
    if order == "importance":
        if importance is None or set(importance) != set(map(str, features)):
            raise FaultLLMError("prompt.feature_order=importance: the importances do not name this data set's features")
        return sorted(features, key=lambda name: -importance[str(name)])  # stable: ties keep the data's order
    return list(features)


@dataclass(frozen=True)
class Prompts:
    """Rendered prompts and the true label of each row: evaluation sets and SFT rows come from one rendering."""

    texts: list[str]
    truth: list  # the true label of each row
    labels: list  # every label the model may answer, in prompt order
    completions: dict  # label -> the completion that answers it, end-of-turn token included

    def sft_rows(self) -> list[dict[str, str]]:
        """prompt/completion rows: with `completion_only_loss` the loss covers only the answer and its end token."""
        return [
            {"prompt": text, "completion": self.completions[label]}
            for text, label in zip(self.texts, self.truth, strict=True)
        ]


@dataclass(frozen=True)
class Serializer:
    """A data set's features and labels in a prompt format and template: table rows in, prompts out."""

    features: list[str]  # in the order the prompt writes them
    labels: list
    fmt: PromptFormat
    template: Llama2Layout | ChatTemplate

    @classmethod
    def from_config(cls, prompt: PromptConfig, system: str, features: list[str], labels: list, tokenizer) -> Serializer:
        """`system`: the data set's system prompt; `tokenizer` as `modeling.load_tokenizer` prepared it."""
        fmt = PromptFormat(system, prompt.name_features, prompt.decimals, prompt.missing)
        return cls(list(features), list(labels), fmt, template_for(prompt.template, tokenizer))

    def question(self, values: Sequence[float]) -> str:
        return question(values, self.features, self.labels, self.fmt)

    def chat(self, user_message: str) -> str:
        return self.template.prompt(self.fmt.system, user_message)

    def render(self, frame: pd.DataFrame) -> Prompts:
        values = frame[self.features].to_numpy(np.float64)
        texts = [self.chat(self.question(row)) for row in values]
        completions = {label: self.template.completion(label) for label in self.labels}
        return Prompts(texts=texts, truth=frame[LABEL].tolist(), labels=self.labels, completions=completions)
