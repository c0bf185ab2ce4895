"""The config groups, one dataclass each (data, prompt, model, lora, trainer, eval, calibrate, baselines,
explain, predict, slurm, plan, bench): each key's type, default, allowed values or range, and the rules
between keys of one group. The comment on a field is its meaning in `faultllm COMMAND --help`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from faultllm.config.choices import (
    BASELINE_MODELS,
    EVAL_MODES,
    FEATURE_ORDERS,
    GPU_NAMES,
    LOADERS,
    LR_SCHEDULERS,
    MISSING_STYLES,
    PROMPT_FORMATS,
    SHOT_SELECTIONS,
    TEMPLATES,
    TRACKERS,
    trackers,
)
from faultllm.config.fields import ConfigError, at_least, check_each, check_fields, one_of, suggestion
from faultllm.runtime.distributed import DDP_TIMEOUT


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
    layers: int | None = at_least(
        None, 1
    )  # build=tiny: transformer blocks; init=random: keep the first N (the real shapes on a CPU)
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
        raise ConfigError(
            "optimizer", f"={name!r}: expected auto or a transformers optim name{suggestion(name, names)}"
        )


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
            raise ConfigError(
                "target_modules", f"={modules!r}: expected all-linear or module names like [q_proj,v_proj]"
            )


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
        check_each("report_to", trackers(self.report_to), TRACKERS)


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
        check_each("models", self.models, BASELINE_MODELS)
        check_each("importances_for", self.importances_for, BASELINE_MODELS)


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


@dataclass
class PlanConfig:
    """What `faultllm plan` assumes (`faultllm plan job=hpo plan.gpu=a100 plan.mfu=0.4`); see faultllm/cost/plan.py."""

    gpu: str = one_of(*GPU_NAMES)  # the GPU planned for: peak dense bf16/fp16 FLOP/s, memory, bandwidth
    mfu: float = at_least(0.35, 0.0, strict=True, below=1.0)  # assumed model FLOPs utilization (training and scoring)
    throughput_from: str | None = None  # a `faultllm bench` run directory (or its bench.json): measured rates instead
    expected_pruned: float = at_least(0.28, 0.0, below=1.0)  # schedule=full, pruner=median|hyperband: the share
    #   it saves (0.28: measured on CPU, docs/measurements.md, "HPO pruning"); the worst case prunes nothing
    tokenizer: str | None = None  # null: the model's own (model.path or the hub cache); tiny: the tiny model's
    #   Llama-2-like tokenizer as a stand-in (an estimate, flagged in plan.json); or a directory / hub id
    load_seconds: float | None = at_least(
        None, 0.0
    )  # one base-model load and quantization; null: 2 bytes/param at 1 GB/s
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
