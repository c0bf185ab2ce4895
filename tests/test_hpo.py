from __future__ import annotations

import ast
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import optuna
import pytest

from faultllm.config import load_config
from faultllm.errors import FaultLLMError
from faultllm.hpo import study_rule
from faultllm.jobs.hpo import run as search
from faultllm.schema import SearchParam
from faultllm.splits import cv_folds, fold_splits, make_split
from faultllm.studies import open_study
from tests.conftest import easy_overrides

RULE = (3, 0.5)  # hpo.prune_early_epochs, hpo.prune_valid_mass


def hpo_overrides(tiny_cache, easy_csv, n_trials: int) -> list[str]:
    return [
        *easy_overrides(tiny_cache, easy_csv), "data.train_size=40", "data.test_size=20", "trainer.epochs=1",
        f"hpo.n_trials={n_trials}", "hpo.folds=2", "hpo.space.lora_r.high=16", "hpo.space.learning_rate.low=1e-3",
    ]  # fmt: skip


def test_the_studys_pruning_rule():
    assert study_rule({"epoch": 1, "val_loss": float("nan"), "val_valid_mass": 0.9}, *RULE) == "loss is NaN"
    reason = study_rule({"epoch": 2, "val_loss": 0.3, "val_accuracy": 0.25, "val_valid_mass": 0.02}, *RULE)
    assert reason == "valid answers get 2.0% of the probability at epoch 2 (hpo.prune_valid_mass)"
    assert study_rule({"epoch": 5, "val_loss": 0.3, "val_valid_mass": 0.02}, *RULE) is None  # only early epochs
    assert study_rule({"epoch": 1, "val_loss": 0.3, "val_accuracy": 0.0, "val_valid_mass": 0.9}, *RULE) is None


def test_scaler_is_fitted_per_fold_on_its_training_rows(compose_cfg):
    raw = make_split(compose_cfg("prepare").data, 0)
    folds = cv_folds(raw.train, 3, 0)
    for (fit_rows, val_rows), fold in zip(folds, fold_splits(raw, folds, True, [0, 1]), strict=True):
        fit_values = raw.train.iloc[fit_rows][raw.features].to_numpy()
        scaled_val = fold.test[raw.features].to_numpy()
        expected = (raw.train.iloc[val_rows][raw.features].to_numpy() - fit_values.min(0)) / np.where(
            np.ptp(fit_values, 0) > 0, np.ptp(fit_values, 0), 1
        )
        np.testing.assert_allclose(scaled_val, expected, atol=1e-6)  # validation rows never shaped the scaler
        assert fold.train[raw.features].to_numpy().min() == pytest.approx(0)


def test_bad_space_and_storage(compose_cfg, tmp_path):
    with pytest.raises(FaultLLMError, match=r"hpo.space.lora_r.low=64, high=8: expected low < high"):
        compose_cfg("hpo", ["hpo.space.lora_r.low=64", "hpo.space.lora_r.high=8"])
    with pytest.raises(FaultLLMError, match="expected low < high"):
        compose_cfg("hpo", ["hpo.space.learning_rate.high=1e-5"])
    with pytest.raises(FaultLLMError, match=r"hpo\.storage=sqlite:////no/such/dir/x\.db: cannot open"):
        open_study(compose_cfg("hpo", ["hpo.storage=sqlite:////no/such/dir/x.db"]).hpo, 0, tmp_path)
    with pytest.raises(FaultLLMError, match="the rarest label has 2"):
        search(compose_cfg("hpo", ["model=tiny", "data.train_size=8", "data.test_size=8", "hpo.folds=3"]), tmp_path)


@pytest.mark.slow
def test_nan_trials_are_pruned(tiny_cache, easy_csv, tmp_path):
    cfg = load_config(
        "hpo",
        [
            *hpo_overrides(tiny_cache, easy_csv, 1),
            "hpo.space.learning_rate.low=1e29",
            "hpo.space.learning_rate.high=1e30",
            "hpo.space.learning_rate.step=null",
            "trainer.max_grad_norm=1e30",
        ],
    )
    with pytest.raises(FaultLLMError, match="no trial finished without being pruned"):
        search(cfg, tmp_path)
    ((state, reason),) = (
        sqlite3.connect(tmp_path / "study.db")
        .execute(
            "SELECT t.state, a.value_json FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id WHERE a.key = 'pruned_because'"
        )
        .fetchall()
    )
    assert state == "PRUNED" and reason == '"loss is NaN"'


