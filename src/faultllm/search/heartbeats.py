"""The one place faultllm reaches into Optuna below its public API: heartbeats of RDB trials.

Optuna offers heartbeats publicly only as settings of `RDBStorage` and `fail_stale_trials`, which
leave a window in which a killed worker's trial never goes stale (see `HeartbeatStorage`), and it
has no public way to read a heartbeat, keep one beating outside `optimize`, or reach the storage a
study was opened with. What faultllm needs of that is here and nowhere else, pinned by
tests/test_heartbeats.py, and pyproject.toml bounds optuna to the minor versions it was tested with.
"""

from __future__ import annotations

from optuna.storages import RDBStorage


def storage_of(study):
    """The storage the study was opened with (Optuna's cache around an RDBStorage included)."""
    return study._storage


def heartbeat_thread(storage, trial_id: int):
    """A context manager that keeps the trial's heartbeat beating while its block runs, as `optimize`
    does for a trial (nothing on a storage without heartbeats)."""
    from optuna.storages._heartbeat import get_heartbeat_thread

    return get_heartbeat_thread(trial_id, storage)


def stale_trial_ids(storage, study_id: int) -> list[int]:
    """The running trials of the study whose heartbeat went stale; [] on a storage without heartbeats."""
    if not hasattr(storage, "_get_stale_trial_ids") or storage.get_heartbeat_interval() is None:
        return []  # a journal file
    return storage._get_stale_trial_ids(study_id)


def last_heartbeats(storage, trial_ids: list[int]) -> dict:
    """{trial id: its last heartbeat} in a HeartbeatStorage; {} in others."""
    backend = getattr(storage, "_backend", storage)  # Optuna wraps an RDBStorage in a cache
    return backend.last_heartbeats(trial_ids) if isinstance(backend, HeartbeatStorage) else {}


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
