"""The `hpo.*` group: how the search runs (trials, folds, schedule, pruning, workers, storage) and its space,
one `SearchParam` per hyperparameter."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from faultllm.config.choices import OBJECTIVES, ON_OOM, SCHEDULES
from faultllm.config.fields import MISSING, ConfigError, at_least, check_fields, one_of


@dataclass
class SearchParam:
    """One hyperparameter of `hpo.space`: the config key it sets and the range it is drawn from."""

    key: str = MISSING  # e.g. lora.r
    type: str = one_of("int", "float", "categorical")
    low: Any = None
    high: Any = None
    step: Any = None
    log: bool = False
    choices: list[Any] | None = None

    def __post_init__(self) -> None:
        check_fields(self)
        if self.type == "categorical":
            if not self.choices:
                raise ConfigError("choices", ": a categorical parameter needs choices")
            return
        for name in ("low", "high", "step"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise ConfigError(name, f"={value!r}: expected a number")
        if self.low is None or self.high is None or not self.low < self.high:
            raise ConfigError("low", f"={self.low}, high={self.high}: expected low < high")
        if self.log and self.low <= 0:
            raise ConfigError("low", f"={self.low}: a log range needs low > 0")
        if self.type == "int" and not all(float(v).is_integer() for v in (self.low, self.high, self.step or 1)):
            raise ConfigError("low", f"={self.low}, high={self.high}: an int parameter needs whole numbers")


@dataclass
class HpoConfig:
    """Optuna TPE over stratified K folds (configs/hpo/default.yaml holds the study's search space)."""

    n_trials: int = at_least(100, 1)  # finished trials to run, over all workers (failed ones do not count)
    folds: int = at_least(5, 2)  # stratified, run-grouped cross-validation folds per trial
    objective: str = one_of(*OBJECTIVES)  # mean over folds, last epoch; val_loss is the study's
    # within a fold, under schedule full or race (the study's rule always applies): none: the study's protocol;
    # median: against the finished trials' values at the same fold and epoch; hyperband: Optuna's
    pruner: str = one_of("none", "median", "hyperband")
    # how much of folds x epochs a trial gets (docs/hpo_schedules.md): asha: successive halving over fold-epochs
    # (hpo.pruner unused); race: after each fold a trial stops when worse than the best complete trial over the
    # same folds; full: every fold of every trial (with hpo.pruner=none, the study's protocol)
    schedule: str = one_of(*SCHEDULES, default="asha")
    min_epochs: int = at_least(2, 1)  # asha: the first rung, in fold-epochs (at most trainer.epochs)
    reduction_factor: int = at_least(3, 2)  # asha: one trial in reduction_factor goes on at each rung
    race_margin: float = at_least(0.0, 0.0)  # race: a trial stops when worse than the best by more than this share
    # The study's rule: prune a NaN loss, or a model that cannot answer `Y = label` in its first epochs:
    # up to prune_early_epochs, the mean probability of the valid answers below prune_valid_mass, and only
    # when its validation accuracy's 95% upper bound is already below the best finished trial's accuracy.
    prune_early_epochs: int = at_least(3, 0)
    prune_valid_mass: float = at_least(0.1, 0.0, below=1.0)  # 0.1: greedy decoding would rarely say `Y = label`
    workers: int = at_least(1, 1)  # worker processes over one storage, each on its own GPU when there are GPUs
    worker_index: int = at_least(0, 0)  # another machine's workers: its first worker's index (docs/sweeps.md)
    # local: the workers are processes on this machine; slurm: one SLURM array of hpo.workers tasks (the slurm keys)
    launcher: str = one_of("local", "slurm")
    wait: bool = False  # with launcher=slurm: wait for the array (progress lines) instead of returning at once
    # null: sqlite in the run directory; or sqlite:////path/db, postgresql://user@host/db (password: PGPASSWORD,
    # ~/.pgpass or ${oc.env:FAULTLLM_STORAGE}; one given on the command line is never saved), or a journal file
    # study.log (one worker only: no heartbeats find a dead worker there)
    storage: str | None = None
    study_name: str = "faultllm"  # the Optuna study in the storage (several may share one database)
    heartbeat_interval: int = at_least(60, 1)  # a worker silent for grace_period s has its trial or claim redone
    grace_period: int = at_least(180, 1)  # seconds; heartbeats every heartbeat_interval seconds
    # a trial out of GPU memory fails alone (reason in trials.csv) and the search goes on; halve_batch: and is
    # queued once more at half trainer.batch_size, twice grad_accum
    on_oom: str = one_of(*ON_OOM)
    reuse_model: bool = True  # load the base model once per worker; every fold gets fresh, seeded adapters
    refit: bool = True  # refit the best parameters on the whole training split, evaluate on test
    # name -> SearchParam fields (configs/hpo/default.yaml: the study's space); a dict on the command line too:
    # +hpo.space.wd={key:trainer.weight_decay,type:float,low:0,high:0.1}
    space: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_fields(self)
        self.space = {name: _search_param(name, spec) for name, spec in self.space.items()}
        if self.storage and is_journal(self.storage) and (self.workers > 1 or self.worker_index > 0):
            raise ConfigError(
                "storage", f"={self.storage}: a journal file has no heartbeats, so a dead worker's trial would stay "
                "running forever; use it with one worker (hpo.workers=1, hpo.worker_index=0) or share a "
                "postgresql:// (or sqlite:///) storage between workers",
            )  # fmt: skip


def is_journal(storage: str) -> bool:
    """hpo.storage names an Optuna journal file (PATH.log or PATH.jsonl), not a database URL."""
    return "://" not in storage and storage.endswith((".log", ".jsonl"))


def _search_param(name: str, spec: SearchParam | dict) -> SearchParam:
    if isinstance(spec, SearchParam):
        return spec
    known = [f.name for f in fields(SearchParam)]
    for key in spec:
        if key not in known:
            raise ConfigError(f"space.{name}.{key}", f": no such key; expected some of {', '.join(known)}")
    try:
        return SearchParam(**spec)
    except ConfigError as err:
        raise err.under(f"space.{name}") from err
