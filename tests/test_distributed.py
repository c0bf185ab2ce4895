"""One process on one GPU; torchrun ranks on CPU (gloo) for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import MagicMock

import pytest
import torch

from faultllm.config.groups import ModelConfig
from faultllm.config.load import load_config
from faultllm.llm.build import load_base_model
from faultllm.llm.hardware import Gpu, hardware_plan
from faultllm.runtime.distributed import GPU_LIST, pin_first_gpu, visible_gpus
from faultllm.runtime.errors import FaultLLMError
from tests.conftest import easy_overrides

AUTO = {"quantization": "none", "attn_implementation": "sdpa", "optimizer": "auto", "gradient_checkpointing": "auto"}
ROOT = Path(__file__).resolve().parents[1]


def test_a_single_process_on_a_4_gpu_box_uses_only_the_first_visible_gpu(monkeypatch, tmp_path):
    from transformers import AutoModelForCausalLM

    for visible, first in ((None, "0"), ("3,1,2,0", "3"), ("", None)):
        environ = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
        assert pin_first_gpu(environ) == first and environ.get("CUDA_VISIBLE_DEVICES") == (first or "")
    launched = {"WORLD_SIZE": "4", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    assert pin_first_gpu(launched) is None and launched["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"  # ranks pick their own

    # hpo hands its workers the GPUs it was given before pinning itself; nvidia-smi lists them when no
    # CUDA_VISIBLE_DEVICES says (torch is never asked: it would count the devices once and for all)
    smi = tmp_path / "nvidia-smi"
    smi.write_text('#!/bin/sh\nfor i in 0 1 2 3; do echo "GPU $i: NVIDIA H100 80GB HBM3 (UUID: GPU-$i)"; done\n')
    smi.chmod(0o755)
    for visible, gpus in ((None, ["0", "1", "2", "3"]), ("3,1", ["3", "1"])):
        environ = {"PATH": str(tmp_path)} | ({} if visible is None else {"CUDA_VISIBLE_DEVICES": visible})
        pin_first_gpu(environ)
        assert visible_gpus(environ) == gpus and environ["CUDA_VISIBLE_DEVICES"] == gpus[0]
        worker = environ | {"CUDA_VISIBLE_DEVICES": gpus[1]}  # what `launch_workers` starts a worker with
        assert pin_first_gpu(worker) == gpus[1] and visible_gpus(worker) == [gpus[1]]

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


# Runs `faultllm ARGS` (or a script) and prints CUDA_VISIBLE_DEVICES as the first CUDA query sees it, then
# stops; a command that fails before asking CUDA prints it as it leaves (what any later query would see).
CUDA_SPY = """
import atexit, json, os, runpy, sys
import torch
def spying(name):
    real = getattr(torch.cuda, name)
    def spy(*args, **kwargs):
        print("first CUDA query sees " + json.dumps(os.environ.get("CUDA_VISIBLE_DEVICES")), flush=True)
        os._exit(0)
    return spy
for name in ("is_available", "device_count", "current_device", "get_device_properties", "_lazy_init", "init"):
    setattr(torch.cuda, name, spying(name))
atexit.register(lambda: print("leaving with " + json.dumps(os.environ.get("CUDA_VISIBLE_DEVICES")), flush=True))
if sys.argv[1].endswith(".py"):
    sys.path.insert(0, os.path.dirname(sys.argv[1]))
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
else:
    from faultllm.cli import main
    sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow  # starts every command in its own interpreter
def test_every_single_process_command_sees_one_gpu_from_its_first_cuda_query(tmp_path):
    """bitsandbytes asks CUDA while transformers/peft are imported: the pin must come before any import."""
    spy = tmp_path / "spy.py"
    spy.write_text(CUDA_SPY)
    missing = tmp_path / "missing"
    data = ["model=tiny", "data=csv", f"data.path={missing}.csv"]
    commands = {
        # train and hpo on the bundled data: a missing file is refused before any CUDA query (faultllm.preflight)
        "train": ["train", "model=tiny"], "hpo": ["hpo", "model=tiny", "hpo.workers=1"], "baselines": ["baselines", *data],
        "evaluate": ["evaluate", f"run_dir={missing}"], "explain": ["explain", f"run_dir={missing}"],
        "predict": ["predict", f"run_dir={missing}", f"input={missing}.csv"], "bench_gpu": [str(ROOT / "scripts" / "bench_gpu.py")],
    }  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", GPU_LIST)}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    started = {
        name: subprocess.Popen([sys.executable, str(spy), *args], cwd=tmp_path, env=env, **pipes)
        for name, args in commands.items()
    }
    seen = {}
    for name, process in started.items():
        out, err = process.communicate(timeout=600)
        lines = [line for line in out.splitlines() if line.startswith(("first CUDA query sees", "leaving with"))]
        assert lines, (name, out[-2000:], err[-2000:])
        seen[name] = lines[0]
    assert seen["train"] == seen["hpo"] == seen["bench_gpu"] == 'first CUDA query sees "0"'
    assert all(line.endswith('"0"') for line in seen.values()), seen


