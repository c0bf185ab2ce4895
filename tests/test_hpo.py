from __future__ import annotations

import ast
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import optuna
import pytest

from faultllm.config.hpo import SearchParam
from faultllm.config.load import load_config
from faultllm.data.splits import cv_folds, fold_splits, make_split
from faultllm.jobs.hpo import run as search
from faultllm.run.kind import RunKind
from faultllm.runtime.errors import FaultLLMError
from faultllm.search.hpo import _PruningReporter, study_rule
from faultllm.search.schedules import FOLD_VALUES
from faultllm.search.studies import EPOCHS_PER_FOLD, make_pruner, open_study, same_fold_values
from tests.conftest import easy_overrides

RULE = (3, 0.5)  # hpo.prune_early_epochs, hpo.prune_valid_mass


def hpo_overrides(tiny_cache, easy_csv, n_trials: int) -> list[str]:
    return [
        *easy_overrides(tiny_cache, easy_csv), "data.train_size=40", "data.test_size=20", "trainer.epochs=1",
        f"hpo.n_trials={n_trials}", "hpo.folds=2", "hpo.space.lora_r.high=16", "hpo.space.learning_rate.low=1e-3",
    ]  # fmt: skip


def test_the_studys_pruning_rule():
    best = (0.9, 40)  # the best finished trial's accuracy, this fold's validation rows
    assert study_rule({"epoch": 1, "val_loss": float("nan"), "val_valid_mass": 0.9}, *RULE, None) == "loss is NaN"
    row = {"epoch": 2, "val_loss": 0.3, "val_accuracy": 0.25, "val_valid_mass": 0.02}
    assert study_rule(row, *RULE, best) == (
        "valid answers get 2.0% of the probability at epoch 2 (hpo.prune_valid_mass) and its accuracy's 95% "
        "upper bound 0.402 is below the best finished trial's 0.900"
    )
    assert study_rule(row, *RULE, None) is None  # nothing finished: nothing to be below
    assert study_rule(row | {"val_accuracy": 0.82}, *RULE, best) is None  # 0.82 of 40 rows may still be 0.9
    assert study_rule(row | {"epoch": 5}, *RULE, best) is None  # only early epochs
    assert study_rule({"epoch": 1, "val_loss": 0.3, "val_accuracy": 0.0, "val_valid_mass": 0.9}, *RULE, best) is None


# Per trial, per epoch of fold 0: (validation accuracy, valid-answer mass). Trial 2 is the best: it answers
# right most of the time while still putting little mass on `Y = label` (restricted scoring picks the label).
SCRIPTED = [
    [(0.55, 0.60), (0.60, 0.70)],
    [(0.20, 0.01), (0.25, 0.02)],
    [(0.85, 0.03), (0.95, 0.05)],
    [(0.30, 0.02), (0.30, 0.02)],
    [(0.70, 0.40), (0.75, 0.50)],
]


def _scripted_study(pruner: str) -> optuna.Study:
    """Run SCRIPTED through the pruning reporter (one fold of 40 validation rows, two epochs)."""
    cfg = load_config("hpo", ["model=tiny", f"hpo.pruner={pruner}", "hpo.prune_valid_mass=0.1"]).hpo
    study = optuna.create_study(direction="maximize", pruner=make_pruner(pruner))
    for epochs in SCRIPTED:
        trial = study.ask()
        on_epoch = _PruningReporter(trial, cfg, len(epochs)).for_fold(0, val_rows=40)
        try:
            for epoch, (accuracy, mass) in enumerate(epochs, 1):
                on_epoch({"epoch": epoch, "val_loss": 1.0, "val_accuracy": accuracy, "val_valid_mass": mass})
        except optuna.TrialPruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        trial.set_user_attr("val_accuracy", accuracy)
        study.tell(trial, accuracy)
    return study


