"""One process on one GPU; torchrun ranks on CPU (gloo) for real."""

from __future__ import annotations

import json
import subprocess
import sys
from unittest.mock import MagicMock

import pytest
import torch

from faultllm.distributed import pin_first_gpu
from faultllm.modeling import Gpu, hardware_plan, load_base_model
from faultllm.schema import ModelConfig
from tests.conftest import easy_overrides

AUTO = {"quantization": "none", "attn_implementation": "sdpa", "optimizer": "auto", "gradient_checkpointing": "auto"}


def test_a_single_process_on_a_4_gpu_box_uses_only_the_first_visible_gpu(monkeypatch):
    from transformers import AutoModelForCausalLM

    for visible, first in ((None, "0"), ("3,1,2,0", "3"), ("", None)):
        environ = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
        assert pin_first_gpu(environ) == first and environ.get("CUDA_VISIBLE_DEVICES") == (first or "")
    launched = {"WORLD_SIZE": "4", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    assert pin_first_gpu(launched) is None and launched["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"  # ranks pick their own

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    loaded = []
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda path, **kw: loaded.append(kw) or MagicMock())
    plan = hardware_plan(ModelConfig(**AUTO), gpu=Gpu("NVIDIA H100 80GB HBM3", 79.2, True))
    load_base_model("some/model", plan)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "2")
    load_base_model("some/model", plan)
    assert [kw["device_map"] for kw in loaded] == [{"": 0}, {"": 2}]  # one device per process, never spread


def test_under_a_launcher_only_train_runs(tmp_path):
    env = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "faultllm", "hpo"], capture_output=True, text=True, env=env)
    assert result.returncode == 2
    assert result.stderr.strip() == "faultllm hpo: runs in one process; only train runs under torchrun"


@pytest.mark.slow
def test_torchrun_with_two_ranks_trains_once_into_one_run_directory(tiny_cache, easy_csv, tmp_path):
    overrides = [*easy_overrides(tiny_cache, easy_csv), "data.train_size=32", "data.test_size=16", "trainer.epochs=1"]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = subprocess.run(
        [*launch, "-m", "faultllm", "train", *overrides], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs" / "train").iterdir()  # both ranks wrote into the main rank's directory
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["effective_batch_size"] == 2 * 8
    assert [json.loads(line)["epoch"] for line in (run_dir / "epochs.jsonl").read_text().splitlines()] == [1]
    assert (run_dir / "adapter" / "adapter_config.json").exists() and result.stdout.count("trained:") == 1
    assert metrics["test"]["n"] == 16  # every test row scored once: the ranks' shares gathered

    from faultllm.config import load_config
    from faultllm.jobs.evaluate import run as evaluate

    alone = evaluate(load_config("evaluate", [f"run_dir={run_dir}"]), tmp_path / "eval")  # one process, all rows
    assert alone["accuracy"] == metrics["test"]["accuracy"]
    assert alone["loss"] == pytest.approx(metrics["test"]["loss"], rel=1e-5)