@pytest.mark.slow
def test_a_trial_that_cannot_answer_with_a_label_is_pruned_by_the_studys_rule(tiny_cache, easy_csv, tmp_path):
    """The study pruned trials whose generations were no valid `Y = label` in the first epochs. Restricted
    scoring always picks a label, so the rule reads the probability of the valid answers: a learning rate
    of 1.0 wrecks the answer format in one epoch (0% on valid answers), 3e-3 keeps it (about a third)."""
    overrides = [*hpo_overrides(tiny_cache, easy_csv, 2), "hpo.schedule=full", "hpo.pruner=none", "hpo.refit=false"]
    cfg = load_config("hpo", [*overrides, "hpo.objective=val_class_loss"])  # -log p(true label | allowed labels)
    space = {"lr": SearchParam("trainer.learning_rate", "categorical", choices=[3e-3, 1.0])}
    cfg = replace(cfg, hpo=replace(cfg.hpo, space=space))
    search(cfg, tmp_path)
    study = optuna.load_study(study_name="faultllm", storage=f"sqlite:///{tmp_path}/study.db")
    trials = {trial.params["lr"]: trial for trial in study.trials}
    assert set(trials) == {3e-3, 1.0}
    assert trials[1.0].state.name == "PRUNED"
    assert trials[1.0].user_attrs["pruned_because"].startswith("valid answers get 0.0% of the probability at epoch 1")
    learning = trials[3e-3]
    assert learning.state.name == "COMPLETE" and learning.user_attrs["val_valid_mass"] > 0.1
    assert learning.value == learning.user_attrs["val_class_loss"] != learning.user_attrs["val_loss"]


def _hpo_process(overrides: list[str], log) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "faultllm.cli", "hpo", *overrides],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _states(db) -> list[str]:
    try:
        query = "SELECT t.state FROM trials t JOIN studies s USING (study_id) WHERE s.study_name = 'faultllm' ORDER BY t.number"
        return [row[0] for row in sqlite3.connect(db).execute(query)]
    except sqlite3.OperationalError:
        return []


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["asha", "full"])
def test_a_killed_study_resumes_and_finishes_the_requested_trials(tiny_cache, easy_csv, tmp_path, schedule):
    run_dir = tmp_path / "run"
    overrides = [*hpo_overrides(tiny_cache, easy_csv, 3), f"hydra.run.dir={run_dir}", "hpo.refit=false"]
    overrides.append(f"hpo.schedule={schedule}")
    with open(tmp_path / "first.log", "w") as log:
        first = _hpo_process(overrides, log)
        deadline = time.time() + 300
        while (
            time.time() < deadline
            and _states(run_dir / "study.db")[:2] != ["COMPLETE", "RUNNING"]
            and first.poll() is None
        ):
            time.sleep(0.2)
        assert _states(run_dir / "study.db")[:2] == ["COMPLETE", "RUNNING"], (tmp_path / "first.log").read_text()[
            -2000:
        ]
        os.killpg(first.pid, signal.SIGKILL)  # killed mid-trial, as a crash or a preempted node would
        first.wait()
    again = subprocess.run([sys.executable, "-m", "faultllm.cli", "hpo", *overrides], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "was interrupted: marked failed, queued again" in again.stdout
    states = _states(run_dir / "study.db")
    assert states[0] == "COMPLETE" and states[1] == "FAIL"
    assert sum(s in ("COMPLETE", "PRUNED") for s in states) == 3
    assert (run_dir / "table_4_1.md").exists() and (run_dir / "trials.csv").exists()
    assert not list((run_dir / "trials").rglob("checkpoint-*"))  # folds keep epoch metrics, not checkpoints


@pytest.mark.slow
def test_two_workers_share_one_study_without_duplicating_work(tiny_cache, easy_csv, tmp_path):
    db = tmp_path / "shared.db"
    logs, workers = [], []
    for worker in range(2):
        log = open(tmp_path / f"worker{worker}.log", "w")  # noqa: SIM115
        overrides = [
            *hpo_overrides(tiny_cache, easy_csv, 4),
            f"hpo.storage=sqlite:///{db}",
            "hpo.refit=false",
            f"hpo.worker_index={worker}",
            f"hydra.run.dir={tmp_path / f'w{worker}'}",
        ]
        logs.append(log)
        workers.append(_hpo_process(overrides, log))
    for worker, log in zip(workers, logs, strict=True):
        assert worker.wait(timeout=600) == 0
        log.close()
    states = _states(db)
    assert sum(s in ("COMPLETE", "PRUNED") for s in states) == 4
    assert "RUNNING" not in states
    done_by = [(tmp_path / f"worker{w}.log").read_text().count("trial ") for w in range(2)]
    assert all(done_by), "both workers took trials"


def test_a_dead_workers_trial_on_shared_storage_is_failed_and_retried(compose_cfg, tmp_path):
    import optuna

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    cfg = compose_cfg("hpo", [f"hpo.storage={url}", "hpo.heartbeat_interval=1", "hpo.grace_period=2"])
    study = open_study(cfg.hpo, cfg.seed, tmp_path)
    dead = study.ask()
    dead.suggest_int("lora_r", 4, 256)
    storage = study._storage
    storage.record_heartbeat(
        storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name("faultllm"), 0)
    )
    time.sleep(4.5)  # > grace period 2 s, with room for the storage's one-second timestamp resolution
    other_worker = open_study(cfg.hpo, cfg.seed, tmp_path, worker_index=1)
    optuna.storages.fail_stale_trials(other_worker)  # what study.optimize does before each trial
    states = [t.state.name for t in other_worker.trials]
    assert states[0] == "FAIL"
    retried = [t for t in other_worker.trials if t.system_attrs.get("failed_trial") == dead.number]
    assert retried and retried[0].params == dead.params  # queued again with the same parameters


