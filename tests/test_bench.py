"""`faultllm bench` on the tiny model (writes bench.json, which `faultllm plan` reads), model.init=random
(the architecture from config.json alone, random weights) and its refusal by train and hpo."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from faultllm import cli
from faultllm.cost.bench import bench_trainer, check_fits_here, setup
from faultllm.cost.plan import make_plan
from faultllm.cost.records import BenchRecord
from faultllm.cost.tokens import row_tokens
from faultllm.jobs.bench import run as bench
from faultllm.llm.scoring import answer_space
from faultllm.llm.tiny import SHIPPED
from faultllm.runtime.errors import FaultLLMError

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
    bench = BenchRecord.read(run_dir / "bench.json")
    assert bench.tokens_per_second > 0 and bench.step_seconds > 0 and bench.peak_memory_gib > 0
    assert bench.steps == 2 and bench.train_tokens > 0 and bench.device == "cpu" and bench.mfu is None
    assert bench.scoring_tokens_per_second > 0 and bench.decode_step_seconds >= 0
    assert bench.n_base == 442_240 and bench.n_lora == 77_792
    bench.write(tmp_path / "again.json")  # a measured record round-trips
    assert BenchRecord.read(tmp_path / "again.json") == bench

    plan = make_plan(compose_cfg("plan", ["job=train", "model=tiny", *SMALL, f"plan.throughput_from={run_dir}"]))
    assert "measured by faultllm bench" in plan.throughput.source
    # the same model and LoRA shape as measured: time is tokens over the measured tokens/s, plus the measured load
    seconds = (
        plan.train_tokens.expected / bench.tokens_per_second
        + plan.scoring_tokens.expected / bench.scoring_tokens_per_second
        + bench.load_seconds
    )
    assert plan.gpu_hours.expected * 3600 == pytest.approx(seconds, rel=1e-9)
    with pytest.raises(FaultLLMError, match=r"no bench\.json there"):
        make_plan(compose_cfg("plan", ["job=train", "model=tiny", f"plan.throughput_from={tmp_path}"]))


def test_the_bench_job_writes_the_record_it_returns(compose_cfg, tmp_path):
    quick = ["bench.warmup_steps=1", "bench.steps=1", "bench.scoring_batches=1", "bench.generate_rows=1"]
    cfg = compose_cfg("bench", ["model=tiny", "data.train_size=8", "data.test_size=4", "eval.batch_size=4", *quick])
    record = bench(cfg, tmp_path / "bench")
    assert BenchRecord.read(tmp_path / "bench" / "bench.json") == record
    assert record.steps == 1 and record.tokens_per_second > 0


def test_training_rows_are_as_long_as_trl_tokenizes_them(compose_cfg):
    run = setup(compose_cfg("bench", ["model=tiny", *SMALL]))
    prompts = run.serializer.render(run.split.train)
    trainer = bench_trainer(run, prompts.sft_rows(), Path("unused"))
    tokens = row_tokens(run.tokenizer, prompts, answer_space(run.tokenizer, prompts))
    assert tokens.trained.tolist() == [len(ids) for ids in trainer.train_dataset["input_ids"]]
    assert tokens.prompt.tolist() == [len(ids) for ids in run.tokenizer(prompts.texts)["input_ids"]]


@pytest.mark.slow  # loads and trains the tiny model
@pytest.mark.filterwarnings("ignore:.*pin_memory")  # a CUDA plan on the CPU: the data loader would pin
def test_cuda_peaks_are_the_timed_steps_own_not_what_the_setup_freed(compose_cfg, monkeypatch):
    """model.init=random builds the weights on the GPU and frees them, and loading leaves temporaries: torch's cache
    would keep them reserved and count them in the reserved and device-wide peaks. The cache is emptied, then the
    peaks reset, before the first training step (the CUDA branch run on the CPU, torch.cuda spied on)."""
    import gc
    from dataclasses import replace

    import torch

    from faultllm.cost.bench import timed_training

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
    from faultllm.llm.sources import resolve_model_path

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
    from faultllm.cost.bench import run_bench

    cfg = compose_cfg("bench", ["model=tiny", *SMALL, "prompt.shots=2", "bench.warmup_steps=1", "bench.steps=1",
                                "bench.scoring_batches=1", "bench.generate_rows=1"])  # fmt: skip
    bench = run_bench(cfg, cfg.bench)
    assert bench.train_tokens > 0 and bench.scoring_tokens_per_second > 0


def test_random_llama2_gets_a_stand_in_tokenizer_of_its_own_vocabulary_without_the_hub(compose_cfg, monkeypatch):
    import huggingface_hub

    from faultllm.llm.shape import model_shape
    from faultllm.llm.sources import STAND_IN, model_files, random_model_tokenizer
    from faultllm.llm.tiny import stand_in_tokenizer
    from faultllm.llm.tokenizer import choose_pad_token, load_tokenizer

    def no_network(*args, **kwargs):
        raise AssertionError("the hub was asked")

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *args, **kwargs: None)  # nothing cached
    monkeypatch.setattr(huggingface_hub, "auth_check", no_network)
    cfg = compose_cfg("bench", ["model.init=random", "model.layers=2"])
    files = model_files(cfg.model, cfg.cache_dir)
    source = Path(random_model_tokenizer(files))
    assert source.name == STAND_IN and source.parent == Path(files.config_dir)  # shipped with its config.json
    config = json.loads((source.parent / "config.json").read_text())
    tokenizer = stand_in_tokenizer(config["vocab_size"], **json.loads(source.read_text()))
    assert len(tokenizer) == 32000 and tokenizer.pad_token is None  # Llama-2 has no pad token either
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)
    choose_pad_token(tokenizer)
    assert tokenizer.pad_token == "<unk>"  # faultllm's choice for Llama-2
    text = "[INST] xmeas_1 = 0.25, xmv_3 = 41.5 [/INST] Y = 3</s>"
    assert tokenizer.tokenize(text) == load_tokenizer(str(SHIPPED)).tokenize(text)  # as long as the tiny's
    assert tokenizer(text)["input_ids"][0] == 1 and tokenizer(text)["input_ids"][-1] == 2
    check_fits_here(cfg)  # 2 of its 32 layers fit a CPU
    shape = model_shape(files.config_dir, layers=2)
    assert (shape.layers, shape.hidden, shape.intermediate, shape.vocab) == (2, 4096, 11008, 32000)


@pytest.mark.parametrize(
    "preset", ["llama2_7b_chat", "llama2_13b_chat", "llama3_8b_instruct", "mistral_7b_instruct", "qwen2_5_7b_instruct"]
)
def test_every_model_preset_ships_a_stand_in_tokenizer_true_to_its_config(preset, compose_cfg, tmp_path, monkeypatch):
    """The vocabulary size and BOS/EOS ids of its config.json, and (chat presets) a chat template faultllm's
    rendering check accepts, once saved beside the config as model.init=random saves it."""
    import huggingface_hub

    from faultllm.llm.sources import model_files, random_model_tokenizer
    from faultllm.llm.tiny import stand_in_tokenizer
    from faultllm.llm.tokenizer import load_tokenizer
    from faultllm.prompts.templates import template_for

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *args, **kwargs: None)  # nothing cached
    cfg = compose_cfg("bench", [f"model={preset}", "model.init=random"])
    source = Path(random_model_tokenizer(model_files(cfg.model, cfg.cache_dir)))
    config = json.loads((source.parent / "config.json").read_text())
    stand_in = stand_in_tokenizer(config["vocab_size"], **json.loads(source.read_text()))
    stand_in.save_pretrained(tmp_path)
    shutil.copy(source.parent / "config.json", tmp_path)  # transformers picks the tokenizer class by model type
    tokenizer = load_tokenizer(str(tmp_path), chat=cfg.prompt.template == "chat")
    assert len(tokenizer) == config["vocab_size"] and tokenizer.eos_token_id == config["eos_token_id"]
    assert tokenizer.bos_token_id in (config["bos_token_id"], None)  # Qwen adds none
    assert tokenizer.pad_token_id not in (None, tokenizer.eos_token_id)
    template = template_for(cfg.prompt.template, tokenizer)  # checks a chat template's rendering
    assert len(tokenizer(template.prompt("You are an expert.", "a = 0.25"))["input_ids"]) < 60


@pytest.mark.slow
def test_bench_of_a_random_2_layer_llama2_7b_runs_offline_with_an_empty_hub_cache(tmp_path, easy_csv):
    """model.init=random with model.layers=2: Llama-2-7B's real shapes and 32000-token vocabulary on a CPU,
    with HF_HUB_OFFLINE, an empty HF_HOME and an endpoint that refuses every connection."""
    hf_home = tmp_path / "hf"
    hf_home.mkdir()
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_HOME": str(hf_home), "HF_ENDPOINT": "http://127.0.0.1:9"}
    env.pop("HF_HUB_CACHE", None)
    run_dir, cache = tmp_path / "bench", tmp_path / "cache"
    result = subprocess.run(
        [sys.executable, "-m", "faultllm", "bench", "model=llama2_7b_chat", "model.init=random", "model.layers=2",
         "data=csv", f"data.path={easy_csv}", "data.train_size=8", "data.test_size=2", "data.normalize=false",
         "trainer.batch_size=1", "eval.batch_size=2", "eval.max_new_tokens=2", "lora.r=8", "bench.warmup_steps=1",
         "bench.steps=1", "bench.scoring_batches=1", "bench.generate_rows=1", "progress=false",
         f"cache_dir={cache}", f"hydra.run.dir={run_dir}"], capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    bench = BenchRecord.read(run_dir / "bench.json")
    assert bench.steps == 1 and bench.train_tokens > 0 and bench.device == "cpu"
    (built,) = cache.glob("random-Llama-2-7b-chat-hf-*")
    config = json.loads((built / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (2, 4096, 32000)
    assert json.loads((built / "tokenizer_config.json").read_text())["bos_token"] == "<s>"
    assert not [path for path in hf_home.rglob("*") if path.is_file()]  # nothing downloaded, nothing cached


def test_the_gpu_install_line_brings_what_pytest_m_gpu_needs():
    """docs/gpu.md's install line: the extras it names must hold pytest (`pip install -e .` alone has none)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    root = Path(__file__).resolve().parents[1]
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    guide = (root / "docs" / "gpu.md").read_text().splitlines()
    (line,) = [line for line in guide if line.startswith("pip install -e")]
    named = re.fullmatch(r"pip install -e '\.\[([\w,]+)\]'.*", line).group(1).split(",")
    assert any(requirement.startswith("pytest") for name in named for requirement in extras[name])