def test_the_valid_mass_rule_never_prunes_the_best_trial_of_a_scripted_study():
    trials = _scripted_study("none").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED", "COMPLETE", "PRUNED", "COMPLETE"]
    assert trials[2].value == max(epochs[-1][0] for epochs in SCRIPTED)  # the best ran to the end
    # trial 1: 0.20 of 40 rows is at most 0.35 (Wilson), below trial 0's 0.60; trial 3's 0.30 at most 0.46 < 0.95
    assert "upper bound 0.348 is below the best finished trial's 0.600" in trials[1].user_attrs["pruned_because"]
    assert "below the best finished trial's 0.950" in trials[3].user_attrs["pruned_because"]


def _trial_with_values(study: optuna.Study, epochs: int, values: dict[tuple[int, int], float]) -> None:
    """A finished trial whose value at (fold, epoch) is values[(fold, epoch)], reported at step fold * epochs + epoch."""
    trial = study.ask()
    trial.set_user_attr(EPOCHS_PER_FOLD, epochs)
    for (fold, epoch), value in values.items():
        trial.report(value, step=fold * epochs + epoch)
    study.tell(trial, 0.5)


def test_the_median_pruner_compares_a_fold_and_epoch_only_with_the_same_fold_and_epoch():
    """Fold 1 is hard (0.3 for everyone), fold 0 easy (0.9). Finished trials trained 2 epochs a fold; a trial
    of 3 epochs reports fold 0 epoch 3 at step 3, which for them is fold 1 epoch 1: Optuna's MedianPruner
    would compare the new trial's best (0.9) with 0.3, and its fold 1 epoch 1 (0.35, step 4) with their fold 1
    epoch 2 (step 4, 0.3). Here each value meets the values of its own fold and epoch."""
    study = optuna.create_study(direction="maximize", pruner=make_pruner("median"))
    for _ in range(3):
        _trial_with_values(study, 2, {(0, 1): 0.85, (0, 2): 0.9, (1, 1): 0.3, (1, 2): 0.3})
    trial = study.ask()
    trial.set_user_attr(EPOCHS_PER_FOLD, 3)
    trial.report(0.8, step=3)  # fold 0 epoch 3: the others never trained a third epoch
    assert same_fold_values(study, trial, 3) == [] and not trial.should_prune()
    trial.report(0.29, step=4)  # fold 1 epoch 1: below their fold 1 epoch 1 (0.3)
    assert same_fold_values(study, trial, 4) == [0.3, 0.3, 0.3] and trial.should_prune()
    frozen = study.get_trials(deepcopy=False)[trial.number]
    assert not optuna.pruners.MedianPruner(n_startup_trials=2).prune(study, frozen)  # Optuna's: its best 0.8 > 0.3
    other = study.ask()
    other.set_user_attr(EPOCHS_PER_FOLD, 2)
    other.report(0.88, step=1)  # fold 0 epoch 1: above their 0.85
    assert same_fold_values(study, other, 1) == [0.85] * 3 and not other.should_prune()
    other.report(0.31, step=3)  # fold 1 epoch 1, above 0.3, although far below fold 0's values
    assert not other.should_prune()


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
def test_a_trial_that_cannot_answer_with_a_label_is_not_pruned_while_no_trial_has_finished(
    tiny_cache, easy_csv, tmp_path
):
    """The study pruned trials whose generations were no valid `Y = label` in the first epochs. Restricted
    scoring always picks a label, so the rule reads the probability of the valid answers: a learning rate
    of 1.0 wrecks the answer format in one epoch (0% on valid answers), 3e-3 keeps it (about a third).
    Valid mass is not accuracy: the rule prunes only below the best finished trial, so the first trial runs on."""
    overrides = [*hpo_overrides(tiny_cache, easy_csv, 2), "hpo.schedule=full", "hpo.pruner=none", "hpo.refit=false"]
    cfg = load_config("hpo", [*overrides, "hpo.objective=val_class_loss"])  # -log p(true label | allowed labels)
    space = {"lr": SearchParam("trainer.learning_rate", "categorical", choices=[3e-3, 1.0])}
    cfg = replace(cfg, hpo=replace(cfg.hpo, space=space))
    for lr in (1.0, 3e-3):
        open_study(cfg.hpo, cfg.seed, tmp_path).enqueue_trial({"lr": lr})
    search(cfg, tmp_path)
    study = optuna.load_study(study_name="faultllm", storage=f"sqlite:///{tmp_path}/study.db")
    trials = {trial.params["lr"]: trial for trial in study.trials}
    assert set(trials) == {3e-3, 1.0}
    wrecked = trials[1.0]
    assert wrecked.state.name == "COMPLETE" and wrecked.user_attrs["val_valid_mass"] < 0.1
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


