"""hpo.schedule: race and asha give a trial more folds and epochs only while it is still competitive; the refit,
workers and resume work under them as under full (two workers and the refit: tests/test_hpo_workers.py under the
default asha, tests/test_hpo.py under race; resume: tests/test_hpo.py); `faultllm plan` knows what each is
expected to train."""

from __future__ import annotations

import contextlib

import optuna
import pytest

from faultllm.config.hpo import HpoConfig
from faultllm.cost import plan as planning
from faultllm.cost.cases import gather_inputs
from faultllm.run.kind import RunKind
from faultllm.search.hpo import _PruningReporter
from faultllm.search.schedules import FOLD_VALUES, race_verdict, simulated_share
from faultllm.search.studies import schedule_pruner
from tests.test_plan import small_hpo


def test_the_race_stops_a_trial_worse_than_the_best_complete_trial_over_the_same_folds():
    best = [0.5, 0.6, 0.5]
    assert race_verdict([0.9], best, 0.0, "val_loss") == (
        "race: val_loss 0.9000 over 1 fold(s), the best complete trial's 0.5000"
    )
    assert race_verdict([0.6, 0.5], best, 0.0, "val_loss") is None  # 0.55 over the same two folds: as good
    assert race_verdict([0.54], best, 0.1, "val_loss") is None  # worse, but within hpo.race_margin
    assert race_verdict([0.7], [0.8, 0.8], 0.0, "val_accuracy").startswith("race: val_accuracy 0.7000")
    assert race_verdict([0.9, 0.9, 0.9], best, 0.0, "val_loss") is None  # every fold run: it completes
    assert race_verdict([0.9], [], 0.0, "val_loss") is None  # no complete trial yet: nothing to race


def _row(epoch: int, value: float) -> dict:
    return {"epoch": epoch, "val_loss": value, "train_loss": value, "val_valid_mass": 0.9}


def test_a_race_judges_each_fold_on_its_running_mean_at_the_folds_end():
    hpo_cfg = HpoConfig(schedule="race", folds=3)
    study = optuna.create_study(pruner=schedule_pruner(hpo_cfg, 2))
    best = optuna.trial.create_trial(value=0.5, user_attrs={FOLD_VALUES: [0.5, 0.5, 0.5]})
    study.add_trial(best)
    trial = study.ask()
    reporter = _PruningReporter(trial, hpo_cfg, epochs=2)
    first = reporter.for_fold(0, val_rows=20)
    first(_row(1, 2.0))  # worse within a fold: the race judges a fold's last epoch only
    first(_row(2, 0.4))
    second = reporter.for_fold(1, val_rows=20)
    second(_row(1, 0.9))
    with pytest.raises(optuna.TrialPruned, match=r"race: val_loss 0.6500 over 2 fold\(s\)"):
        second(_row(2, 0.9))
    frozen = study.trials[-1]
    assert frozen.user_attrs[FOLD_VALUES] == [0.4, 0.9] and frozen.user_attrs["fold_epochs_trained"] == 4
    assert frozen.intermediate_values == {1: 2.0, 2: 0.4, 3: 0.65, 4: 0.65}  # steps carry the running mean


def test_asha_stops_a_trial_at_its_first_rung_in_fold_epochs():
    hpo_cfg = HpoConfig(schedule="asha", folds=3, min_epochs=2, reduction_factor=3)
    study = optuna.create_study(pruner=schedule_pruner(hpo_cfg, 4))
    first = study.ask()
    reporter = _PruningReporter(first, hpo_cfg, epochs=4)
    for fold in range(3):
        for epoch in range(1, 5):
            reporter.for_fold(fold, val_rows=20)(_row(epoch, 0.3))  # the first trial is always promoted
    study.tell(first, 0.3)
    second = study.ask()
    on_epoch = _PruningReporter(second, hpo_cfg, epochs=4).for_fold(0, val_rows=20)
    on_epoch(_row(1, 0.9))  # before the first rung (2 fold-epochs): never stopped
    with pytest.raises(optuna.TrialPruned, match="pruned at fold 0 epoch 2"):
        on_epoch(_row(2, 0.9))
    assert study.trials[-1].user_attrs["fold_epochs_trained"] == 2  # of 12


