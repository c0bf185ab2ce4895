"""The Optuna study behind `faultllm hpo`: where it lives, and how workers share it safely.

Storage: SQLite in the run directory, any RDB URL (PostgreSQL for many machines) or a journal
file (one process only: it has no heartbeats); RDB trials carry heartbeats from the moment they
exist, so a killed worker's trial goes stale and is run again. Workers share hpo.n_trials through
slots claimed before a trial starts, and exactly one of them wins the claim to refit the best trial
and write Table 4.1. Each trial's sampler is seeded from (seed, trial number): docs/sweeps.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import time
from pathlib import Path

import numpy as np
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler, TPESampler

from faultllm.config.choices import OBJECTIVES
from faultllm.config.hpo import HpoConfig, is_journal
from faultllm.runtime.credentials import redact, with_password
from faultllm.runtime.errors import FaultLLMError, first_line
from faultllm.runtime.paths import install_hint
from faultllm.search.heartbeats import HeartbeatStorage, heartbeat_thread, last_heartbeats, stale_trial_ids, storage_of

log = logging.getLogger(__name__)

FINISHED = ("COMPLETE", "PRUNED")


EPOCHS_PER_FOLD = "epochs_per_fold"  # a trial's user attribute: its steps are fold * epochs_per_fold + epoch


def make_pruner(name: str):
    import optuna

    pruners = {
        "median": lambda: SameFoldMedianPruner(n_startup_trials=2),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(),
        "none": lambda: optuna.pruners.NopPruner(),
    }
    return pruners[name]()


class SameFoldMedianPruner(BasePruner):
    """Prune a trial whose value at a fold and epoch is worse than the median of the finished trials' values
    at the same fold and epoch. Optuna's MedianPruner compares a trial's best value over all its steps so far
    (any fold) with other trials' values at its step number, which is another fold and epoch when the
    trials train different numbers of epochs; folds differ in difficulty, so that compared unlike things."""

    def __init__(self, n_startup_trials: int = 2) -> None:
        self.n_startup_trials = n_startup_trials

    def prune(self, study, trial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        value, others = trial.intermediate_values[step], same_fold_values(study, trial, step)
        if len(others) < self.n_startup_trials:
            return False
        if math.isnan(value):
            return True
        median = float(np.median(others))
        return value > median if study.direction.name == "MINIMIZE" else value < median


def same_fold_values(study, trial, step: int) -> list[float]:
    """The finished trials' values at the fold and epoch that `step` is for `trial` (fold * epochs + epoch)."""
    from optuna.trial import TrialState

    fold, epoch = divmod(step - 1, trial.user_attrs[EPOCHS_PER_FOLD])
    values = []
    for other in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        epochs = other.user_attrs.get(EPOCHS_PER_FOLD)
        if epochs is None or epoch + 1 > epochs:
            continue
        value = other.intermediate_values.get(fold * epochs + epoch + 1)
        if value is not None and not math.isnan(value):
            values.append(float(value))
    return values


def schedule_pruner(hpo_cfg: HpoConfig, epochs: int | None):
    """The study's pruner: successive halving over fold-epochs under hpo.schedule=asha (its first rung at
    hpo.min_epochs, at most `epochs`), else hpo.pruner (`faultllm.search.schedules`)."""
    import optuna

    if hpo_cfg.schedule != "asha":
        return make_pruner(hpo_cfg.pruner)
    first_rung = min(hpo_cfg.min_epochs, epochs or hpo_cfg.min_epochs)
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=first_rung, reduction_factor=hpo_cfg.reduction_factor)


def open_study(hpo_cfg: HpoConfig, seed: int, run_dir: Path, attempts: int = 5, epochs: int | None = None):
    """Create or load the study, its sampler seeded per trial, its pruner by hpo.schedule (`epochs`:
    trainer.epochs). Workers starting together may race to create the schema: retry."""
    import optuna

    url = study_url(hpo_cfg, run_dir)
    for attempt in range(attempts):
        try:
            return optuna.create_study(
                study_name=hpo_cfg.study_name,
                storage=_storage(url, hpo_cfg),
                sampler=TrialSeededSampler(seed),
                pruner=schedule_pruner(hpo_cfg, epochs),
                direction=OBJECTIVES[hpo_cfg.objective],
                load_if_exists=True,
            )
        except FaultLLMError:
            raise
        except Exception as err:  # SQLAlchemy: unreachable server, bad credentials, racing schema creation
            message = first_line(err)
            # schema creation by another worker (SQLite; PostgreSQL: "duplicate key value violates unique constraint")
            racing = ("already exists", "locked", "unique constraint", "duplicate key")
            if attempt + 1 < attempts and any(text in message.lower() for text in racing):
                time.sleep(0.5 + attempt)
                continue
            reason = f"{type(err).__name__}: {redact(message)}"
            raise FaultLLMError(f"hpo.storage={redact(url)}: cannot open ({reason})") from err
    raise AssertionError("unreachable")