@pytest.mark.slow
def test_each_worker_loads_the_base_model_once_with_the_results_of_fresh_loads(
    tiny_cache, easy_csv, tmp_path, monkeypatch
):
    import pandas as pd

    from faultllm import modeling

    loads = []
    load = modeling.load_base_model
    monkeypatch.setattr(modeling, "load_base_model", lambda *args: loads.append(args) or load(*args))
    runs = {}
    for reuse in (True, False):
        loads.clear()
        overrides = [*hpo_overrides(tiny_cache, easy_csv, 2), "hpo.refit=false", f"hpo.reuse_model={reuse}"]
        overrides.append("hpo.schedule=full")  # every trial whole: the values compared are all numbers
        search(load_config("hpo", overrides), tmp_path / str(reuse))
        runs[reuse] = len(loads), pd.read_csv(tmp_path / str(reuse) / "trials.csv")["value"].tolist()
    assert runs[True][0] == 1 and runs[False][0] == 2 * 2  # one load per worker instead of one per trial and fold
    assert runs[True][1] == runs[False][1]  # fresh, seeded adapters on the kept base: the same trial values


# The third training step of the sweep runs out of GPU memory (trial 0, fold 0), as a CUDA OOM would.
OOM_AT_THIRD_STEP = """
import sys, torch, transformers
batches, step = [], transformers.Trainer.training_step
def training_step(self, *args, **kwargs):
    batches.append(self.args.per_device_train_batch_size)
    if len(batches) == 3:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    return step(self, *args, **kwargs)
"""


def _trials(run_dir):
    import pandas as pd

    return pd.read_csv(run_dir / "trials.csv")