def test_the_simulated_share_of_each_schedule():
    def share(schedule: str, n_trials: int) -> float:
        hpo_cfg = HpoConfig(schedule=schedule, n_trials=n_trials, folds=5, pruner="none")
        return simulated_share(hpo_cfg, 20, schedule_pruner(hpo_cfg, 20), seed=0)

    assert share("asha", 1) == share("race", 1) == 1.0  # a lone trial runs whole
    assert share("asha", 100) < 0.2 and share("race", 100) < 0.35


def test_plan_counts_the_share_of_fold_epochs_the_schedule_trains(compose_cfg, monkeypatch):
    """Expected: the search's trials times the schedule's share, plus the refit; worst: every trial whole."""
    cfg = small_hpo(compose_cfg, "hpo.n_trials=20", "hpo.schedule=asha")
    share, assumption = planning.schedule_share(cfg)
    assert 0 < share < 1 and assumption.startswith("hpo.schedule=asha: expected")
    inputs = gather_inputs(cfg)
    asha = planning.plan_hpo(inputs)
    assert inputs.notes[-1] == assumption
    trained = {}
    for assumed in (0.0, 1.0):
        monkeypatch.setattr(planning, "schedule_share", lambda cfg, assumed=assumed: (assumed, "assumed"))
        trained[assumed] = planning.plan_hpo(inputs).expected.total().train_tokens
    expected = trained[0.0] + share * (trained[1.0] - trained[0.0])  # the refit, and the share of the trials
    assert asha.expected.total().train_tokens == pytest.approx(expected, rel=1e-9)
    assert asha.worst.total().train_tokens > trained[1.0]  # the costliest trial configuration, no trial stopped


@pytest.mark.slow
def test_the_tep_search_plans_under_ten_gpu_hours_with_the_default_schedule(compose_cfg):
    overrides = ["job=hpo", "experiment=tep_paper", "model=llama2_7b_chat", "plan.gpu=h100", "plan.tokenizer=tiny"]
    plan = planning.make_plan(compose_cfg("plan", overrides))
    assert plan.gpu_hours.expected <= 10 < plan.gpu_hours.worst
    assert any(note.startswith("hpo.schedule=asha: expected") for note in plan.notes)


def test_asha_never_stops_a_trial_at_its_last_fold_epoch():
    """3 folds x 2 epochs puts the second rung (2 x 3) on the last step: the trial's work is done, it completes."""
    hpo_cfg = HpoConfig(schedule="asha", folds=3, min_epochs=2, reduction_factor=3)
    study = optuna.create_study(pruner=schedule_pruner(hpo_cfg, 2))
    for value in (0.3, 0.4, 0.2, 0.9):  # the last one: the worst at the second rung, had it been asked
        trial = study.ask()
        reporter = _PruningReporter(trial, hpo_cfg, epochs=2)
        with contextlib.suppress(optuna.TrialPruned):
            for fold in range(3):
                for epoch in (1, 2):
                    reporter.for_fold(fold, val_rows=20)(_row(epoch, value if fold else 0.1))  # fold 0: all alike
            study.tell(trial, value)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4


def test_a_study_is_resumed_only_under_the_schedule_it_was_made_with(compose_cfg, tmp_path):
    from faultllm.jobs.hpo import run as search
    from faultllm.run.directory import start_run
    from faultllm.runtime.errors import FaultLLMError

    start_run(compose_cfg("hpo", ["model=tiny", "hpo.schedule=race"]), tmp_path, RunKind.HPO)
    with pytest.raises(FaultLLMError, match=r"another config \(hpo.schedule: 'race' there, 'asha' here\)"):
        search(compose_cfg("hpo", ["model=tiny"]), tmp_path)
