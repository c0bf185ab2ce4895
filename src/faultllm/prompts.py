"""Serialize a table row as a question, and render it with the model's prompt template (templates.py).

The study's question: "Tell me if the value of Y is 0 or 1. If the features are: 0.25, ... What
should be Y?", its answer `Y = k`; `prompt.*` sets feature names, decimals, missing values and
the feature order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from faultllm.baselines import load_importances
from faultllm.errors import FaultLLMError
from faultllm.loaders import LABEL
from faultllm.rundir import expand_run_dirs, read_json
from faultllm.templates import ChatTemplate, Llama2Layout, template_for


@dataclass(frozen=True)
class PromptFormat:
    system: str  # already filled in with the data set's name
    name_features: bool
    decimals: int | None  # None: shortest exact form (1, 0.05); an int: fixed decimals (0.0500)
    missing: str = "unknown"  # a missing value: written as "unknown", or left out ("omit")

    @classmethod
    def from_config(cls, prompt_cfg, data_cfg) -> PromptFormat:
        missing = prompt_cfg.get("missing", "unknown")
        if missing not in MISSING_STYLES:
            raise FaultLLMError(f"prompt.missing={missing!r}; expected one of {', '.join(MISSING_STYLES)}")
        if missing == "omit" and not prompt_cfg.name_features:
            raise FaultLLMError("prompt.missing=omit needs prompt.name_features=true: unnamed values would shift place")
        return cls(data_cfg.system_prompt, prompt_cfg.name_features, prompt_cfg.decimals, missing)


MISSING_STYLES = ("unknown", "omit")


def format_value(value: float, decimals: int | None) -> str:
    if np.isnan(value):
        return "unknown"
    if decimals is not None:
        return f"{value:.{decimals}f}"
    return np.format_float_positional(float(value), trim="-")


def label_choices(labels: Sequence) -> str:
    """'0 or 1'; '0, 1, 4 or 5'."""
    names = [str(label) for label in labels]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def question(values: Sequence[float], features: Sequence[str], labels: Sequence, fmt: PromptFormat) -> str:
    pairs = [(name, value) for name, value in zip(features, values, strict=True)]
    if fmt.missing == "omit":
        pairs = [(name, value) for name, value in pairs if not np.isnan(value)]
    shown = [(name, format_value(value, fmt.decimals)) for name, value in pairs]
    if fmt.name_features:
        body = "If " + ", ".join(f"feature {name} = {v}" for name, v in shown) + "."
    else:
        body = "If the features are: " + ", ".join(v for _, v in shown) + "."
    return f"Tell me if the value of Y is {label_choices(labels)}. {body} What should be Y?"


FEATURE_ORDERS = ("original", "importance", "random")


def ordered_features(prompt_cfg, features: Sequence[str], seed: int, split_fingerprint: str) -> list[str]:
    """The order features are written in (`prompt.feature_order`): as in the data, by a baselines run's
    importances (most important first), or a seeded shuffle."""
    order = prompt_cfg.get("feature_order", "original")
    if order == "original":
        return list(features)
    if order == "random":
        rng = np.random.default_rng([seed, 0x6F72646572])
        return [features[i] for i in rng.permutation(len(features))]
    if order == "importance":
        return by_importance(prompt_cfg.importance_from, prompt_cfg.importance_model, features, split_fingerprint)
    raise FaultLLMError(f"prompt.feature_order={order!r}; expected one of {', '.join(FEATURE_ORDERS)}")


def by_importance(run_dir, model: str, features: Sequence[str], split_fingerprint: str) -> list[str]:
    """Features by a baselines run's impurity importances (fitted on training rows only: test rows never
    shape the prompt), which must come from the same split; `run_dir` may be a multirun over seeds."""
    if not run_dir:
        raise FaultLLMError("prompt.feature_order=importance needs prompt.importance_from=DIR (a baselines run)")
    matching = [
        candidate
        for candidate in expand_run_dirs([run_dir])  # a multirun: the job on this split (seed)
        if (candidate / "split.json").exists()
        and read_json(candidate / "split.json")["split_fingerprint"] == split_fingerprint
    ]
    if not matching:
        raise FaultLLMError(
            f"prompt.importance_from={run_dir}: no baselines run there was made on this split (same data and seed)"
        )
    run_dir = matching[0]
    table = load_importances(run_dir)
    rows = table[table["model"] == model]
    if rows.empty or rows["impurity"].isna().all():
        shown = ", ".join(sorted(set(table.loc[table["impurity"].notna(), "model"])))
        raise FaultLLMError(f"prompt.importance_model={model!r}: {run_dir} has impurity importances for: {shown}")
    importance = dict(zip(rows["feature"].astype(str), rows["impurity"], strict=True))
    if set(importance) != set(map(str, features)):
        raise FaultLLMError(f"prompt.importance_from={run_dir}: its features differ from this data set's")
    return sorted(features, key=lambda name: -importance[str(name)])  # stable: ties keep the data's order


# The study's follow-up question asking the model to explain itself (its section 4.3).
WHY_QUESTION = " can you tell me why do you have this decision? What is the reasoning behind your decision?"


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
    def from_config(cls, prompt_cfg, data_cfg, features: list[str], labels: list, tokenizer) -> Serializer:
        """`tokenizer` as `modeling.load_tokenizer` prepared it for `prompt.template`."""
        template = template_for(prompt_cfg.get("template", "llama2"), tokenizer)
        return cls(list(features), list(labels), PromptFormat.from_config(prompt_cfg, data_cfg), template)

    def question(self, values: Sequence[float]) -> str:
        return question(values, self.features, self.labels, self.fmt)

    def chat(self, user_message: str) -> str:
        return self.template.prompt(self.fmt.system, user_message)

    def render(self, frame: pd.DataFrame) -> Prompts:
        values = frame[self.features].to_numpy(np.float64)
        texts = [self.chat(self.question(row)) for row in values]
        completions = {label: self.template.completion(label) for label in self.labels}
        return Prompts(texts=texts, truth=frame[LABEL].tolist(), labels=self.labels, completions=completions)