def complete_trials_ran_every_fold(trials: list, folds: int, epochs: int) -> list:
    """The COMPLETE trials of a finished study, each checked to have run every epoch of every fold (a schedule
    stops trials only by pruning them)."""
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert complete
    for trial in complete:
        assert len(trial.user_attrs[FOLD_VALUES]) == folds and trial.user_attrs["fold_epochs_trained"] == folds * epochs
    return complete


def _states(db) -> dict[int, str]:
    """The sweep's trials, number -> state."""
    try:
        query = "SELECT t.number, t.state FROM trials t JOIN studies s USING (study_id) WHERE s.study_name = 'faultllm'"
        return dict(sqlite3.connect(db).execute(query).fetchall())
    except sqlite3.OperationalError:
        return {}


KILL_SEED = 0  # see _kill_points


def _kill_points(seed: int) -> list[tuple[int, float]]:
    """Drawn from the seed: twice, once the study holds `finished` trials (0..4, so a later trial is left when
    one ends during the delay) and another is running, wait `delay` seconds more and SIGKILL the sweep."""
    rng = random.Random(seed)
    return [(finished, rng.uniform(0, 0.5)) for finished in sorted(rng.sample(range(5), 2))]


def _running(states: dict[int, str]) -> set[int]:
    return {number for number, state in states.items() if state == "RUNNING"}