def test_the_gpu_suite_pins_one_gpu(monkeypatch):
    from tests import conftest

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv(GPU_LIST, "")
    conftest.pytest_configure(SimpleNamespace(option=SimpleNamespace(markexpr="gpu")))
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    conftest.pytest_configure(SimpleNamespace(option=SimpleNamespace(markexpr="not gpu")))
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""  # the CPU suite: no GPU at all


def test_a_process_that_sees_several_gpus_outside_a_launcher_refuses_to_train(monkeypatch, tmp_path):
    from transformers import TrainingArguments

    from faultllm.llm.trainer import check_one_gpu, sft_trainer

    cfg = load_config("train", ["model=tiny"])
    monkeypatch.setattr(TrainingArguments, "n_gpu", property(lambda self: 8))  # as if CUDA had counted 8
    with pytest.raises(FaultLLMError, match="sees 8 GPUs") as err:
        plan = hardware_plan(cfg.model, gpu=None)
        sft_trainer(None, None, [], cfg.trainer, plan, tmp_path, checkpoints=False, seed=0, progress=False)
    assert "\n" not in str(err.value)
    monkeypatch.setenv("WORLD_SIZE", "8")
    check_one_gpu(SimpleNamespace(n_gpu=8))  # never under a launcher: DDP, where transformers says 1 anyway


def test_under_a_launcher_only_train_runs(tmp_path):
    env = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "faultllm", "hpo"], capture_output=True, text=True, env=env)
    assert result.returncode == 2
    assert result.stderr.strip() == "faultllm hpo: runs in one process; only train runs under torchrun"


# Under torchrun: `faultllm ARGS` ({rank} in them replaced by the rank), recording every process group started
# (its timeout), then a decision taken by the main rank; each rank leaves OUT/rank<N>.json.
RANK_SPY = """
import json, os, sys
from pathlib import Path
import torch.distributed as dist
started, start = [], dist.init_process_group
def init_process_group(*args, **kwargs):
    started.append(kwargs["timeout"].total_seconds() if kwargs.get("timeout") else None)
    return start(*args, **kwargs)
dist.init_process_group = init_process_group
out, rank = Path(sys.argv[1]), os.environ["RANK"]
from faultllm.cli import main
from faultllm.runtime.distributed import main_decides
try:
    code = main([arg.replace("{rank}", rank) for arg in sys.argv[2:]])
except SystemExit as exit:
    code = exit.code
decided = main_decides(lambda: int(rank))
(out / f"rank{rank}.json").write_text(json.dumps({"code": code, "timeouts": started, "decided": decided}))
"""


def _torchrun_train(tmp_path: Path, overrides: list[str]) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """`faultllm train` on two CPU ranks (gloo) through RANK_SPY: the result and each rank's record."""
    (tmp_path / "spy.py").write_text(RANK_SPY)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command = [*launch, str(tmp_path / "spy.py"), str(tmp_path), "train", *overrides]
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=900)
    ranks = [json.loads(path.read_text()) for path in sorted(tmp_path.glob("rank*.json"))]
    assert len(ranks) == 2, result.stderr[-3000:]
    return result, ranks


@pytest.mark.slow  # two torchrun ranks
def test_torchrun_ranks_on_node_local_run_directories_stop_with_one_line(tiny_cache, easy_csv, tmp_path):
    """Each node deciding `resume` from its own disk crashed on the second node (checkpoints holding only
    its rng state); now rank 0 decides for all, once every rank is known to see rank 0's run directory."""
    overrides = [*easy_overrides(tiny_cache, easy_csv), "data.train_size=32", "trainer.ddp_timeout=1234"]
    result, ranks = _torchrun_train(tmp_path, [*overrides, f"hydra.run.dir={tmp_path}/node{{rank}}"])
    assert [rank["code"] for rank in ranks] == [2, 2], result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("faultllm train: error:")]
    assert len(errors) == 2 and all("does not see the run directory" in line for line in errors), errors
    assert all("hydra.run.dir=DIR on shared storage" in line for line in errors)
    assert [rank["timeouts"] for rank in ranks] == [[1234.0], [1234.0]]  # one group, with trainer.ddp_timeout
    assert [rank["decided"] for rank in ranks] == [0, 0]  # rank 0's answer on every rank


