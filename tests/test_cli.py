from __future__ import annotations

import json
import subprocess
import sys
import time

import pandas as pd


def faultllm(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "faultllm.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_help_is_instant_and_lists_commands():
    start = time.perf_counter()
    result = faultllm("--help")
    assert time.perf_counter() - start < 1.5
    assert result.returncode == 0
    for command in ("data prepare", "train", "hpo", "baselines", "explain"):
        assert command in result.stdout


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
    assert typo.returncode != 0 and "Could not override 'data.pth'" in typo.stderr and "Traceback" not in typo.stderr
    shown = faultllm("data", "prepare", "--cfg", "job", "data.train_size=80")
    assert shown.returncode == 0 and "train_size: 80" in shown.stdout


def test_unknown_command():
    result = faultllm("trian")
    assert result.returncode == 2 and "unknown command 'trian'" in result.stderr
