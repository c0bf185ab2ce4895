"""In-context runs: shots drawn from the training rows only, zero-shot, and the base model evaluated untrained."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest

from faultllm.config.load import load_config
from faultllm.prompts.serialize import Serializer
from faultllm.prompts.shots import ShotPool
from faultllm.prompts.templates import chat_prompt
from faultllm.runtime.errors import FaultLLMError
from tests.conftest import TINY


def _pool(k: int, selection: str, seed: int = 0, rows_per_label: int = 6) -> ShotPool:
    labels = [0, 1, 4, 5]
    values = np.arange(rows_per_label * len(labels), dtype=np.float64)[:, None] * [1.0, 0.5]
    return ShotPool(values, [label for label in labels for _ in range(rows_per_label)], labels, k, selection, seed)


def test_shots_are_balanced_over_labels_seeded_and_the_same_for_every_row_when_fixed():
    pool = _pool(6, "fixed")
    chosen = pool.choose(0, np.zeros(2))
    counts = Counter(pool.labels[i] for i in chosen)
    assert sorted(counts.values()) == [1, 1, 2, 2] and len(set(chosen)) == 6  # 6 = 4 labels x 1, 2 extra
    assert all(pool.choose(position, np.full(2, position)) == chosen for position in range(1, 5))
    assert _pool(6, "fixed").choose(0, np.zeros(2)) == chosen  # the seed decides, not the call
    assert _pool(6, "fixed", seed=1).choose(0, np.zeros(2)) != chosen


def test_random_shots_differ_per_row_and_nearest_shots_are_the_closest_rows_of_each_label():
    pool = _pool(4, "random")
    draws = [pool.choose(position, np.zeros(2)) for position in range(6)]
    assert len({tuple(d) for d in draws}) > 1 and draws == [pool.choose(p, np.zeros(2)) for p in range(6)]
    assert all(sorted(pool.labels[i] for i in d) == [0, 1, 4, 5] for d in draws)
    nearest = _pool(4, "nearest")
    query = nearest.values[9] + 0.1  # label 1's rows are 6..11: row 9 is the closest of them
    chosen = nearest.choose(0, query)
    assert chosen == [18, 5, 12, 9]  # each label's closest row (labels 0, 1, 4, 5: rows 0-5, 6-11, ...), nearest last
    distances = np.linalg.norm(nearest.values[chosen] - query, axis=1)
    assert list(distances) == sorted(distances, reverse=True)


def test_a_training_row_never_gets_itself_as_a_shot():
    for selection in ("fixed", "random", "nearest"):
        pool = _pool(8, selection)
        for own in range(len(pool.labels)):
            chosen = pool.choose(own, pool.values[own], own=own)
            assert own not in chosen and len(chosen) == 8


def test_too_few_training_rows_for_the_shots_is_one_line():
    with pytest.raises(FaultLLMError, match=r"prompt.shots=12: needs at least 4 training rows of every label"):
        _pool(12, "fixed", rows_per_label=3)


def test_zero_shots_is_the_plain_prompt(tiny_cache):
    from faultllm.llm.sources import resolve_model_path
    from faultllm.llm.tokenizer import load_tokenizer

    cfg = load_config("train", [f"cache_dir={tiny_cache}", *TINY])
    tokenizer = load_tokenizer(resolve_model_path(cfg.model, cfg.cache_dir))
    frame = pd.DataFrame({"a": [0.25, 0.5], "b": [0.75, 1.0], "label": [0, 1]})
    serializer = Serializer.from_config(cfg.prompt, "sys", ["a", "b"], [0, 1], tokenizer, cfg.seed, frame)
    texts = serializer.render(frame).texts
    assert cfg.prompt.shots == 0 and texts == [
        chat_prompt(serializer.question(row), "sys") for row in [[0.25, 0.75], [0.5, 1.0]]
    ]


def test_llama2_layout_writes_the_shots_inside_the_one_prompt(tiny_cache):
    from faultllm.llm.sources import resolve_model_path
    from faultllm.llm.tokenizer import load_tokenizer

    cfg = load_config("train", [f"cache_dir={tiny_cache}", *TINY, "prompt.shots=2"])
    tokenizer = load_tokenizer(resolve_model_path(cfg.model, cfg.cache_dir))
    train = pd.DataFrame({"a": [0.1, 0.2, 0.3, 0.7, 0.8, 0.9], "b": 0.5, "label": [0, 0, 0, 1, 1, 1]})
    serializer = Serializer.from_config(cfg.prompt, "sys", ["a", "b"], [0, 1], tokenizer, cfg.seed, train)
    test = pd.DataFrame({"a": [0.4], "b": [0.6], "label": [1]})
    (shown,) = serializer.examples(test)
    text = serializer.render(test).texts[0]
    body = "\n\n".join([f"{q} Y = {label}" for q, label in shown] + [serializer.question([0.4, 0.6])])
    assert text == f"[INST] <<SYS>>\nsys\n<</SYS>>\n\n{body} [/INST]" and sorted(label for _, label in shown) == [0, 1]


@pytest.mark.slow
def test_an_untrained_four_shot_run_on_the_bundled_data(tiny_cache, tmp_path):
    """`faultllm train model=tiny trainer.epochs=0 prompt.shots=4`: metrics and predictions, no adapter;
    the shots are training rows, never the test row; evaluate reopens it with the base model."""
    from faultllm.jobs.evaluate import run as evaluate
    from faultllm.jobs.train import run as train
    from faultllm.llm.trained import TrainedLLM
    from faultllm.run.kind import RunKind
    from faultllm.run.saved import open_run

    overrides = [f"cache_dir={tiny_cache}", *TINY, "trainer.epochs=0", "prompt.shots=4", "data.train_size=40",
                 "data.test_size=8", "eval.batch_size=4"]  # fmt: skip
    metrics = train(load_config("train", overrides), tmp_path / "run")
    run_dir = tmp_path / "run"
    assert (run_dir / "metrics.json").exists() and not (run_dir / "adapter").exists()
    predictions = pd.read_csv(run_dir / "predictions.csv")
    assert len(predictions) == 8 and {"prob_0", "prob_1", "prob_4", "prob_5"} <= set(predictions)
    assert metrics["epochs"] == [] and metrics["test"]["n"] == 8

    saved = open_run(run_dir)
    serializer = TrainedLLM.from_run(saved).serializer
    train_questions = {serializer.question(row) for row in saved.split.train[serializer.features].to_numpy()}
    test_questions = [serializer.question(row) for row in saved.split.test[serializer.features].to_numpy()]
    assert not train_questions & set(test_questions)  # the check below could not tell them apart otherwise
    shots = serializer.examples(saved.split.test)
    for own, shown in zip(test_questions, shots, strict=True):
        assert len(shown) == 4 and all(q in train_questions for q, _ in shown) and own not in {q for q, _ in shown}
        assert sorted(label for _, label in shown) == [0, 1, 4, 5] and shown == shots[0]  # fixed: one set for all
    prompt = serializer.render(saved.split.test).texts[0]
    assert prompt.count("What should be Y?") == 5 and prompt.endswith(test_questions[0] + " [/INST]")

    assert saved.kind is RunKind.TRAIN and saved.has_llm
    reopened = evaluate(load_config("evaluate", [f"run_dir={run_dir}", "eval.batch_size=4"]), tmp_path / "eval")
    assert reopened["accuracy"] == metrics["test"]["accuracy"]
    assert reopened["loss"] == pytest.approx(metrics["test"]["loss"], rel=1e-5)