@pytest.mark.slow
def test_torchrun_with_two_ranks_trains_once_into_one_run_directory(tiny_cache, easy_csv, tmp_path):
    overrides = [
        *easy_overrides(tiny_cache, easy_csv), "data.train_size=32", "data.test_size=16", "trainer.epochs=1",
        "trainer.batch_size=2", "trainer.ddp_timeout=1234",
    ]  # fmt: skip
    result, ranks = _torchrun_train(tmp_path, overrides)
    assert result.returncode == 0 and [rank["code"] for rank in ranks] == [0, 0], result.stderr[-3000:]
    # the group started before the Trainer (to agree on the run directory) has the configured timeout,
    # and accelerate reuses it
    assert [rank["timeouts"] for rank in ranks] == [[1234.0], [1234.0]]
    (run_dir,) = (tmp_path / "runs" / "train").iterdir()  # both ranks wrote into the main rank's directory
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["effective_batch_size"] == 2 * 2
    assert [json.loads(line)["epoch"] for line in (run_dir / "epochs.jsonl").read_text().splitlines()] == [1]
    assert (run_dir / "adapter" / "adapter_config.json").exists() and result.stdout.count("trained:") == 1
    assert metrics["test"]["n"] == 16  # every test row scored once: the ranks' shares gathered
    # 16 rows per rank, batch 2: 8 steps an epoch, the loss logged every 8 // 4 steps
    (state,) = run_dir.glob("checkpoints/checkpoint-*/trainer_state.json")
    assert [row["step"] for row in json.loads(state.read_text())["log_history"] if "loss" in row] == [2, 4, 6, 8]

    from faultllm.config.load import load_config
    from faultllm.jobs.evaluate import run as evaluate

    alone = evaluate(load_config("evaluate", [f"run_dir={run_dir}"]), tmp_path / "eval")  # one process, all rows
    assert alone["accuracy"] == metrics["test"]["accuracy"]
    assert alone["loss"] == pytest.approx(metrics["test"]["loss"], rel=1e-5)


# Under torchrun: generate_answers over PROMPTS (batch 2) on the tiny model, each rank leaving OUT/rank<N>.json
# with the batch sizes it decoded and the answers it got back.
PROMPTS = [f"[INST] a = {i / 10} [/INST]" for i in range(5)]
GENERATE_SPY = f"""
import json, os, sys
from pathlib import Path
from faultllm.config.load import load_config
from faultllm.runtime.distributed import start_process_group
from faultllm.llm.decoding import generate_answers
from faultllm.llm.build import load_base_model
from faultllm.llm.hardware import hardware_plan
from faultllm.llm.sources import resolve_model_path
from faultllm.llm.tokenizer import load_tokenizer
start_process_group()
cfg = load_config("train", sys.argv[2:])
path = resolve_model_path(cfg.model, cfg.cache_dir)
model, rows = load_base_model(path, hardware_plan(cfg.model)).eval(), []
generate = model.generate
model.generate = lambda **kwargs: rows.append(len(kwargs["input_ids"])) or generate(**kwargs)
texts = generate_answers(model, load_tokenizer(path), {PROMPTS!r}, max_new_tokens=3, batch_size=2)
Path(sys.argv[1], "rank" + os.environ["RANK"] + ".json").write_text(json.dumps({{"rows": rows, "texts": texts}}))
"""


@pytest.mark.slow
def test_torchrun_ranks_decode_a_share_of_the_rows_each_and_all_get_every_answer(tiny_cache, tiny_model, tmp_path):
    from faultllm.llm.decoding import generate_answers

    (tmp_path / "spy.py").write_text(GENERATE_SPY)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command = [*launch, str(tmp_path / "spy.py"), str(tmp_path), f"cache_dir={tiny_cache}", "model=tiny"]
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    ranks = [json.loads(path.read_text()) for path in sorted(tmp_path.glob("rank*.json"))]
    assert len(ranks) == 2, result.stderr[-3000:]
    assert [rank["rows"] for rank in ranks] == [[2, 1], [2]]  # batches 0 and 2 on rank 0, batch 1 on rank 1
    alone = generate_answers(*tiny_model, PROMPTS, max_new_tokens=3, batch_size=2)  # one process, every batch
    assert ranks[0]["texts"] == ranks[1]["texts"] == alone