@pytest.mark.slow
def test_a_trial_out_of_gpu_memory_fails_alone_and_the_sweep_goes_on(tiny_cache, easy_csv, tmp_path):
    run_dir = tmp_path / "run"
    driver = OOM_AT_THIRD_STEP + "transformers.Trainer.training_step = training_step\n"
    driver += "from faultllm.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    overrides = [*hpo_overrides(tiny_cache, easy_csv, 3), "hpo.refit=false", f"hydra.run.dir={run_dir}"]
    result = subprocess.run([sys.executable, "-c", driver, "hpo", *overrides], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = _trials(run_dir)
    assert list(trials["state"]).count("FAIL") == 1 and trials["state"].isin(["COMPLETE", "PRUNED"]).sum() == 3
    failed = trials[trials["state"] == "FAIL"].iloc[0]
    assert failed["number"] == 0 and failed["user_attrs_failed_because"].startswith(
        "out of GPU memory at batch 8 x accumulation 1: CUDA out of memory. Tried to allocate 2.00 GiB; parameters lora_r="
    )
    assert "trial 0 (of 3) failed: out of GPU memory" in result.stdout
    assert "user_attrs_oom_retry" not in trials  # hpo.on_oom=fail: not queued again


@pytest.mark.slow
def test_with_halve_batch_an_out_of_memory_trial_is_retried_once_at_half_the_batch(
    tiny_cache, easy_csv, tmp_path, monkeypatch
):
    import transformers

    namespace = {}
    exec(OOM_AT_THIRD_STEP, namespace)  # the same patch as the CLI test's, in this process
    monkeypatch.setattr(transformers.Trainer, "training_step", namespace["training_step"])
    search(load_config("hpo", [*hpo_overrides(tiny_cache, easy_csv, 3), "hpo.refit=false", "hpo.on_oom=halve_batch"]),
           tmp_path)  # fmt: skip
    trials = _trials(tmp_path).set_index("number")
    assert trials.loc[0, "state"] == "FAIL" and trials.loc[0, "user_attrs_failed_because"].endswith(
        "; queued again at batch 4 x accumulation 2"
    )
    retry = trials.loc[1]
    assert retry["state"] in ("COMPLETE", "PRUNED") and retry["user_attrs_retry_of"] == 0
    assert ast.literal_eval(retry["user_attrs_oom_retry"]) == {
        "trainer.batch_size": 4, "trainer.grad_accum": 2
    }  # fmt: skip
    params = [c for c in trials if c.startswith("params_")]
    assert trials.loc[0, params].equals(trials.loc[1, params])  # the same parameters, at half the batch
    assert namespace["batches"][:4] == [8, 8, 8, 4]  # trial 0 ran out at its third step; its retry runs batch 4
    assert trials["state"].isin(["COMPLETE", "PRUNED"]).sum() == 3


def test_a_finished_study_extended_with_more_trials_is_refitted_on_its_new_best(tiny_cache, easy_csv, tmp_path):
    from omegaconf import OmegaConf

    run_dir = tmp_path / "run"
    first = search(load_config("hpo", hpo_overrides(tiny_cache, easy_csv, 1)), run_dir)
    assert first["trials_finished"] == 1 and first["final"]
    assert search(load_config("hpo", hpo_overrides(tiny_cache, easy_csv, 1)), run_dir) == first  # done: no new work
    more = search(load_config("hpo", hpo_overrides(tiny_cache, easy_csv, 2)), run_dir)
    assert more["trials_finished"] == 2 and more["final"]
    refit, best = OmegaConf.load(run_dir / "final" / "config.yaml"), more["best_params"]
    assert (refit.lora.r, refit.trainer.learning_rate) == (best["lora_r"], best["learning_rate"])
    set_aside = list(run_dir.glob("final.*"))  # the first refit, kept when another trial became the best
    assert len(set_aside) == (more["best_trial"] != first["best_trial"])


def test_an_earlier_refit_of_another_config_is_set_aside_not_overwritten(compose_cfg, tmp_path):
    from faultllm.rundir import TRAIN_RESUME, set_aside_other_run, start_run

    cfg = compose_cfg("hpo", ["model=tiny"])
    final = start_run(cfg, tmp_path / "final", "hpo")
    (final / "metrics.json").write_text("{}")
    set_aside_other_run(cfg, final, TRAIN_RESUME)
    assert final.exists() and not list(tmp_path.glob("final.*"))  # the same config: continued in place
    set_aside_other_run(replace(cfg, lora=replace(cfg.lora, r=2 * cfg.lora.r)), final, TRAIN_RESUME)
    (aside,) = tmp_path.glob("final.*")
    assert (aside / "metrics.json").exists() and not final.exists()


def test_a_study_is_resumed_only_with_the_config_it_was_made_with(tiny_cache, easy_csv, tmp_path):
    from faultllm.rundir import start_run

    overrides = hpo_overrides(tiny_cache, easy_csv, 3)
    start_run(load_config("hpo", overrides), tmp_path, "hpo")
    saved = (tmp_path / "config.yaml").read_text()
    other = [*overrides, "hpo.folds=3", "hpo.space.lora_r.high=32", "hpo.n_trials=9", "hpo.workers=2"]
    with pytest.raises(
        FaultLLMError,
        match=r"holds a run of another config \(hpo.folds: 2 there, 3 here; "
        r"hpo.space.lora_r.high: 16 there, 32 here\);",
    ):  # more trials and workers are the same study: not named
        search(load_config("hpo", other), tmp_path)
    assert (tmp_path / "config.yaml").read_text() == saved
