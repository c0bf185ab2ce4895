"""`faultllm bench` on the tiny model (writes bench.json, which `faultllm plan` reads), model.init=random
(the architecture from config.json alone, random weights) and its refusal by train and hpo."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from faultllm import cli, planning
from faultllm.bench import check_fits_here, row_tokens, setup, sft_trainer
from faultllm.errors import FaultLLMError
from faultllm.evaluation import answer_space
from faultllm.tiny import SHIPPED

SMALL = ["data.train_size=40", "data.test_size=16", "eval.batch_size=8"]


@pytest.mark.slow
def test_bench_writes_bench_json_and_plan_uses_it(tmp_path, compose_cfg):
    run_dir = tmp_path / "bench"
    result = subprocess.run(
        [sys.executable, "-m", "faultllm", "bench", "model=tiny", *SMALL, "bench.warmup_steps=1", "bench.steps=2",
         "bench.scoring_batches=1", "bench.generate_rows=2", f"cache_dir={tmp_path / 'cache'}",
         f"hydra.run.dir={run_dir}"], capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    bench = json.loads((run_dir / "bench.json").read_text())
    assert bench["tokens_per_second"] > 0 and bench["step_seconds"] > 0 and bench["peak_memory_gib"] > 0
    assert bench["steps"] == 2 and bench["train_tokens"] > 0 and bench["device"] == "cpu" and bench["mfu"] is None
    assert bench["scoring_tokens_per_second"] > 0 and bench["decode_step_seconds"] >= 0
    assert bench["n_base"] == 442_240 and bench["n_lora"] == 77_792

    plan = planning.make_plan(compose_cfg("plan", ["job=train", "model=tiny", *SMALL, f"plan.throughput_from={run_dir}"]))
    assert "measured by faultllm bench" in plan["throughput"]["source"]
    # the same model and LoRA shape as measured: time is tokens over the measured tokens/s, plus the measured load
    seconds = (
        plan["train_tokens"]["expected"] / bench["tokens_per_second"]
        + plan["scoring_tokens"]["expected"] / bench["scoring_tokens_per_second"]
        + bench["load_seconds"]
    )
    assert plan["gpu_hours"]["expected"] * 3600 == pytest.approx(seconds, rel=1e-9)
    with pytest.raises(FaultLLMError, match=r"no bench\.json there"):
        planning.make_plan(compose_cfg("plan", ["job=train", "model=tiny", f"plan.throughput_from={tmp_path}"]))


def test_training_rows_are_as_long_as_trl_tokenizes_them(compose_cfg):
    run = setup(compose_cfg("bench", ["model=tiny", *SMALL]))
    prompts = run.serializer.render(run.split.train)
    trainer = sft_trainer(run, prompts.sft_rows(), Path("unused"))
    tokens = row_tokens(run.tokenizer, prompts, answer_space(run.tokenizer, prompts))
    assert tokens.trained.tolist() == [len(ids) for ids in trainer.train_dataset["input_ids"]]
    assert tokens.prompt.tolist() == [len(ids) for ids in run.tokenizer(prompts.texts)["input_ids"]]


@pytest.mark.filterwarnings("ignore:.*pin_memory")  # a CUDA plan on the CPU: the data loader would pin
def test_cuda_peaks_are_the_timed_steps_own_not_what_the_setup_freed(compose_cfg, monkeypatch):
    """model.init=random builds the weights on the GPU and frees them, and loading leaves temporaries: torch's cache
    would keep them reserved and count them in the reserved and device-wide peaks. The cache is emptied, then the
    peaks reset, before the first training step (the CUDA branch run on the CPU, torch.cuda spied on)."""
    import gc
    from dataclasses import replace

    import torch

    from faultllm.bench import timed_training

    run = setup(compose_cfg("bench", ["model=tiny", *SMALL, "trainer.batch_size=2"]))
    run.spec = replace(run.spec, plan=replace(run.spec.plan, device="cuda"))
    calls = []
    collect = gc.collect
    monkeypatch.setattr(gc, "collect", lambda *args: calls.append("gc.collect") or collect(*args))
    for name in ("empty_cache", "reset_peak_memory_stats", "synchronize"):
        monkeypatch.setattr(torch.cuda, name, lambda *args, name=name: calls.append(name))
    monkeypatch.setattr(torch.cuda, "device_memory_used", lambda *args: calls.append("step") or 0)  # after each step
    for name in ("max_memory_allocated", "max_memory_reserved"):
        monkeypatch.setattr(torch.cuda, name, lambda *args: 0)
    timed_training(run, run.serializer.render(run.split.train.head(4)).sft_rows(), warmup=1, steps=1)
    first = calls.index("step")
    assert calls.index("gc.collect") < calls.index("empty_cache") < calls.index("reset_peak_memory_stats") < first
    assert "reset_peak_memory_stats" not in calls[first:]


def test_bench_refuses_a_7b_model_on_a_cpu_in_one_line(compose_cfg):
    with pytest.raises(FaultLLMError, match=r"no CUDA GPU here, and meta-llama/Llama-2-7b-chat-hf has 6\.7 B") as err:
        check_fits_here(compose_cfg("bench", ["model.init=random"]))
    assert "\n" not in str(err.value) and "faultllm bench model=tiny" in str(err.value)


@pytest.mark.parametrize("job", ["train", "hpo"])
def test_train_and_hpo_refuse_random_weights_unless_allowed(job):
    error = cli.config_error(job, ["model=tiny", "model.init=random"])
    assert error.startswith("model.init=random: random weights are never a result; add model.allow_random=true")
    assert "\n" not in error
    assert cli.config_error(job, ["model=tiny", "model.init=random", "model.allow_random=true"]) is None
    assert cli.config_error("bench", ["model=tiny", "model.init=random"]) is None
    assert cli.config_error("plan", [f"job={job}", "model.init=random"]) is None


@pytest.mark.slow
def test_random_init_builds_the_tiny_architecture_from_its_config_alone_and_trains(tmp_path, compose_cfg):
    from safetensors.torch import load_file

    from faultllm.jobs.train import run as train
    from faultllm.modeling import resolve_model_path

    model_dir = tmp_path / "tiny-config-only"
    model_dir.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):  # no weights
        shutil.copy(SHIPPED / name, model_dir / name)
    cfg = compose_cfg("train", [
        "model=tiny", "model.build=null", f"model.path={model_dir}", "model.init=random", "model.allow_random=true",
        "data.train_size=8", "data.test_size=4", "trainer.epochs=1", "progress=false",
    ])  # fmt: skip
    metrics = train(cfg, tmp_path / "run")
    assert [row["step"] for row in metrics["epochs"]] == [1]  # one step of batch 8
    built = Path(resolve_model_path(cfg.model, cfg.cache_dir))
    assert built.parent == Path(cfg.cache_dir) and json.loads((built / "config.json").read_text())["hidden_size"] == 128
    random_weights, shipped = load_file(built / "model.safetensors"), load_file(SHIPPED / "model.safetensors")
    assert random_weights.keys() == shipped.keys()
    name = "model.layers.0.self_attn.q_proj.weight"
    assert random_weights[name].shape == shipped[name].shape and not random_weights[name].float().equal(shipped[name])


@pytest.mark.slow
def test_bench_times_few_shot_prompts_drawn_from_the_training_rows(tmp_path, compose_cfg):
    from faultllm.bench import run_bench

    cfg = compose_cfg("bench", ["model=tiny", *SMALL, "prompt.shots=2", "bench.warmup_steps=1", "bench.steps=1",
                                "bench.scoring_batches=1", "bench.generate_rows=1"])  # fmt: skip
    bench = run_bench(cfg, cfg.bench)
    assert bench["train_tokens"] > 0 and bench["scoring_tokens_per_second"] > 0
