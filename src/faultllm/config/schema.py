"""What every config key is: one typed dataclass per config group, one per command, defaults defined here once.

Hydra composes the YAML files under configs/ (the study's protocols and presets) onto these
dataclasses (registered as structured configs in `faultllm.config.load`), so a key that does not exist
or a value of the wrong type is refused while composing. Choices, ranges and rules between keys
are checked when the composed config becomes these objects (`__post_init__`), before any work:
a `ConfigError` names the key, the value and what was expected. The library receives these
objects (or plain values), never Hydra's untyped config tree.
"""

from __future__ import annotations

import ast
import difflib
import functools
import io
import tokenize
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

from faultllm.runtime.distributed import DDP_TIMEOUT
from faultllm.runtime.errors import FaultLLMError

MISSING = "???"  # Hydra's marker of a required value


class ConfigError(FaultLLMError):
    """A value that cannot work. `key` is relative to the dataclass that raised it; `config.typed` adds the path."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}{message}")
        self.key, self.message = key, message

    def under(self, prefix: str) -> ConfigError:
        return ConfigError(f"{prefix}.{self.key}", self.message)


def suggestion(value: object, allowed: Iterable[object]) -> str:
    """' (did you mean X?)' for a near miss, else ''. Dotted keys are compared by their last part."""
    allowed = [str(a) for a in allowed]
    last = {a.rpartition(".")[2]: a for a in allowed}
    close = difflib.get_close_matches(str(value).rpartition(".")[2], list(last), n=1, cutoff=0.6)
    return f" (did you mean {last[close[0]]}?)" if close else ""


_FIRST = object()


def one_of(*choices: object, default: object = _FIRST, nullable: bool = False) -> Any:
    """A field whose value must be one of `choices` (None too with `nullable`); the first is the default."""
    return field(default=choices[0] if default is _FIRST else default, metadata={"choices": choices, "null": nullable})


def at_least(default: float | None, low: float, *, strict: bool = False, below: float | None = None) -> Any:
    """A numeric field >= low (> low with `strict`), and < below when given; None allowed when the default is."""
    return field(default=default, metadata={"low": low, "strict": strict, "below": below})


def _check_choice(name: str, value: object, meta: dict) -> None:
    choices = meta["choices"]
    if value is None and meta["null"]:
        return
    if value not in choices:
        shown = ", ".join(str(c) for c in choices) + (" or null" if meta["null"] else "")
        raise ConfigError(name, f"={value!r}: expected one of {shown}{suggestion(value, choices)}")


def _check_range(name: str, value: object, meta: dict) -> None:
    if value is None:
        return
    low, strict, below = meta["low"], meta["strict"], meta["below"]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(name, f"={value!r}: expected a number")
    if (value <= low) if strict else (value < low):
        raise ConfigError(name, f"={value}: expected {'>' if strict else '>='} {low:g}")
    if below is not None and value >= below:
        raise ConfigError(name, f"={value}: expected < {below:g}")


def check_fields(obj: object) -> None:
    """The choices and ranges declared by `one_of` / `at_least` on a dataclass instance."""
    for spec in fields(obj):
        value = getattr(obj, spec.name)
        if "choices" in spec.metadata:
            _check_choice(spec.name, value, spec.metadata)
        elif "low" in spec.metadata:
            _check_range(spec.name, value, spec.metadata)


def _each(name: str, values: Iterable, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    for value in values:
        if value not in allowed:
            raise ConfigError(name, f": unknown {value!r}; expected some of {', '.join(allowed)}{suggestion(value, allowed)}")


# ---------------------------------------------------------------- names other modules share

LOADERS = ("hst", "tep", "table")
BASELINE_MODELS = ("rf", "lr", "svm", "knn", "gbm", "hgb", "xgb", "lgbm", "catboost")
BOOSTING_PACKAGES = {"xgb": "xgboost", "lgbm": "lightgbm", "catboost": "catboost"}  # the `boosting` extra
SHOT_SELECTIONS = ("fixed", "random", "nearest")
SCHEDULES = ("full", "race", "asha")  # hpo.schedule: how much of folds x epochs each trial gets
ON_OOM = ("fail", "halve_batch")  # hpo.on_oom: what a trial that ran out of GPU memory does
EVAL_MODES = ("restricted", "generate")
TEMPLATES = ("llama2", "chat")
MISSING_STYLES = ("unknown", "omit")
PROMPT_FORMATS = ("study", "compact")  # prompt.format (templates.py)
FEATURE_ORDERS = ("original", "importance", "random")
TRACKERS = ("tensorboard", "mlflow", "wandb", "trackio", "comet_ml", "clearml", "dvclive", "neptune", "swanlab")
TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tracking"), "mlflow": ("mlflow", "tracking"), "wandb": ("wandb", None)}
# transformers.SchedulerType's values (tests/test_configs.py checks they still match)
LR_SCHEDULERS = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
    "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr", "warmup_stable_decay",
    "greedy",
)  # fmt: skip
# Per-epoch metrics: the epoch callback writes `{split}_{metric}`; HPO objectives and `report` read them.
# loss: the study's, mean NLL per answer token (`Y = k</s>`: mostly the fixed format); class_loss:
# -log p(true label | allowed labels); valid_mass: the probability the model puts on any valid answer.
LOSS, CLASS_LOSS, ACCURACY, MACRO_F1, VALID_MASS = "loss", "class_loss", "accuracy", "macro_f1", "valid_mass"
EPOCH_METRICS = (LOSS, CLASS_LOSS, ACCURACY, MACRO_F1, VALID_MASS)
OBJECTIVES = {
    f"val_{LOSS}": "minimize", f"val_{CLASS_LOSS}": "minimize",
    f"val_{ACCURACY}": "maximize", f"val_{MACRO_F1}": "maximize",
}  # fmt: skip
GPU_NAMES = ("h100", "h200", "a100", "l40s", "a10", "t4")  # `plan.gpu`: cost.flops.GPUS holds their datasheet numbers


def trackers(report_to: str | list) -> tuple[str, ...]:
    """`trainer.report_to` as a tuple of tracker names ("none" dropped)."""
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    return tuple(str(name) for name in names if str(name) != "none")


# ---------------------------------------------------------------- config groups


@dataclass
class DataConfig:
    """configs/data/*.yaml: where the rows come from, which labels, how many, and how they are scaled."""

    loader: str = one_of(*LOADERS, default="table")  # how data.path is read: the HST CSV, TEP files, any table
    display_name: str | None = "the monitored system"  # names the data set in summaries and system prompts
    system_prompt: str = (  # the system turn of every prompt, at training and inference alike
        "You are an expert in fault diagnosis of industrial systems. You are capable of accurately determining "
        "the system state based on given variables and their values. Below is a sample of the monitoring data."
    )
    path: str | None = None  # a file (hst, table) or a directory (tep)
    test_path: str | None = None  # table: a separate test file
    label_column: str = "label"  # table: the column holding the label
    feature_columns: list[str] | None = None  # table; null: every column but label/group/drop_columns
    drop_columns: list[str] = field(default_factory=list)  # table: columns that are never features (ids, times)
    group_column: str | None = None  # table: a run id; rows of one run stay on one side of a split
    labels: list[Any] | None = None  # null: every label present
    train_size: int = at_least(240, 1)  # balanced over the labels
    test_size: int = at_least(60, 1)  # balanced over the labels
    drop_duplicates: bool = True  # a row copied on both sides would leak
    normalize: bool = True  # min-max scaling, fitted on training rows only
    scale_range: list[float] = field(default_factory=lambda: [0.0, 1.0])  # [low, high] of the min-max scaling
    missing_rate: float = at_least(0.0, 0.0, below=1.0)  # MCAR: this fraction of the test rows' values blanked
    missing_in_train: bool = False  # blank the training rows too
    allow_missing: bool = False  # empty cells in the input files are missing values instead of an error
    use_testing_files: bool = True  # tep: test rows from the testing files (the study); false: hold out whole runs
    prefault: str = one_of("drop", "relabel")  # tep: rows of a faulty run before the fault starts
    # tep, Rieth files: the sample at which a faulty run's fault starts, per side
    fault_onset: dict[str, int] = field(default_factory=lambda: {"train": 20, "test": 160})
    # tep, Braatz files: the same
    braatz_fault_onset: dict[str, int] = field(default_factory=lambda: {"train": 0, "test": 160})
    cache_dir: str = "${cache_dir}/tables"  # columnar copies of slow-to-parse files

    def __post_init__(self) -> None:
        check_fields(self)
        if len(self.scale_range) != 2 or not self.scale_range[0] < self.scale_range[1]:
            raise ConfigError("scale_range", f"={list(self.scale_range)}: expected [low, high] with low < high")
        if self.labels is not None and (len(self.labels) < 2 or len(set(map(str, self.labels))) < len(self.labels)):
            raise ConfigError("labels", f"={list(self.labels)}: expected at least two distinct labels")
        for name in ("train_size", "test_size") if self.labels else ():
            if getattr(self, name) % len(self.labels):
                raise ConfigError(name, f"={getattr(self, name)}: cannot be balanced over {len(self.labels)} labels; "
                                        f"use a multiple of {len(self.labels)}")  # fmt: skip
        for part in ("train", "test"):
            if part not in self.fault_onset or part not in self.braatz_fault_onset:
                raise ConfigError("fault_onset", f": expected a sample number for train and for test ({part} missing)")


@dataclass
class PromptConfig:
    """How a row is written as a question (`faultllm train prompt.decimals=2`); the system prompt is data's."""

    # study: the study's question ("Tell me if the value of Y is 0 or 1. If the features are: 0.2534, ...");
    # compact: fewer tokens ("Features (0-99): 25 ... Y is 0 or 1?": scaled values as integers 0-99, names
    # x1, x2, ...; needs data.normalize=true and data.scale_range=[0, 1]; prompt.decimals unused)
    format: str = one_of(*PROMPT_FORMATS)
    name_features: bool = False  # true: "feature xmeas_1 = 0.25, ..."; false: "the features are: 0.25, ..."
    decimals: int | None = at_least(4, 0, below=16)  # digits after the point; null: shortest exact form
    missing: str = one_of(*MISSING_STYLES)  # a missing value: "unknown" in its place, or omitted
    feature_order: str = one_of(*FEATURE_ORDERS)  # importance: by a baselines run's importances (importance_from)
    importance_from: str | None = None  # a `faultllm baselines` run (or multirun) on the same split
    importance_model: str = one_of(*BASELINE_MODELS)  # whose importances order the features (importance_from)
    template: str = one_of(*TEMPLATES)  # llama2: the study's [INST] <<SYS>> layout; chat: the tokenizer's template
    chat_template: str | None = None  # with template=chat: a Jinja file used instead of the tokenizer's own
    # in-context examples: solved training rows (balanced over labels, seeded) put before the question,
    # as earlier user/assistant turns (template=chat) or inside the prompt (llama2); 0: zero-shot
    shots: int = at_least(0, 0)
    # fixed: the same shots for every row; random: drawn per row; nearest: per row, the closest training
    # rows of each label (Euclidean over the scaled features)
    shot_selection: str = one_of(*SHOT_SELECTIONS)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.missing == "omit" and not self.name_features:
            raise ConfigError("missing", "=omit needs prompt.name_features=true: unnamed values would shift place")
        if self.feature_order == "importance" and not self.importance_from:
            raise ConfigError("feature_order", "=importance needs prompt.importance_from=DIR (a baselines run)")
        if self.chat_template and self.template != "chat":
            raise ConfigError("chat_template", f"={self.chat_template}: needs prompt.template=chat")


@dataclass
class ModelConfig:
    """configs/model/*.yaml: the base model and how it is loaded on this machine."""

    path: str | None = None  # a hub id or a local directory (configs/model/*.yaml)
    # random: the architecture from its config.json alone (shipped for configs/model/*), random weights, quantized
    # as usual: throughput and memory without downloading weights (`faultllm bench`); never a result
    init: str = one_of("pretrained", "random")
    allow_random: bool = False  # train/hpo refuse model.init=random unless this is true
    quantization: str = one_of("auto", "nf4", "none")  # auto: 4-bit NF4 on CUDA, none on CPU
    attn_implementation: str = one_of("auto", "flash_attention_2", "sdpa", "eager")  # auto: FA-2 when installed
    optimizer: str = "auto"  # auto: fused AdamW on CUDA, adamw_torch on CPU; or a transformers `optim` name
    gradient_checkpointing: Any = one_of("auto", True, False)  # auto: on CUDA, when the estimate says it is needed
    # build=tiny: the few-layer Llama built locally (shipped prebuilt for configs/model/tiny.yaml's spec)
    build: str | None = one_of("tiny", default=None, nullable=True)
    hidden_size: int | None = at_least(None, 1)  # build=tiny: width
    layers: int | None = at_least(None, 1)  # build=tiny: transformer blocks; init=random: keep the first N (the real shapes on a CPU)
    heads: int | None = at_least(None, 1)  # build=tiny: attention heads
    vocab_size: int | None = at_least(None, 1)  # build=tiny: tokenizer vocabulary
    warmup_steps: int | None = at_least(None, 0)  # build=tiny: steps warming it up on the prompt layout
    seed: int | None = None  # build=tiny: the seed it is built from

    def __post_init__(self) -> None:
        check_fields(self)
        tiny = (self.hidden_size, self.layers, self.heads, self.vocab_size, self.warmup_steps, self.seed)
        if self.build == "tiny" and None in tiny:
            raise ConfigError("build", "=tiny needs hidden_size, layers, heads, vocab_size, warmup_steps and seed")
        if self.optimizer != "auto":
            _check_optimizer(self.optimizer)


def _check_optimizer(name: str) -> None:
    from transformers.training_args import OptimizerNames  # only when one is named: transformers imports slowly

    names = [member.value for member in OptimizerNames]
    if name not in names:
        raise ConfigError("optimizer", f"={name!r}: expected auto or a transformers optim name{suggestion(name, names)}")


@dataclass
class LoraConfig:
    """LoRA adapters (`faultllm train lora.r=64 lora.alpha=16 lora.dropout=0.1`)."""

    r: int = at_least(64, 1)  # rank of each adapter's low-rank update
    alpha: int = at_least(16, 1)  # scaling: the update is multiplied by alpha / r
    dropout: float = at_least(0.1, 0.0, below=1.0)  # on the adapters' input; below 1: at 1 LoRA would see only zeros
    target_modules: Any = "all-linear"  # every linear layer of every block (not lm_head); or [q_proj, v_proj]

    def __post_init__(self) -> None:
        check_fields(self)
        modules = self.target_modules
        if not isinstance(modules, str) and (not modules or not all(isinstance(m, str) for m in modules)):
            raise ConfigError("target_modules", f"={modules!r}: expected all-linear or module names like [q_proj,v_proj]")


@dataclass
class TrainerConfig:
    """The study's setup by default: AdamW, constant learning rate, 20 epochs, batch 1, no accumulation."""

    epochs: int = at_least(20, 0)  # 0: no training; the base model is evaluated as it is (zero-/few-shot)
    batch_size: int = at_least(1, 1)  # rows per step (per process)
    grad_accum: int = at_least(1, 1)  # steps whose gradients are summed per optimizer step
    learning_rate: float = at_least(2e-4, 0.0, strict=True)  # AdamW's peak learning rate
    lr_scheduler: str = one_of(*LR_SCHEDULERS, default="constant")  # transformers' schedule; the study's: constant
    weight_decay: float = at_least(0.0, 0.0)  # AdamW's decoupled weight decay
    max_grad_norm: float = at_least(1.0, 0.0)  # gradient clipping; 0: none
    eval_each_epoch: bool = True  # restricted-label loss and accuracy on train and test after every epoch
    resume: bool = True  # continue from the last checkpoint in the run directory (rerun with hydra.run.dir=DIR)
    report_to: Any = "none"  # tensorboard | mlflow | wandb | ...; a list for several: [tensorboard,mlflow]
    ddp_timeout: int = at_least(DDP_TIMEOUT, 1)  # seconds a torchrun rank waits for the others (rank 0 loading data)

    def __post_init__(self) -> None:
        check_fields(self)
        if not isinstance(self.report_to, str | list | tuple):
            raise ConfigError("report_to", f"={self.report_to!r}: expected none, a tracker or a list of trackers")
        _each("report_to", trackers(self.report_to), TRACKERS)


@dataclass
class EvalConfig:
    """How a model is scored (`faultllm evaluate run_dir=DIR eval.mode=generate`)."""

    mode: str = one_of(*EVAL_MODES)  # restricted: score only the valid labels; generate: greedy tokens + parse
    batch_size: int = at_least(16, 1)  # rows per restricted-scoring forward pass
    max_new_tokens: int = at_least(5, 1)  # generate mode: tokens decoded per answer
    generate_batch_size: int = at_least(1, 1)  # generate mode; the study decoded one row at a time
    split_path: str | None = None  # evaluate: a CSV/Parquet of raw rows instead of the run's test split

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class CalibrateConfig:
    """Temperature scaling and conformal prediction sets fitted on held-out training rows
    (docs/calibration_and_sets.md); `predict` applies them."""

    # share of the training split held out from fitting (stratified, run-grouped; never test rows) to fit
    # one temperature and the prediction sets' threshold: writes calibration.json; 0: no holdout, no sets
    holdout: float = at_least(0.0, 0.0, below=1.0)
    coverage: float = at_least(0.9, 0.0, strict=True, below=1.0)  # the prediction sets' target coverage

    def __post_init__(self) -> None:
        check_fields(self)


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
    # median: against the finished trials' values at the same fold and epoch; the study's rule always applies
    pruner: str = one_of("median", "hyperband", "none")
    # how much of folds x epochs a trial gets (docs/hpo_schedules.md): asha: successive halving over fold-epochs
    # (hpo.pruner unused); race: after each fold a trial stops when worse than the best complete trial over the
    # same folds; full: every fold of every trial (the study's protocol)
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


@dataclass
class BaselinesConfig:
    """Classical models on the LLM's split (`faultllm baselines baselines.tune=true`)."""

    # xgb, lgbm, catboost need the `boosting` extra; a missing package skips its model with a notice
    models: list[str] = field(default_factory=lambda: list(BASELINE_MODELS))
    tune: bool = False  # true: Optuna per model over the same stratified folds as `faultllm hpo`
    n_trials: int = at_least(30, 1)  # with tune=true: Optuna trials per model
    folds: int = at_least(5, 2)  # with tune=true: cross-validation folds
    # models whose feature importances go into feature_importances.csv
    importances_for: list[str] = field(default_factory=lambda: ["rf", "gbm", "hgb", "xgb", "lgbm", "catboost"])
    permutation_repeats: int = at_least(10, 1)  # shuffles per feature in the permutation importances

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.models:
            raise ConfigError("models", "=[]: expected some of " + ", ".join(BASELINE_MODELS))
        _each("models", self.models, BASELINE_MODELS)
        _each("importances_for", self.importances_for, BASELINE_MODELS)


@dataclass
class ExplainConfig:
    """The free-text probe and the occlusion attribution (`faultllm explain run_dir=DIR`)."""

    rows: list[int] | None = None  # test-split row indices; null: a seeded sample
    n_probe_rows: int = at_least(5, 1)  # free-text probe rows (when rows is null)
    new_tokens: list[int] = field(default_factory=lambda: [5, 50])  # generation budgets (the study: 5 and 50)
    n_attribution_rows: int = at_least(40, 1)  # rows averaged in the attribution (x features scoring passes)
    reference: str = one_of("median", "midpoint")  # occlusion value: training median, or the scaled range's middle
    baselines_dir: str | None = None  # a `faultllm baselines` run on the same split, for the comparison
    top_k: int = at_least(5, 1)  # features compared with the baselines' top ones (top-k overlap)

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.new_tokens or min(self.new_tokens) < 1:
            raise ConfigError("new_tokens", f"={list(self.new_tokens)}: expected token budgets >= 1")
        if self.rows is not None and (not self.rows or min(self.rows) < 0):
            raise ConfigError("rows", f"={list(self.rows)}: expected test-split row indices >= 0")


@dataclass
class PredictConfig:
    model: str | None = one_of(*BASELINE_MODELS, default=None, nullable=True)  # baselines runs; null: most accurate
    input_scaled: bool = False  # the rows are already in the run's scaled space (its train/test.parquet)

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class SlurmConfig:
    """One cluster's SLURM values (configs/slurm/*.yaml), read by `hydra/launcher=slurm` and `hpo.launcher=slurm`."""

    partition: str | None = None  # null: the cluster's default partition
    time_min: int = at_least(240, 1)  # each job's time limit in minutes (SIGUSR2 90 s before it: checkpoint)
    gpus: int = at_least(1, 0)  # GPUs per job (0 on CPU partitions; `--gpus-per-node` needs a GPU GRES)
    cpus: int = at_least(8, 1)  # CPUs per job; its PyTorch and BLAS threads are capped to them
    mem_gb: int | None = at_least(64, 1)  # memory per job in GB; null: the partition's default
    array_parallelism: int = at_least(64, 1)  # jobs of one sweep or array running at once
    # times a sweep job stopped at its time limit is requeued (it resumes from its last epoch checkpoint);
    # a preempted one is always requeued
    requeues: int = at_least(3, 0)
    # extra sbatch options without the dashes: {account: lab, qos: long, constraint: a100}
    sbatch: dict[str, Any] = field(default_factory=dict)
    setup: list[str] = field(default_factory=list)  # shell lines run before each job: module load cuda, source venv
    # directories the compute nodes do not share: a run directory, study or cache there is refused before submitting
    node_local: list[str] = field(default_factory=lambda: ["/tmp", "/var/tmp", "/dev/shm", "/run"])

    def __post_init__(self) -> None:
        check_fields(self)


# ---------------------------------------------------------------- one per command


@dataclass
class RunSettings:
    """What every command that makes a split shares (configs/base.yaml)."""

    seed: int = 42  # draws the split, the model's initialisation and every sample
    progress: bool | None = None  # progress bars; null: when the output is a terminal
    threads: int = at_least(0, 0)  # every thread pool's budget (faultllm/runtime/threads.py); 0: the cores this process may use
    cache_dir: str = "${oc.env:FAULTLLM_CACHE,'~/.cache/faultllm'}"  # columnar copies of data files, built models
    data: DataConfig = field(default_factory=DataConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)  # the cluster, for hydra/launcher=slurm and hpo.launcher

    def __post_init__(self) -> None:
        check_fields(self)


def check_compact_scaling(prompt: PromptConfig, normalize: bool, scale_range: list[float]) -> None:
    """prompt.format=compact writes round(99 v) of values scaled to [0, 1]: raw or otherwise scaled values would
    not be on its 0-99 grid."""
    if prompt.format == "compact" and not (normalize and list(scale_range) == [0.0, 1.0]):
        raise ConfigError("prompt.format", "=compact needs data.normalize=true and data.scale_range=[0, 1] (values "
                          "on its 0-99 grid); use prompt.format=study, or drop data.normalize from hpo.space "
                          "('~hpo.space.normalize')")  # fmt: skip


def check_compact_space(job: HpoJob) -> None:
    """No trial of the search may write compact prompts of unscaled values (hpo.space may search either key)."""
    searched = {param.key: param.choices for param in job.hpo.space.values() if param.type == "categorical"}
    for style in searched.get("prompt.format", [job.prompt.format]):
        for normalize in searched.get("data.normalize", [job.data.normalize]):
            check_compact_scaling(replace(job.prompt, format=style), normalize, job.data.scale_range)


@dataclass
class PrepareJob(RunSettings):
    pass


@dataclass
class TrainJob(RunSettings):
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    calibrate: CalibrateConfig = field(default_factory=CalibrateConfig)
    results: ClassVar[bool] = True  # what it trains is a result: random weights only with model.allow_random

    def __post_init__(self) -> None:
        super().__post_init__()
        check_compact_scaling(self.prompt, self.data.normalize, self.data.scale_range)  # only jobs that write prompts
        if self.model.build is None and not self.model.path:
            raise ConfigError("model.path", " is not set; pass model.path=HUB_ID_OR_DIR (or model=tiny)")
        if self.results and self.model.init == "random" and not self.model.allow_random:
            raise ConfigError("model.init", "=random: random weights are never a result; add model.allow_random=true "
                                            "to run on them anyway (faultllm bench and plan take them as they are)")  # fmt: skip


@dataclass
class HpoJob(TrainJob):
    hpo: HpoConfig = field(default_factory=HpoConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.hpo.space:
            raise ConfigError("hpo.space", " is empty; name at least one hyperparameter to search (configs/hpo/)")
        if self.trainer.epochs < 1 and getattr(self, "job", "hpo") == "hpo":  # `plan job=train` may plan 0
            raise ConfigError("trainer.epochs", f"={self.trainer.epochs}: hpo tunes training; expected >= 1")
        if not self.trainer.eval_each_epoch and self.results:  # `plan job=hpo` may still price it
            raise ConfigError(
                "trainer.eval_each_epoch", "=false: hpo's objective and pruner read every fold's validation scores "
                "after each epoch; expected true"
            )
        for name, param in self.hpo.space.items():
            try:
                check_search_param(self, param)
            except ConfigError as err:
                raise err.under(f"hpo.space.{name}") from err
        if getattr(self, "job", "hpo") == "hpo":  # `plan job=train` searches nothing
            check_compact_space(self)


def check_search_param(job: object, param: SearchParam) -> None:
    """`param.key` names a real config key, and its range or choices are values that key accepts."""
    *path, name = param.key.split(".")
    node = job
    for part in path:
        node = getattr(node, part, None)
    if node is None or not is_dataclass(node) or name not in {f.name for f in fields(node)}:
        groups = [f.name for f in fields(job) if is_dataclass(getattr(job, f.name))]
        known = [f"{g}.{f.name}" for g in groups for f in fields(getattr(job, g))]
        raise ConfigError("key", f"={param.key!r}: not a config key{suggestion(param.key, known)}")
    bounds = [("choices", c) for c in param.choices] if param.type == "categorical" else [
        ("low", param.low), ("high", param.high)]  # fmt: skip
    for bound, value in bounds:
        try:
            replace(node, **{name: value})  # the key's own checks
        except ConfigError as err:
            raise ConfigError(bound, f"={value!r}: {param.key}{err.message}") from err


@dataclass
class PlanConfig:
    """What `faultllm plan` assumes (`faultllm plan job=hpo plan.gpu=a100 plan.mfu=0.4`); see faultllm/cost/planning.py."""

    gpu: str = one_of(*GPU_NAMES)  # the GPU planned for: peak dense bf16/fp16 FLOP/s, memory, bandwidth
    mfu: float = at_least(0.35, 0.0, strict=True, below=1.0)  # assumed model FLOPs utilization (training and scoring)
    throughput_from: str | None = None  # a `faultllm bench` run directory (or its bench.json): measured rates instead
    expected_pruned: float = at_least(0.28, 0.0, below=1.0)  # hpo.schedule=full, expected case: the share hpo.pruner
    #   saves (0.28: measured on CPU, docs/measurements.md, "HPO pruning"); the worst case prunes nothing
    tokenizer: str | None = None  # null: the model's own (model.path or the hub cache); tiny: the tiny model's
    #   Llama-2-like tokenizer as a stand-in (an estimate, flagged in plan.json); or a directory / hub id
    load_seconds: float | None = at_least(None, 0.0)  # one base-model load and quantization; null: 2 bytes/param at 1 GB/s
    study_pad_to: int | None = at_least(None, 1)  # the study's padded sequence length; null: the model's context

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class BenchConfig:
    """`faultllm bench`: how much is timed (after warm-up) on this machine."""

    warmup_steps: int = at_least(3, 1)  # optimizer steps run before the clock starts
    steps: int = at_least(20, 1)  # optimizer steps timed
    scoring_batches: int = at_least(4, 1)  # restricted-scoring batches of eval.batch_size test rows, timed
    generate_rows: int = at_least(4, 1)  # rows decoded at batch 1 (the study's evaluation), timed
    peak_tflops: float | None = at_least(None, 0.0, strict=True)  # the GPU's dense bf16 peak; null: by its exact name

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class PlanJob(HpoJob):
    """`faultllm plan job=train|hpo` takes that command's keys (hpo.* only matter for job=hpo)."""

    job: str = one_of("train", "hpo")  # whose protocol is planned
    plan: PlanConfig = field(default_factory=PlanConfig)
    results: ClassVar[bool] = False  # loads no weights at all

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fields(self)


@dataclass
class BenchJob(TrainJob):
    """`faultllm bench` takes train's keys: a few timed steps of that training run."""

    bench: BenchConfig = field(default_factory=BenchConfig)
    results: ClassVar[bool] = False  # measures speed and memory only: model.init=random is what it is for


@dataclass
class BaselinesJob(RunSettings):
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    calibrate: CalibrateConfig = field(default_factory=CalibrateConfig)


@dataclass
class EvaluateJob:
    run_dir: str = MISSING  # a `faultllm train` run directory
    progress: bool | None = None  # progress bars; null: when the output is a terminal
    threads: int = at_least(0, 0)  # 0: the cores this process may use (RunSettings.threads)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class ExplainJob:
    run_dir: str = MISSING  # a `faultllm train` run directory
    seed: int = 42  # seeds sampling and generation
    progress: bool | None = None  # progress bars; null: when the output is a terminal
    threads: int = at_least(0, 0)  # 0: the cores this process may use (RunSettings.threads)
    eval: EvalConfig = field(default_factory=EvalConfig)
    explain: ExplainConfig = field(default_factory=ExplainConfig)

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class PredictJob:
    run_dir: str = MISSING  # a `faultllm train` or `faultllm baselines` run directory
    input: str = MISSING  # the rows to diagnose: a CSV/Parquet table with the run's feature columns
    seed: int = 42  # seeds sampling and generation
    progress: bool | None = None  # progress bars; null: when the output is a terminal
    threads: int = at_least(0, 0)  # 0: the cores this process may use (RunSettings.threads)
    eval: EvalConfig = field(default_factory=EvalConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class ReportJob:
    run_dirs: list[str] = MISSING  # the run directories to compare (the command line's positional arguments)
    progress: bool | None = None  # progress bars; null: when the output is a terminal
    threads: int = at_least(0, 0)  # 0: the cores this process may use (RunSettings.threads)

    def __post_init__(self) -> None:
        check_fields(self)


JOBS: dict[str, type] = {
    "prepare": PrepareJob, "train": TrainJob, "hpo": HpoJob, "baselines": BaselinesJob,
    "evaluate": EvaluateJob, "explain": ExplainJob, "predict": PredictJob, "report": ReportJob,
    "plan": PlanJob, "bench": BenchJob,
}  # fmt: skip


# ---------------------------------------------------------------- what `faultllm COMMAND --help` lists


@dataclass(frozen=True)
class KeyHelp:
    """One line of `faultllm COMMAND --help`: a key (or, with `group`, a heading for a group of keys)."""

    key: str  # dotted, e.g. lora.r
    kind: str  # its type with its allowed values or range, e.g. "int >= 1"; "" for a group
    description: str  # the comments on the field in this file; a group's: its dataclass's docstring
    group: bool = False


def key_help(job: type, prefix: str = "") -> list[KeyHelp]:
    """Every key of a command's dataclass in declaration order, each group heading the keys under it."""
    hints, comments, rows = typing.get_type_hints(job), _field_comments(), []
    for spec in fields(job):
        hint, key = hints[spec.name], f"{prefix}{spec.name}"
        if is_dataclass(hint):
            rows += [KeyHelp(f"{key}.*", "", _first_line(hint.__doc__), group=True), *key_help(hint, f"{key}.")]
        else:
            owner = next(c for c in job.__mro__ if spec.name in getattr(c, "__annotations__", {}))  # RunSettings' keys
            rows.append(KeyHelp(key, _kind(spec, hint), comments.get((owner.__name__, spec.name), "")))
    return rows


def _first_line(doc: str | None) -> str:
    return " ".join((doc or "").split("\n\n")[0].split())


def _kind(spec: Any, hint: Any) -> str:
    """`one of a, b`, `int >= 1`, `str or null`: what a key accepts, as its checks see it."""
    meta = spec.metadata
    if "choices" in meta:
        return "one of " + ", ".join(map(str, meta["choices"])) + (" or null" if meta["null"] else "")
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    nullable = type(None) in args
    names = " | ".join(_type_name(a) for a in args if a is not type(None))
    if "low" in meta:
        names += f" {'>' if meta['strict'] else '>='} {meta['low']:g}" + (
            f", < {meta['below']:g}" if meta["below"] is not None else ""
        )
    return names.replace("Any", "any") + (" or null" if nullable else "")


def _type_name(hint: Any) -> str:
    return (str(hint) if typing.get_args(hint) else getattr(hint, "__name__", str(hint))).replace("typing.", "")


@functools.cache
def _field_comments() -> dict[tuple[str, str], str]:
    """(class, field) -> the comments that describe a field in this file: the comment lines just above it,
    those on its own lines and the indented ones (`#   ...`) that continue them."""
    source = Path(__file__).read_text()
    comments = {
        token.start[0]: token.string
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT and "fmt:" not in token.string
    }
    lines, described = source.splitlines(), {}
    for node in ast.parse(source).body:
        for stmt in node.body if isinstance(node, ast.ClassDef) else ():
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                above = _comment_lines(stmt.lineno - 1, -1, comments, lines, continuation=False)
                after = _comment_lines(stmt.end_lineno + 1, 1, comments, lines, continuation=True)
                own = [comments[row] for row in range(stmt.lineno, stmt.end_lineno + 1) if row in comments]
                text = " ".join(c.lstrip("#").strip() for c in [*reversed(above), *own, *after])
                described[(node.name, stmt.target.id)] = text
    return described


def _comment_lines(row: int, step: int, comments: dict, lines: list[str], *, continuation: bool) -> list[str]:
    """The comment-only lines from `row` on (step -1: upwards), that are (or are not) `#   ` continuations."""
    found = []
    while row in comments and lines[row - 1].lstrip().startswith("#"):
        if comments[row].startswith("#   ") != continuation:
            break
        found.append(comments[row])
        row += step
    return found
