"""The Optuna study behind `faultllm hpo`: where it lives, and how workers share it safely.

Storage: SQLite in the run directory, any RDB URL (PostgreSQL for many machines) or a journal
file; RDB trials carry heartbeats from the moment they exist, so a killed worker's trial goes
stale and is run again. Workers share hpo.n_trials through slots claimed before a trial starts,
and exactly one of them wins the claim to refit the best trial and write Table 4.1.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

from optuna.storages import RDBStorage

from faultllm.credentials import redact, with_password
from faultllm.errors import FaultLLMError, first_line
from faultllm.paths import install_hint
from faultllm.schema import OBJECTIVES, HpoConfig

log = logging.getLogger(__name__)

FINISHED = ("COMPLETE", "PRUNED")


def make_pruner(name: str):
    import optuna

    pruners = {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(),
        "none": lambda: optuna.pruners.NopPruner(),
    }
    return pruners[name]()


def schedule_pruner(hpo_cfg: HpoConfig, epochs: int | None):
    """The study's pruner: successive halving over fold-epochs under hpo.schedule=asha (its first rung at
    hpo.min_epochs, at most `epochs`), else hpo.pruner (`faultllm.schedules`)."""
    import optuna

    if hpo_cfg.schedule != "asha":
        return make_pruner(hpo_cfg.pruner)
    first_rung = min(hpo_cfg.min_epochs, epochs or hpo_cfg.min_epochs)
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=first_rung, reduction_factor=hpo_cfg.reduction_factor)


def open_study(
    hpo_cfg: HpoConfig, seed: int, run_dir: Path, worker_index: int = 0, attempts: int = 5, epochs: int | None = None
):
    """Create or load the study, its sampler seeded per worker, its pruner by hpo.schedule (`epochs`:
    trainer.epochs). Workers starting together may race to create the schema: retry."""
    import optuna

    url = study_url(hpo_cfg, run_dir)
    for attempt in range(attempts):
        try:
            return optuna.create_study(
                study_name=hpo_cfg.study_name,
                storage=_storage(url, hpo_cfg),
                # seed + worker index: reproducible, and no two workers draw the same start-up trials
                sampler=optuna.samplers.TPESampler(seed=seed + worker_index),
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
            raise FaultLLMError(f"hpo.storage={redact(url)}: cannot open ({reason})") from None
    raise AssertionError("unreachable")


def study_url(hpo_cfg: HpoConfig, run_dir: Path) -> str:
    """hpo.storage, or SQLite in the run directory."""
    return hpo_cfg.storage or f"sqlite:///{(run_dir / 'study.db').resolve()}"


def _storage(url: str, hpo_cfg: HpoConfig):
    if "://" not in url:
        if url.endswith((".log", ".jsonl")):  # a journal file, for workers sharing NFS
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            return JournalStorage(JournalFileBackend(url))
        raise FaultLLMError(
            f"hpo.storage={url}: expected sqlite:///PATH, postgresql://..., mysql://... or a journal file PATH.log"
        )
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    return HeartbeatStorage(
        with_password(_with_driver(url)),
        heartbeat_interval=hpo_cfg.heartbeat_interval,
        grace_period=hpo_cfg.grace_period,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
    )


class HeartbeatStorage(RDBStorage):
    """Optuna's RDBStorage with a heartbeat on every trial from the moment it runs.

    Optuna records a trial's first heartbeat only once `optimize` starts its heartbeat thread, and
    never one for a trial made by `ask` alone (a refit claim), and it never finds a running trial
    without heartbeat stale: a worker killed in that window left it RUNNING for good. Here a trial
    gets its heartbeat when it is created or taken from the queue, and a running trial found without
    one (made by an older faultllm, or killed between the two statements) gets one, so that it goes
    stale one grace period later unless its worker is alive to keep it fresh.
    """

    def _create_new_trial(self, study_id: int, template_trial=None):
        trial = super()._create_new_trial(study_id, template_trial)
        if trial.state.name == "RUNNING":
            self.record_heartbeat(trial._trial_id)
        return trial

    def set_trial_state_values(self, trial_id: int, state, values=None) -> bool:
        changed = super().set_trial_state_values(trial_id, state, values)
        if changed and state.name == "RUNNING":  # a queued trial taken by a worker
            self.record_heartbeat(trial_id)
        return changed

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        stale = super()._get_stale_trial_ids(study_id)
        for trial_id in self._running_without_heartbeat(study_id):
            self.record_heartbeat(trial_id)
        return stale

    def last_heartbeats(self, trial_ids: list[int]) -> dict:
        from optuna.storages._rdb import models

        heartbeat = models.TrialHeartbeatModel
        session = self.scoped_session()
        try:
            rows = session.query(heartbeat.trial_id, heartbeat.heartbeat).filter(heartbeat.trial_id.in_(trial_ids))
            return dict(rows.all())
        finally:
            session.close()

    def _running_without_heartbeat(self, study_id: int) -> list[int]:
        from optuna.storages._rdb import models
        from optuna.trial import TrialState

        session = self.scoped_session()
        try:
            rows = (
                session.query(models.TrialModel.trial_id)
                .outerjoin(models.TrialHeartbeatModel)
                .filter(models.TrialModel.study_id == study_id, models.TrialModel.state == TrialState.RUNNING)
                .filter(models.TrialHeartbeatModel.trial_heartbeat_id.is_(None))
                .all()
            )
        finally:
            session.close()
        return [row[0] for row in rows]


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


def fail_interrupted(study, n_trials: int) -> None:
    """Mark trials left RUNNING by a killed process as failed and queue their parameters again;
    free the refit claim (of `n_trials` trials) it held.

    Only for a study no live worker can share (its own database, before any worker starts):
    shared storages find dead workers by their heartbeats instead.
    """
    for trial in _fail_running(study):
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)
        log.info(f"trial {trial.number} was interrupted: marked failed, queued again")
    _fail_running(_claims(study, n_trials))


def _fail_running(study) -> list:
    from optuna.trial import TrialState

    storage = study._storage  # the storage the study was opened with: Optuna has no public getter
    study_id = storage.get_study_id_from_name(study.study_name)
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in running:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
    return running


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
    from optuna.storages._heartbeat import get_heartbeat_thread  # what `optimize` keeps a trial alive with
    from optuna.trial import TrialState

    claims = _claims(study, n_trials)
    claim = _claim(claims, patience, poll)
    if claim is None:
        yield False
        return
    with get_heartbeat_thread(claim._trial_id, claims._storage):
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
        beats = _last_heartbeats(claims, [other._trial_id for other in held])
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


def _last_heartbeats(study, trial_ids: list[int]) -> dict:
    """{trial id: its last heartbeat} in a HeartbeatStorage; {} in others."""
    backend = getattr(study._storage, "_backend", study._storage)  # Optuna wraps an RDBStorage in a cache
    return backend.last_heartbeats(trial_ids) if isinstance(backend, HeartbeatStorage) else {}


def fail_stale(study) -> None:
    """Fail the running trials of `study` whose heartbeat went stale, without queueing them again (Optuna's
    `fail_stale_trials` also runs the storage's retry callback, which is for search trials, not claims)."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = study._storage  # the storage the study was opened with: Optuna has no public getter
    if not hasattr(storage, "_get_stale_trial_ids") or storage.get_heartbeat_interval() is None:
        return  # a journal file: no heartbeats
    for trial_id in storage._get_stale_trial_ids(study._study_id):
        with contextlib.suppress(UpdateFinishedTrialError):  # another worker failed it first
            storage.set_trial_state_values(trial_id, state=TrialState.FAIL)


def _claims(study, n_trials: int):
    import optuna

    storage = study._storage  # the storage the study was opened with: Optuna has no public getter
    name = f"{study.study_name}:refit:{n_trials}"
    return optuna.create_study(study_name=name, storage=storage, load_if_exists=True)


def best_trial(study):
    """The best finished trial so far, or None."""
    try:
        return study.best_trial
    except ValueError:
        return None
