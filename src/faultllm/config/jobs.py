"""One dataclass per command, each composing the config groups it reads, and the rules between its groups;
`JOBS` maps a config name (configs/<name>.yaml) to its dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import ClassVar

from faultllm.config.fields import MISSING, ConfigError, at_least, check_fields, one_of, suggestion
from faultllm.config.groups import (
    BaselinesConfig,
    BenchConfig,
    CalibrateConfig,
    DataConfig,
    EvalConfig,
    ExplainConfig,
    LoraConfig,
    ModelConfig,
    PlanConfig,
    PredictConfig,
    PromptConfig,
    SlurmConfig,
    TrainerConfig,
)
from faultllm.config.hpo import HpoConfig, SearchParam


@dataclass
class RunSettings:
    """What every command that makes a split shares (configs/base.yaml)."""

    seed: int = 42  # draws the split, the model's initialisation and every sample
    progress: bool | None = None  # progress bars; null: when the output is a terminal
    threads: int = at_least(
        0, 0
    )  # every thread pool's budget (faultllm/runtime/threads.py); 0: the cores this process may use
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
                "trainer.eval_each_epoch",
                "=false: hpo's objective and pruner read every fold's validation scores "
                "after each epoch; expected true",
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
