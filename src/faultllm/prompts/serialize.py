"""Serialize a table row as a question, and render it with the model's prompt template (templates.py).

The study's question: "Tell me if the value of Y is 0 or 1. If the features are: 0.25, ... What
should be Y?", its answer `Y = k`; `prompt.*` sets feature names, decimals, missing values,
the feature order and in-context examples (shots).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from faultllm.config.groups import PromptConfig
from faultllm.data.tables import LABEL
from faultllm.prompts.shots import ShotPool
from faultllm.prompts.templates import (
    WHY_QUESTION,
    ChatTemplate,
    Examples,
    Llama2Layout,
    PromptFormat,
    question,
    template_for,
)
from faultllm.runtime.errors import FaultLLMError

__all__ = ["WHY_QUESTION", "PromptFormat", "Prompts", "Serializer", "ordered_features", "question"]


def ordered_features(
    order: str, features: Sequence[str], seed: int, importance: Mapping[str, float] | None = None
) -> list[str]:
    """The order features are written in (`prompt.feature_order`): as in the data, most important first by
    `importance` (a baselines run's, read from its run directory), or a seeded shuffle."""
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
    """A data set's features and labels in a prompt format and template: table rows in, prompts out.

    With `prompt.shots` it draws solved examples from the training rows given to `shots_from` (shots.py).
    """

    features: list[str]  # in the order the prompt writes them
    labels: list
    fmt: PromptFormat
    template: Llama2Layout | ChatTemplate
    shots: int = 0
    shot_selection: str = "fixed"
    seed: int = 0
    pool: ShotPool | None = None  # the training rows shots come from
    pool_questions: tuple[str, ...] = ()  # each pool row written as a question

    @classmethod
    def from_config(
        cls, prompt: PromptConfig, system: str, features: list[str], labels: list, tokenizer, seed: int = 0,
        train: pd.DataFrame | None = None,
    ) -> Serializer:  # fmt: skip
        """`system`: the data set's system prompt; `tokenizer` as `llm.tokenizer.load_tokenizer` prepared it;
        `train`: the training rows in-context examples are drawn from (with prompt.shots)."""
        fmt = PromptFormat(system, prompt.name_features, prompt.decimals, prompt.missing, prompt.format)
        template = template_for(prompt.template, tokenizer)
        serializer = cls(list(features), list(labels), fmt, template, prompt.shots, prompt.shot_selection, seed)
        return serializer if train is None else serializer.shots_from(train)

    def shots_from(self, train: pd.DataFrame) -> Serializer:
        """This serializer drawing its in-context examples from `train` (training rows only, never test rows)."""
        if not self.shots:
            return self
        pool = ShotPool.from_frame(train, self.features, self.labels, self.shots, self.shot_selection, self.seed)
        return replace(self, pool=pool, pool_questions=tuple(self.question(row) for row in pool.values))

    def question(self, values: Sequence[float]) -> str:
        return question(values, self.features, self.labels, self.fmt)

    def chat(self, user_message: str, examples: Examples = ()) -> str:
        return self.template.prompt(self.fmt.system, user_message, examples)

    def examples(self, frame: pd.DataFrame, own_rows: bool = False) -> list[list[tuple[str, object]]]:
        """Each row's in-context examples as (question, label); `own_rows`: `frame` is the pool itself (the
        training rows), so no row is shown its own answer."""
        if not self.shots:
            return [[] for _ in range(len(frame))]
        if self.pool is None:
            raise FaultLLMError("prompt.shots: the serializer was given no training rows to draw shots from")
        values = frame[self.features].to_numpy(np.float64)
        return [
            [(self.pool_questions[j], self.pool.labels[j]) for j in self.pool.choose(i, row, i if own_rows else None)]
            for i, row in enumerate(values)
        ]

    def render_pair(self, train: pd.DataFrame, held_out: pd.DataFrame) -> tuple[Prompts, Prompts]:
        """Training rows and rows held out from them as prompts, in-context examples drawn from `train` (no
        training row is shown its own answer)."""
        serializer = self.shots_from(train)
        return serializer.render(train, own_rows=True), serializer.render(held_out)

    def render(self, frame: pd.DataFrame, own_rows: bool = False, examples: list | None = None) -> Prompts:
        """Prompts for every row. `examples`: each row's shots when the caller fixed them (explain keeps a
        row's shots while it changes the row's values)."""
        values = frame[self.features].to_numpy(np.float64)
        examples = self.examples(frame, own_rows) if examples is None else examples
        texts = [self.chat(self.question(row), shown) for row, shown in zip(values, examples, strict=True)]
        completions = {label: self.template.completion(label) for label in self.labels}
        return Prompts(texts=texts, truth=frame[LABEL].tolist(), labels=self.labels, completions=completions)
