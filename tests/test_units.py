"""Quick unit tests for modules the slow tests prove end to end: one inference pass, the protocol's token
counts, and new rows through a predictor's table helpers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from faultllm.cost.cases import Sizes
from faultllm.cost.flops import hardware_flops_per_token, model_flops_per_token
from faultllm.cost.protocol import Protocol, fit, training
from faultllm.cost.tokens import RowTokens
from faultllm.llm.inference import inference, over_batches
from faultllm.llm.predict import metrics_if_labelled, prediction_table


def test_a_pass_runs_every_batch_in_eval_mode_without_autograd_and_gives_the_mode_back():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5)).train()
    seen = over_batches(model, [1, 2, 3], lambda b: (b, model.training, torch.is_inference_mode_enabled()), "t", False)
    assert seen == [(1, False, True), (2, False, True), (3, False, True)] and model.training
    with pytest.raises(RuntimeError), inference(model.eval()):
        raise RuntimeError  # an error inside the pass still gives the mode back
    assert not model.training


def test_training_counts_real_tokens_or_the_studys_padding_per_epoch():
    rows = RowTokens(prompt=np.array([10, 20]), completion=np.array([3, 3]), scored=np.array([11, 21]))
    sizes = Sizes(n_base=1_000.0, n_lora=10.0, checkpointing=True)
    ours = training(rows, 2, sizes, Protocol())
    assert ours.train_tokens == 2 * (13 + 23)
    assert ours.train_flops == ours.train_tokens * model_flops_per_token(1_000, 10)
    assert ours.train_hardware_flops == ours.train_tokens * hardware_flops_per_token(1_000, 10, True)
    assert training(rows, 2, sizes, Protocol(pad_to=512)).train_tokens == 2 * 2 * 512
    assert fit(rows, [rows], 2, True, sizes, Protocol()).train_tokens == ours.train_tokens


def test_a_prediction_table_keeps_the_rows_columns_and_scores_only_labelled_rows():
    rows = pd.DataFrame({"sensor_id": ["a", "b"], "x": [0.1, 0.2], "label": [1, 0]})
    predictions = pd.DataFrame({"predicted": [1, 1], "prob_0": [0.2, 0.4], "prob_1": [0.8, 0.6]})
    table = prediction_table(rows, ["x"], predictions)
    assert list(table["sensor_id"]) == ["a", "b"] and list(table["predicted"]) == [1, 1]
    metrics = metrics_if_labelled(rows, table["predicted"], [0, 1])
    assert (
        metrics["accuracy"] == 0.5
        and metrics_if_labelled(rows.drop(columns="label"), table["predicted"], [0, 1]) is None
    )


def test_an_untrained_run_reopens_as_its_base_model_with_the_runs_serializer(compose_cfg, easy_csv, tmp_path):
    from faultllm.jobs.train import run as train
    from faultllm.llm.trained import TrainedLLM
    from faultllm.run.saved import open_run

    data = ["data=csv", f"data.path={easy_csv}", "data.train_size=8", "data.test_size=4", "model=tiny"]
    train(compose_cfg("train", [*data, "trainer.epochs=0", "progress=false"]), tmp_path / "run")
    run = open_run(tmp_path / "run")
    trained = TrainedLLM.from_run(run)
    assert run.untrained and not hasattr(trained.model, "peft_config")  # the base alone: no adapter
    assert trained.serializer.features == run.prompt_features() and trained.tokenizer.padding_side == "left"


def test_an_eval_set_named_last_epoch_only_is_scored_after_the_last_epoch_alone(tmp_path, monkeypatch):
    """HPO's folds: validation rows after every epoch (the pruner reads them), training rows after the last."""
    from types import SimpleNamespace

    from faultllm.config.choices import EPOCH_METRICS
    from faultllm.config.groups import TrainerConfig
    from faultllm.llm import trainer

    scored = []

    def evaluate(model, tokenizer, prompts, space, batch_size):
        scored.append(prompts)
        return dict.fromkeys(EPOCH_METRICS, 0.5), None

    monkeypatch.setattr(trainer, "evaluate_restricted", evaluate)
    history = trainer.EpochHistory(tmp_path / "epochs.jsonl", through=0)
    callback = trainer._EpochCallback(
        history, {"train": "train rows", "val": "val rows"}, None, None, TrainerConfig(epochs=3), 8, "trial 0 fold 1",
        None, frozenset({"train"}),
    )  # fmt: skip
    per_epoch = []
    for epoch in (1, 2, 3):
        callback.on_epoch_end(None, SimpleNamespace(epoch=float(epoch), global_step=epoch), None)
        per_epoch.append(scored.copy())
        scored.clear()
    assert per_epoch == [["val rows"], ["val rows"], ["train rows", "val rows"]]
    assert "train_accuracy" in history.rows[-1] and "train_accuracy" not in history.rows[0]