class TrialSeededSampler(BaseSampler):
    """Optuna's TPE, its random stream seeded afresh for each trial from (seed, trial number).

    The storage numbers trials once across all workers and lives, so no trial draws the stream of
    another, not even one a restarted worker or a second worker runs (one TPESampler per worker would
    replay its start-up draws after a restart). A clean one-worker run stays reproducible.
    """

    def __init__(self, seed: int) -> None:
        self.seed, self._number, self._sampler = seed, None, None

    def _for(self, trial) -> BaseSampler:
        if trial.number != self._number:  # one TPE per trial: the same one from before_trial to after_trial
            self._number, self._sampler = trial.number, TPESampler(seed=trial_seed(self.seed, trial.number))
        return self._sampler

    def infer_relative_search_space(self, study, trial):
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self._for(trial).before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self._for(trial).after_trial(study, trial, state, values)


def trial_seed(seed: int, trial_number: int) -> int:
    """The sampler seed of trial `trial_number` of a study seeded `seed` (32 bits, as numpy takes)."""
    digest = hashlib.sha256(f"faultllm-trial:{seed}:{trial_number}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def study_url(hpo_cfg: HpoConfig, run_dir: Path) -> str:
    """hpo.storage, or SQLite in the run directory."""
    return hpo_cfg.storage or f"sqlite:///{(run_dir / 'study.db').resolve()}"


def _storage(url: str, hpo_cfg: HpoConfig):
    if "://" not in url:
        if is_journal(url):  # one process only (HpoConfig refuses it for several workers): no heartbeats
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            return JournalStorage(JournalFileBackend(url))
        raise FaultLLMError(
            f"hpo.storage={url}: expected sqlite:///PATH, postgresql://..., mysql://... or a journal file PATH.log"
        )
    from optuna.storages import RetryHeartbeatStaleTrialCallback  # "RetryFailedTrialCallback" before Optuna 4.9

    return HeartbeatStorage(
        with_password(_with_driver(url)),
        heartbeat_interval=hpo_cfg.heartbeat_interval,
        grace_period=hpo_cfg.grace_period,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
    )


def _with_driver(url: str) -> str:
    """postgresql:// through psycopg 3 (the `postgres` extra) unless psycopg2 is installed."""
    import importlib.util

    scheme = url.split("://", 1)[0]
    if scheme.split("+")[0] not in ("sqlite", "postgresql", "mysql"):
        raise FaultLLMError(
            f"hpo.storage={redact(url)}: unknown scheme {scheme!r}; expected sqlite, postgresql or mysql"
        )
    if scheme != "postgresql" or importlib.util.find_spec("psycopg2"):
        return url
    if importlib.util.find_spec("psycopg") is None:
        raise FaultLLMError(f"hpo.storage={redact(url)}: no PostgreSQL driver; {install_hint('postgres')}")
    return "postgresql+psycopg://" + url.split("://", 1)[1]


def sole_user(hpo_cfg: HpoConfig) -> bool:
    """No other process can share the study before this one starts its workers: the run directory's own
    database, or a journal file (refused for several workers), opened by the first worker."""
    return hpo_cfg.worker_index == 0 and (not hpo_cfg.storage or is_journal(hpo_cfg.storage))


def fail_interrupted(study, n_trials: int) -> None:
    """Mark trials left RUNNING by a killed process as failed and queue their parameters again;
    free the refit claim (of `n_trials` trials) it held.

    Only for a study no live worker can share (`sole_user`): shared storages find dead workers by their
    heartbeats instead.
    """
    for trial in _fail_running(study):
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)
        log.info(f"trial {trial.number} was interrupted: marked failed, queued again")
    _fail_running(_claims(study, n_trials))


