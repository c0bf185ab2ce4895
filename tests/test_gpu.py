"""The CUDA path for real: `pytest -m gpu` on a GPU box (deselected by default, skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch

from faultllm.config.load import load_config
from tests.conftest import easy_overrides

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_4bit_training_scoring_and_adapter_reload_on_the_gpu(tiny_cache, easy_csv, tmp_path):
    from faultllm.jobs.evaluate import run as evaluate
    from faultllm.jobs.train import run as train
    from faultllm.llm.hardware import flash_attention_available

    overrides = [
        *easy_overrides(tiny_cache, easy_csv), "model.quantization=auto", "model.attn_implementation=auto",
        "model.optimizer=auto", "model.gradient_checkpointing=auto", "data.train_size=16", "data.test_size=8",
        "trainer.epochs=1", "trainer.batch_size=8",
    ]  # fmt: skip
    metrics = train(load_config("train", overrides), tmp_path / "run")
    plan = metrics["hardware"]
    assert (plan["device"], plan["quantization"], plan["optimizer"]) == ("cuda", "nf4", "adamw_torch_fused")
    ampere = torch.cuda.get_device_capability()[0] >= 8  # bf16 and FlashAttention-2; older GPUs: fp16 on SDPA
    assert plan["dtype"] == ("bfloat16" if ampere else "float16")
    assert plan["attn_implementation"] == ("flash_attention_2" if ampere and flash_attention_available() else "sdpa")
    assert plan["gradient_checkpointing"] is False  # a tiny model fits any GPU
    assert [row["step"] for row in metrics["epochs"]] == [2]  # two optimizer steps
    reloaded = evaluate(load_config("evaluate", [f"run_dir={tmp_path / 'run'}"]), tmp_path / "eval")
    assert reloaded["accuracy"] == metrics["test"]["accuracy"]
    assert reloaded["loss"] == pytest.approx(metrics["test"]["loss"], rel=1e-3)
