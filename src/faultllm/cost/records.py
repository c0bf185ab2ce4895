"""What `faultllm plan` writes as plan.json and `faultllm bench` as bench.json: frozen `VersionedFile` records.

Writers build a record and `write` it; readers (`jobs/plan.py`, `jobs/bench.py`, plan's measured rates) `read`
it back, so every field a consumer may rely on is named here. A file of another version is refused in one
line: its numbers may mean something else. Fields: docs/cost.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from faultllm.run.records import Record, VersionedFile

# ---------------------------------------------------------------- bench.json


@dataclass(frozen=True)
class BenchRecord(VersionedFile):
    """What `faultllm bench` measured: training, restricted scoring and batch-1 decoding rates, memory, parameters."""

    VERSION: ClassVar[int] = 1
    FILE: ClassVar[str] = "bench.json"
    RERUN: ClassVar[str] = "`faultllm bench ...`"

    device: str  # the CUDA device name, or "cpu"
    model: str  # model.path, or "tiny"
    init: str  # model.init: pretrained or random weights
    hardware: dict[str, Any]  # the HardwarePlan as run (gradient checkpointing decided)
    n_base: int  # frozen base parameters (4-bit counted unpacked, untied input embedding left out)
    n_lora: int
    batch_size: int
    grad_accum: int
    warmup_steps: int
    steps: int  # optimizer steps timed
    train_tokens: int  # real (non-pad) tokens of the timed steps
    tokens_per_second: float
    step_seconds: float
    load_seconds: float  # loading (and quantizing) the base model plus adding the adapters
    peak_memory_gib: float  # torch reserved on CUDA, the process's resident peak on a CPU
    memory_gib: dict[str, float]  # CUDA: allocated, reserved, device; CPU: process
    model_flops_per_token: float
    hardware_flops_per_token: float
    scoring_flops_per_token: float
    peak_tflops: float | None  # None: no datasheet peak for this device (and no bench.peak_tflops)
    mfu: float | None
    hfu: float | None
    data_note: str | None  # the stand-in data used when data.path is not set
    scoring_tokens_per_second: float
    scoring_rows_per_second: float
    decode_step_seconds: float  # per generated token at batch 1


# ---------------------------------------------------------------- plan.json


@dataclass(frozen=True)
class Bounds(Record):
    """One amount in HPO's worst case and expected case (equal for train)."""

    worst: float
    expected: float


@dataclass(frozen=True)
class ScoringBounds(Bounds):
    parts: dict[str, float] = field(default_factory=dict)  # the expected scored tokens by where they are spent


@dataclass(frozen=True)
class TokenStats(Record):
    min: int
    mean: float
    max: int


@dataclass(frozen=True)
class PlannedModel(Record):
    path: str  # model.path, or "tiny"
    config_json: str  # the directory config.json was read from
    tokenizer: str  # where the tokenizer came from
    tokenizer_stand_in: bool  # plan.tokenizer: counted with another tokenizer than the model's own
    parameters: int
    n_base: int
    n_lora: int  # at the job's own lora.r
    context: int


@dataclass(frozen=True)
class PlannedData(Record):
    display_name: str
    path: str | None
    stand_in: bool  # rows drawn from stand-in data (no data.path)


@dataclass(frozen=True)
class FoldRows(Record):
    train: int
    val: int


@dataclass(frozen=True)
class Rows(Record):
    train: int
    test: int
    folds: list[FoldRows]  # HPO's folds; [] for train


@dataclass(frozen=True)
class MemoryEstimate(Record):
    """`llm.memory.step_memory` for a batch of the longest training rows, and whether checkpointing would be on."""

    estimate_gib: float
    without_checkpointing_gib: float
    with_checkpointing_gib: float
    terms_gib: dict[str, float]  # every term of the estimate (docs/memory_model.md)
    lora_gib: float  # the LoRA terms together
    gpu_memory_gib: float
    gradient_checkpointing: bool
    fits: bool
    quantization: str
    tokens_per_step: int
    head_tokens_per_step: int


@dataclass(frozen=True)
class Throughput(Record):
    source: str  # the GPU's peak x plan.mfu, or the bench.json measured
    gpu: str  # plan.gpu
    train_tflops_per_s: float
    scoring_tflops_per_s: float
    decode_step_seconds: float
    load_seconds: float


@dataclass(frozen=True)
class Hours(Record):
    workers: int
    gpu_hours: Bounds
    wall_hours: Bounds


@dataclass(frozen=True)
class WorkTotals(Record):
    train_tokens: float
    scoring_tokens: float
    generated_tokens: float
    model_loads: float
    flops: float


@dataclass(frozen=True)
class StudyWork(WorkTotals):
    """The same protocol run the study's way: padded, decoded at batch 1, unpruned, a load per fold."""

    gpu_hours: float = 0.0
    pad_to: int = 0
    new_tokens: int = 0


@dataclass(frozen=True)
class PlannedCase(Record):
    """An HPO trial configuration the plan maximizes (worst) or averages (expected) over."""

    case: str  # "worst" | "expected"
    values: dict[str, Any]  # config key -> value
    n_lora: int
    gradient_checkpointing: bool
    prompt_tokens_mean: float


@dataclass(frozen=True)
class PlanRecord(VersionedFile):
    """What a train or hpo run will cost: rows, tokens, FLOPs, memory and hours, faultllm's way and the study's."""

    VERSION: ClassVar[int] = 1
    FILE: ClassVar[str] = "plan.json"
    RERUN: ClassVar[str] = "`faultllm plan ...`"

    job: str  # train | hpo
    model: PlannedModel
    data: PlannedData
    rows: Rows
    prompt_format: str  # the prompt_tokens are this format's (a study variable)
    prompt_tokens: TokenStats  # per row, training and test rows of the job's own config
    completion_tokens: TokenStats
    train_tokens: Bounds
    scoring_tokens: ScoringBounds
    generated_tokens: Bounds
    model_loads: Bounds
    flops: Bounds
    memory_gib: MemoryEstimate  # of the costliest trial configuration (train: the job's own)
    throughput: Throughput
    hours: list[Hours]  # for 1 worker and for hpo.workers
    study: StudyWork
    study_ratio: float  # the study's GPU-hours over faultllm's expected ones
    cases: list[PlannedCase]
    notes: list[str]

    @property
    def gpu_hours(self) -> Bounds:
        """GPU-hours with one worker."""
        return self.hours[0].gpu_hours

    def to_json(self) -> dict[str, Any]:
        return super().to_json() | {"gpu_hours": self.gpu_hours.to_json()}  # a shortcut for readers of the file