def _fail_running(study) -> list:
    from optuna.trial import TrialState

    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial_id in _trial_ids(study, [trial.number for trial in running]):
        storage_of(study).set_trial_state_values(trial_id, state=TrialState.FAIL)
    return running


def _trial_ids(study, numbers: list[int]) -> list[int]:
    """The storage's ids of the study's trials `numbers`."""
    storage = storage_of(study)
    study_id = storage.get_study_id_from_name(study.study_name)
    return [storage.get_trial_id_from_study_id_trial_number(study_id, number) for number in numbers]


class OverBudget(Exception):
    """Another worker took the study's last trial slot: this trial is failed without running."""


def claim_within_budget(study, trial, n_trials: int) -> bool:
    """True if this trial is among the first n_trials not failed: workers never run more than the budget."""
    from optuna.trial import TrialState

    earlier = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED))
    return sum(t.number < trial.number for t in earlier) < n_trials


def slots_taken(study) -> tuple[int, int]:
    """(finished trials, running trials) across all workers."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
    running = sum(t.state == TrialState.RUNNING for t in trials)
    return len(trials) - running, running


@contextlib.contextmanager
def refit_claim(study, n_trials: int, patience: float = 0.0, poll: float = 1.0):
    """Yields True in exactly one worker: the first claim not failed in a side study of the same
    storage (every Optuna storage numbers trials atomically). The claim completes when the block
    does; a block that fails frees it for a rerun. Each trial budget has its own claims: a finished
    study extended with more trials (a larger hpo.n_trials) is refitted again.

    A claim carries a heartbeat from the moment it exists until its block ends: one whose worker was
    killed goes stale and is failed by the next worker or rerun, which claims again (the run
    directory's own database is freed at once by `fail_interrupted`). While another worker holds a
    live claim, wait up to `patience` seconds for it to finish or go stale.
    """
    from optuna.trial import TrialState

    claims = _claims(study, n_trials)
    claim = _claim(claims, patience, poll)
    if claim is None:
        yield False
        return
    with heartbeat_thread(storage_of(claims), *_trial_ids(claims, [claim.number])):
        try:
            yield True
        except BaseException:
            claims.tell(claim, state=TrialState.FAIL)
            raise
    claims.tell(claim, 0.0)


def _claim(claims, patience: float, poll: float):
    """This worker's claim (a running trial of the side study), or None: another worker's claim completed,
    or is alive (its heartbeat moved), or neither went stale within `patience` seconds."""
    from optuna.trial import TrialState

    deadline, first_seen = time.monotonic() + patience, None
    while True:
        fail_stale(claims)
        held = claims.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.COMPLETE))
        if any(other.state == TrialState.COMPLETE for other in held):
            return None
        if not held:
            return _ask_claim(claims)
        beats = last_heartbeats(storage_of(claims), _trial_ids(claims, [other.number for other in held]))
        first_seen = beats if first_seen is None else first_seen
        if beats != first_seen or time.monotonic() >= deadline:  # a beat since we first looked: its worker lives
            return None
        time.sleep(poll)


def _ask_claim(claims):
    import warnings

    from optuna.trial import TrialState

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "heartbeat is supposed to be used with optimize": claims are not trials
        claim = claims.ask()
    held = claims.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.COMPLETE))
    if not any(other.number < claim.number for other in held):
        return claim
    claims.tell(claim, state=TrialState.FAIL)  # another worker claimed first, a moment ago
    return None


def fail_stale(study) -> None:
    """Fail the running trials of `study` whose heartbeat went stale, without queueing them again (Optuna's
    `fail_stale_trials` also runs the storage's retry callback, which is for search trials, not claims)."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = storage_of(study)
    for trial_id in stale_trial_ids(storage, storage.get_study_id_from_name(study.study_name)):
        with contextlib.suppress(UpdateFinishedTrialError):  # another worker failed it first
            storage.set_trial_state_values(trial_id, state=TrialState.FAIL)


def _claims(study, n_trials: int):
    import optuna

    name = f"{study.study_name}:refit:{n_trials}"
    return optuna.create_study(study_name=name, storage=storage_of(study), load_if_exists=True)


def best_trial(study):
    """The best finished trial so far, or None."""
    try:
        return study.best_trial
    except ValueError:
        return None
