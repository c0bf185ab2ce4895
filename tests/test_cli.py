from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pandas as pd
import pytest

from faultllm.runtime.paths import CONFIG_DIR, install_hint


def faultllm(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "faultllm.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_help_is_instant_and_lists_commands():
    start = time.perf_counter()
    result = faultllm("--help")
    assert time.perf_counter() - start < 1.5
    assert result.returncode == 0
    for command in ("data prepare", "train", "hpo", "baselines", "explain"):
        assert command in result.stdout


@pytest.mark.slow  # a fresh interpreter prepares the bundled TEP
def test_data_prepare_writes_the_run_directory(tmp_path):
    run_dir = tmp_path / "run"
    result = faultllm("data", "prepare", f"hydra.run.dir={run_dir}", f"cache_dir={tmp_path}", "seed=3")
    assert result.returncode == 0, result.stderr
    assert "train rows per label  0: 100, 1: 100, 4: 100, 5: 100" in result.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rows"]["test"] == {"0": 40, "1": 40, "4": 40, "5": 40}
    assert summary["seed"] == 3 and summary["scaler_range"] == [0.0, 1.0]
    train = pd.read_parquet(run_dir / "train.parquet")
    assert list(train.columns) == summary["features"] + ["label"]
    assert (run_dir / "config.yaml").exists() and (run_dir / "run_info.json").exists()
    assert "train rows per label  0: 100, 1: 100, 4: 100, 5: 100" in (run_dir / "faultllm.log").read_text()


def test_bad_input_is_one_line_without_traceback(tmp_path):
    result = faultllm(
        "data", "prepare", "data=hst", f"data.path={tmp_path / 'missing.csv'}", f"hydra.run.dir={tmp_path}"
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"faultllm data prepare: error: data.path={tmp_path / 'missing.csv'}: no such file or directory"
    ]


def test_config_typo_and_cfg_job_are_hydras():
    typo = faultllm("data", "prepare", "data.pth=x")
    assert typo.returncode == 2 and "data.pth: no such config key (did you mean data.path?)" in typo.stderr
    shown = faultllm("data", "prepare", "--cfg", "job", "data.train_size=80")
    assert shown.returncode == 0 and "train_size: 80" in shown.stdout


def test_unknown_command():
    result = faultllm("trian")
    assert result.returncode == 2 and "unknown command 'trian'; did you mean train?" in result.stderr


def test_version_module_entry_and_command_help():
    from faultllm import __version__

    assert faultllm("--version").stdout.strip() == f"faultllm {__version__}"
    as_module = subprocess.run([sys.executable, "-m", "faultllm", "--version"], capture_output=True, text=True)
    assert as_module.returncode == 0 and as_module.stdout.strip() == f"faultllm {__version__}"
    shown = faultllm("train", "--help")
    assert shown.returncode == 0 and shown.stdout.startswith("faultllm train: QLoRA fine-tune")
    assert "trainer.*" in shown.stdout and "lora.*" in shown.stdout and "configs/train.yaml" in shown.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["evaluate"], "faultllm evaluate: error: run_dir is required: pass run_dir=..."),
        (["explain"], "faultllm explain: error: run_dir is required: pass run_dir=..."),
        (["data", "prepare", "data.train_size=abc"], "faultllm data prepare: error: data.train_size='abc': expected an integer"),
        (["train", "model=tiny", "lora.dropout=high"], "faultllm train: error: lora.dropout='high': expected a number"),
        (["train", "model=nope"], "faultllm train: error: model=nope: no such option; expected one of llama2_13b_chat"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_leaves_no_run_directory(tmp_path, args, message):
    result = faultllm(*args, cwd=tmp_path)
    (line,) = result.stderr.strip().splitlines()
    assert result.returncode != 0 and line.startswith(message)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("config.yaml"))


def test_a_job_that_fails_leaves_no_empty_run_directory(tmp_path):
    result = faultllm("data", "prepare", "data=hst", f"data.path={tmp_path / 'missing.csv'}", cwd=tmp_path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert not any((tmp_path / "runs").rglob("config.yaml"))


def test_without_hub_access_the_default_model_fails_fast_with_a_hint(tmp_path):
    env = os.environ | {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"}
    result = subprocess.run(
        [sys.executable, "-m", "faultllm", "train", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    (line,) = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "not cached and the hub cannot be reached" in line and "model=tiny" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # a Hydra multirun in a fresh interpreter
def test_multirun_runs_one_job_per_value(tmp_path):
    result = faultllm("data", "prepare", "-m", "seed=1,2", f"hydra.sweep.dir={tmp_path}", f"cache_dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    assert sorted(json.loads((tmp_path / job / "summary.json").read_text())["seed"] for job in ("0", "1")) == [1, 2]


def test_train_refuses_to_resume_a_run_of_another_config_in_one_line(tmp_path):
    """Before any model is loaded (the tiny model is not even built: cache_dir is empty)."""
    from faultllm.config.load import load_config
    from faultllm.run.directory import start_run
    from faultllm.run.kind import RunKind

    common = [f"cache_dir={tmp_path / 'cache'}", "model=tiny"]
    start_run(load_config("train", [*common, "lora.r=16"]), tmp_path / "run", RunKind.TRAIN)
    (tmp_path / "run" / "checkpoints" / "checkpoint-8").mkdir(parents=True)
    saved = (tmp_path / "run" / "config.yaml").read_text()
    other = ["lora.r=8", "model.path=other/model", "data.train_size=100", "prompt.template=chat"]
    result = faultllm("train", *common, *other, f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert (
        "holds a run of another config (data.train_size: 400 there, 100 here; lora.r: 16 there, 8 here; "
        in result.stderr
    )
    assert "model.path: None there, 'other/model' here; prompt.template: 'llama2' there, 'chat' here)" in result.stderr
    assert (tmp_path / "run" / "config.yaml").read_text() == saved and not (tmp_path / "cache").exists()


def test_evaluate_on_a_baselines_run_says_what_to_use_and_leaves_no_folder(tmp_path):
    from faultllm.config.load import load_config
    from faultllm.jobs.baselines import run as baselines

    baselines(load_config("baselines", [f"cache_dir={tmp_path}", "baselines.models=[lr]", "baselines.importances_for=[]"]),
              tmp_path / "b")  # fmt: skip
    result = faultllm("evaluate", f"run_dir={tmp_path / 'b'}")
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"faultllm evaluate: error: run_dir={tmp_path / 'b'} is a `faultllm baselines` run; evaluate needs a train "
        "run: its models' test metrics are in its metrics.json and table_4_2.md, and "
        "`faultllm predict run_dir=DIR input=TABLE` scores other rows with them"
    ]
    assert not (tmp_path / "b" / "evaluate").exists()


def test_a_source_checkout_finds_its_configs_and_names_the_editable_install():
    assert (CONFIG_DIR / "train.yaml").is_file()
    assert install_hint("slurm") == "pip install -e '.[slurm]'"
