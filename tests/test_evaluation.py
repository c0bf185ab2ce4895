from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from faultllm.errors import FaultLLMError
from faultllm.evaluation import answer_space, parse_answer, score
from faultllm.metrics import classification_metrics
from faultllm.prompts import PromptFormat, Prompts, Serializer
from faultllm.templates import Llama2Layout

pytestmark = pytest.mark.slow  # trains or loads the tiny model

FMT = PromptFormat(system="You are an expert.", name_features=False, decimals=2)
LAYOUT = Llama2Layout(end="</s>")  # the tiny model's EOS


def space_of(tokenizer, labels: list, prompt: str):
    """The answer space after `prompt`, in the study's layout."""
    return answer_space(tokenizer, Prompts([prompt], [], labels, {label: LAYOUT.completion(label) for label in labels}))


def _prompts(n: int, labels: list, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.uniform(size=(n, int(rng.integers(3, 6)))), columns=None)
    frame.columns = [f"f{i}" for i in range(frame.shape[1])]
    # rows of different lengths, so batches really are padded
    frame["label"] = labels[0]
    short = Serializer(["f0"], labels, FMT, LAYOUT).render(frame.iloc[:1])
    return Serializer(list(frame.columns[:-1]), labels, FMT, LAYOUT).render(frame).texts + short.texts


def brute_force_log_probs(model, tokenizer, prompt: str, labels: list, first_token_only: bool = False) -> np.ndarray:
    """log p(answer tokens after the shared prefix) per label, one unpadded sequence at a time."""
    space = space_of(tokenizer, labels, prompt)
    prompt_ids = tokenizer(prompt)["input_ids"] + space.shared
    out = []
    for suffix in space.suffixes:
        suffix = suffix[:1] if first_token_only else suffix
        ids = torch.tensor([prompt_ids + suffix])
        with torch.no_grad():
            log_probs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
        positions = range(len(prompt_ids) - 1, len(prompt_ids) - 1 + len(suffix))
        out.append(sum(log_probs[p, t].item() for p, t in zip(positions, suffix, strict=True)))
    return np.asarray(out)


def test_single_token_labels_take_one_pass_and_match_brute_force(tiny_model):
    model, tokenizer = tiny_model
    labels = [0, 1, 4, 5]
    texts = _prompts(5, labels)
    space = space_of(tokenizer, labels, texts[0])
    assert space.single_pass and tokenizer.convert_ids_to_tokens(space.shared) == ["▁Y", "▁=", "▁"]
    scores = score(model, tokenizer, texts, [1] * len(texts), space, batch_size=4)
    for text, row in zip(texts, scores.log_probs, strict=True):
        # one pass scores each label's first token; brute force adds log p(EOS | label) on top
        first_tokens = brute_force_log_probs(model, tokenizer, text, labels, first_token_only=True)
        np.testing.assert_allclose(row, first_tokens, atol=2e-4)


def test_multi_token_labels_are_scored_by_sequence_log_probability(tiny_model):
    model, tokenizer = tiny_model
    labels = [1, 12, 2, 20]  # 1 and 12 share their first token; EOS tells them apart
    texts = _prompts(6, labels, seed=1)
    space = space_of(tokenizer, labels, texts[0])
    assert not space.single_pass
    scores = score(model, tokenizer, texts, [12] * len(texts), space, batch_size=3)
    for text, row in zip(texts, scores.log_probs, strict=True):
        np.testing.assert_allclose(row, brute_force_log_probs(model, tokenizer, text, labels), atol=2e-4)


@pytest.mark.parametrize("labels", [[0, 4, 11], [1, 12, 2], ["normal", "valve stuck"]])
def test_labels_of_mixed_token_lengths_are_scored_by_sequence_log_probability(tiny_model, labels):
    model, tokenizer = tiny_model
    texts = _prompts(5, labels, seed=3)
    space = space_of(tokenizer, labels, texts[0])
    assert not space.single_pass  # answers of different lengths cannot share one aligned pass
    scores = score(model, tokenizer, texts, [labels[-1]] * len(texts), space, batch_size=4)
    for text, row in zip(texts, scores.log_probs, strict=True):
        np.testing.assert_allclose(row, brute_force_log_probs(model, tokenizer, text, labels), atol=2e-4)


def test_predictions_do_not_depend_on_batch_size_or_padding(tiny_model):
    model, tokenizer = tiny_model
    labels = [0, 1, 4, 5]
    texts = _prompts(9, labels, seed=2)
    space = space_of(tokenizer, labels, texts[0])
    truth = [0, 1, 4, 5, 0, 1, 4, 5, 0, 1]
    one = score(model, tokenizer, texts, truth, space, batch_size=1)
    many = score(model, tokenizer, texts, truth, space, batch_size=8)
    np.testing.assert_allclose(one.log_probs, many.log_probs, atol=1e-4)
    np.testing.assert_allclose(one.loss, many.loss, atol=1e-5)
    assert (one.probabilities().argmax(1) == many.probabilities().argmax(1)).all()


def test_labels_that_tokenize_identically_are_rejected(tiny_model):
    _, tokenizer = tiny_model
    with pytest.raises(FaultLLMError, match="cannot be told apart"):
        space_of(tokenizer, ["ä", "ö"], _prompts(1, [0, 1])[0])  # both unknown: <unk>


def test_parse_answer_and_metrics():
    assert parse_answer("Y = 4</s>", [0, 1, 4, 5]) == 4
    assert parse_answer(" Y = 12", [1, 12]) == 12
    assert parse_answer("Y = 1 0 0 0", [0, 1]) == 1
    assert parse_answer("I think", [0, 1]) is None and parse_answer("Y = 7", [0, 1]) is None
    metrics = classification_metrics([0, 0, 1, 1], [0, None, 1, 0], [0, 1])
    assert metrics["accuracy"] == 0.5 and metrics["confusion_matrix"] == [[1, 0], [1, 1]]
    assert metrics["per_class_recall"] == {"0": 0.5, "1": 0.5}


def test_metrics_are_over_the_classes_present():
    metrics = classification_metrics([1, 4, 1], [1, 4, 1], [0, 1, 4, 5])
    assert metrics["accuracy"] == 1.0 and metrics["macro_f1"] == 1.0  # not 0.5 from absent classes 0 and 5
    assert metrics["classes_scored"] == ["1", "4"] and metrics["per_class_recall"] == {"1": 1.0, "4": 1.0}
    assert len(metrics["confusion_matrix"]) == 4
    wrong = classification_metrics([1, 1], [5, 1], [0, 1, 4, 5])  # a predicted class counts though absent in truth
    assert wrong["classes_scored"] == ["1", "5"] and wrong["macro_f1"] == pytest.approx((2 / 3 + 0) / 2)
