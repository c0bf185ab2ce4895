"""One split's metrics and predictions table, by `eval.mode`: restricted scoring or the study's decoding."""

from __future__ import annotations

import numpy as np
import pandas as pd

from faultllm.compare.metrics import classification_metrics
from faultllm.config.groups import EvalConfig
from faultllm.llm.decoding import generate_answers, parse_answer
from faultllm.llm.scoring import AnswerSpace, score
from faultllm.prompts.serialize import Prompts


def evaluate_restricted(
    model, tokenizer, prompts: Prompts, space: AnswerSpace, batch_size: int, progress: str | None = None
):  # fmt: skip
    """(metrics, predictions with per-label probabilities) by restricted scoring.

    Besides the classification metrics: `loss`, the true answer's mean NLL per token (the SFT loss);
    `class_loss`, the mean -log p(true label | allowed labels); `valid_mass`, the mean probability the
    model puts on the valid answers together (1 when it never answers anything else)."""
    scores = score(model, tokenizer, prompts.texts, prompts.truth, space, batch_size, progress)
    probabilities = scores.probabilities()
    predicted = [space.labels[i] for i in probabilities.argmax(axis=1)]
    predictions = _predictions(prompts, predicted)
    for i, label in enumerate(space.labels):
        predictions[f"prob_{label}"] = probabilities[:, i]
    predictions["loss"] = scores.loss
    truth = np.array([space.labels.index(label) for label in prompts.truth], dtype=int)
    losses = {
        "loss": float(scores.loss.mean()),
        "class_loss": float(scores.class_nll(truth).mean()),
        "valid_mass": float(scores.valid_mass().mean()),
    }
    return classification_metrics(prompts.truth, predicted, space.labels) | losses, predictions


def evaluate_generated(
    model, tokenizer, prompts: Prompts, labels: list, max_new_tokens: int, batch_size: int, progress: str | None = None
):  # fmt: skip
    """The study's protocol: greedy decoding, parse `Y = k`; an unparseable answer counts as wrong."""
    texts = generate_answers(model, tokenizer, prompts.texts, max_new_tokens, batch_size, progress)
    predicted = [parse_answer(text, labels) for text in texts]
    predictions = _predictions(prompts, predicted)
    predictions["output"] = texts
    invalid = sum(p is None for p in predicted)
    return classification_metrics(prompts.truth, predicted, labels) | {"invalid_outputs": invalid}, predictions


def evaluate_prompts(
    model, tokenizer, prompts: Prompts, space: AnswerSpace, eval_cfg: EvalConfig, progress: str | None = None
) -> tuple[dict, pd.DataFrame]:
    """Metrics and a predictions table for one split, by `eval.mode` (restricted or generate); `progress`: the
    bar's title (`score`)."""
    if eval_cfg.mode == "generate":
        return evaluate_generated(
            model, tokenizer, prompts, space.labels, eval_cfg.max_new_tokens, eval_cfg.generate_batch_size, progress
        )
    return evaluate_restricted(model, tokenizer, prompts, space, eval_cfg.batch_size, progress)


def _predictions(prompts: Prompts, predicted: list) -> pd.DataFrame:
    return pd.DataFrame({"row": np.arange(len(prompts.truth)), "label": prompts.truth, "predicted": predicted})