def _kill_mid_trial(process, db, finished: int, delay: float) -> bool:
    """SIGKILL `process` `delay` s after the study holds `finished` finished trials and one `process` runs.

    A trial left RUNNING by the previous life is not this process's. A pruned trial can end within the delay
    (about 1 s on 2 cores): then the next trial is killed as soon as it runs."""
    left_running = _running(_states(db))
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        states = _states(db)
        running = _running(states) - left_running
        if sum(s in ("COMPLETE", "PRUNED") for s in states.values()) >= finished and running:
            time.sleep(delay)
            if running <= _running(_states(db)):
                os.killpg(process.pid, signal.SIGKILL)  # killed mid-trial, as a crash or a preempted node would
                return process.wait() == -signal.SIGKILL and bool(_running(_states(db)) - left_running)
            delay = 0.0
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_a_sweep_killed_twice_resumes_without_repeating_a_trial(tiny_cache, easy_csv, tmp_path):
    """kill -9 at two seeded points of a 6-trial sweep, rerun each time: 6 finished trials, every one with its
    own parameters (a restarted sweep does not replay its first draws), each killed trial failed and run again
    once, one refit."""
    run_dir, db = tmp_path / "run", tmp_path / "run" / "study.db"
    overrides = [*hpo_overrides(tiny_cache, easy_csv, 6), f"hydra.run.dir={run_dir}"]
    for kill, (finished, delay) in enumerate(_kill_points(KILL_SEED)):
        with open(tmp_path / f"life{kill}.log", "w") as log:
            assert _kill_mid_trial(_hpo_process(overrides, log), db, finished, delay), log.name
    again = subprocess.run([sys.executable, "-m", "faultllm.cli", "hpo", *overrides], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "was interrupted: marked failed, queued again" in again.stdout
    trials = optuna.load_study(study_name="faultllm", storage=f"sqlite:///{db}").trials
    params = {t.number: tuple(sorted(t.params.items())) for t in trials}
    finished = [t.number for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert len(finished) == 6 and len({params[n] for n in finished}) == 6  # no trial drew another's parameters
    assert len(failed) == 2 and not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
    retries = {t.user_attrs["retry_of"]: t.number for t in trials if "retry_of" in t.user_attrs}
    assert sorted(retries) == [t.number for t in failed]  # each killed trial queued again once, with the
    assert all(set(params[t.number]) <= set(params[retries[t.number]]) for t in failed)  # parameters it had drawn
    claims = optuna.load_study(study_name="faultllm:refit:6", storage=f"sqlite:///{db}").trials
    assert [t.state.name for t in claims] == ["COMPLETE"] and (run_dir / "final" / "metrics.json").exists()
    assert (run_dir / "table_4_1.md").exists() and (run_dir / "trials.csv").exists()
    assert not list((run_dir / "trials").rglob("checkpoint-*"))  # folds keep epoch metrics, not checkpoints


@pytest.mark.slow
def test_two_workers_share_one_study_without_duplicating_work(tiny_cache, easy_csv, tmp_path):
    """Under hpo.schedule=race: each worker races against the other's complete trials (tests/test_hpo_workers.py
    runs two workers and the refit under the default, asha)."""
    db = tmp_path / "shared.db"
    logs, workers = [], []
    for worker in range(2):
        log = open(tmp_path / f"worker{worker}.log", "w")  # noqa: SIM115
        overrides = [
            *hpo_overrides(tiny_cache, easy_csv, 4),
            f"hpo.storage=sqlite:///{db}",
            "hpo.refit=false",
            "hpo.schedule=race",
            f"hpo.worker_index={worker}",
            f"hydra.run.dir={tmp_path / f'w{worker}'}",
        ]
        logs.append(log)
        workers.append(_hpo_process(overrides, log))
    for worker, log in zip(workers, logs, strict=True):
        assert worker.wait(timeout=600) == 0
        log.close()
    states = list(_states(db).values())
    assert sum(s in ("COMPLETE", "PRUNED") for s in states) == 4
    assert "RUNNING" not in states
    done_by = [(tmp_path / f"worker{w}.log").read_text().count("trial ") for w in range(2)]
    assert all(done_by), "both workers took trials"
    complete_trials_ran_every_fold(optuna.load_study(study_name="faultllm", storage=f"sqlite:///{db}").trials, 2, 1)


@pytest.mark.slow  # waits out a heartbeat grace period
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
    other_worker = open_study(cfg.hpo, cfg.seed, tmp_path)
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

    from faultllm.llm import build

    loads = []
    load = build.load_base_model
    monkeypatch.setattr(build, "load_base_model", lambda *args: loads.append(args) or load(*args))
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


@pytest.mark.slow
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
    from faultllm.run.directory import TRAIN_RESUME, set_aside_other_run, start_run

    cfg = compose_cfg("hpo", ["model=tiny"])
    final = start_run(cfg, tmp_path / "final", RunKind.HPO)
    (final / "metrics.json").write_text("{}")
    set_aside_other_run(cfg, final, TRAIN_RESUME)
    assert final.exists() and not list(tmp_path.glob("final.*"))  # the same config: continued in place
    set_aside_other_run(replace(cfg, lora=replace(cfg.lora, r=2 * cfg.lora.r)), final, TRAIN_RESUME)
    (aside,) = tmp_path.glob("final.*")
    assert (aside / "metrics.json").exists() and not final.exists()


def test_a_study_is_resumed_only_with_the_config_it_was_made_with(tiny_cache, easy_csv, tmp_path):
    from faultllm.run.directory import start_run

    overrides = hpo_overrides(tiny_cache, easy_csv, 3)
    start_run(load_config("hpo", overrides), tmp_path, RunKind.HPO)
    saved = (tmp_path / "config.yaml").read_text()
    other = [*overrides, "hpo.folds=3", "hpo.space.lora_r.high=32", "hpo.n_trials=9", "hpo.workers=2"]
    with pytest.raises(
        FaultLLMError,
        match=r"holds a run of another config \(hpo.folds: 2 there, 3 here; "
        r"hpo.space.lora_r.high: 16 there, 32 here\);",
    ):  # more trials and workers are the same study: not named
        search(load_config("hpo", other), tmp_path)
    assert (tmp_path / "config.yaml").read_text() == saved
