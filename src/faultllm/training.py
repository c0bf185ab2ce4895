"""QLoRA SFT with TRL on prompt/completion rows, with restricted-label metrics after every epoch.

`fit` is the one training loop: the `train` job calls it once, HPO once per fold.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from transformers import TrainerCallback

from faultllm.distributed import is_main_process
from faultllm.errors import FaultLLMError
from faultllm.evaluation import AnswerSpace, answer_space, evaluate_restricted
from faultllm.files import write_text
from faultllm.modeling import (
    HardwarePlan,
    ModelDims,
    ModelSpec,
    build_for_training,
    keep_adapters_in_fp32,
    needs_checkpointing,
    release_adapters,
)
from faultllm.prompts import Prompts

log = logging.getLogger(__name__)


class NonFiniteLoss(FaultLLMError):
    """The loss or gradient became NaN/inf: the run cannot recover (HPO prunes the trial)."""


@dataclass(frozen=True)
class TrainOptions:
    """The trainer config slice plus the run-wide values training needs."""

    epochs: int
    batch_size: int
    grad_accum: int
    learning_rate: float
    lr_scheduler: str
    weight_decay: float
    max_grad_norm: float
    eval_each_epoch: bool
    resume: bool
    seed: int
    eval_batch_size: int
    progress: bool
    report_to: tuple[str, ...] = ()  # experiment trackers: tensorboard, mlflow, wandb, ...

    @classmethod
    def from_config(cls, trainer_cfg, seed: int, eval_batch_size: int, progress: bool) -> TrainOptions:
        keys = ("epochs", "batch_size", "grad_accum", "lr_scheduler", "weight_decay", "max_grad_norm")
        return cls(
            **{key: trainer_cfg[key] for key in keys},
            learning_rate=float(trainer_cfg.learning_rate),
            eval_each_epoch=bool(trainer_cfg.eval_each_epoch),
            resume=bool(trainer_cfg.resume),
            seed=int(seed),
            eval_batch_size=int(eval_batch_size),
            progress=bool(progress),
            report_to=trackers(trainer_cfg.get("report_to", "none")),
        )


TRACKERS = ("tensorboard", "mlflow", "wandb", "trackio", "comet_ml", "clearml", "dvclive", "neptune", "swanlab")


def trackers(value) -> tuple[str, ...]:
    """`trainer.report_to`: none, one tracker, or a list of them."""
    names = [value] if isinstance(value, str) else list(value or [])
    names = [str(name) for name in names if str(name) != "none"]
    unknown = [name for name in names if name not in TRACKERS]
    if unknown:
        raise FaultLLMError(
            f"trainer.report_to: unknown tracker {unknown[0]!r}; expected none or {', '.join(TRACKERS)}"
        )
    return tuple(names)


@dataclass
class FitResult:
    model: object  # the trained peft model; None with spec.reuse_base (the adapters were taken out again)
    tokenizer: object
    answer_space: AnswerSpace  # the labels under this tokenizer
    plan: HardwarePlan  # as run: gradient checkpointing decided
    history: list[dict] = field(default_factory=list)  # one row per epoch
    seconds: float = 0.0


def fit(
    spec: ModelSpec,
    train: Prompts,
    eval_sets: dict[str, Prompts],
    options: TrainOptions,
    out_dir: Path,
    on_epoch: Callable[[dict], None] | None = None,
    checkpoints: bool = True,
) -> FitResult:
    """Train LoRA adapters on `train`; after each epoch score every eval set (restricted labels).

    `on_epoch(row)` sees each epoch's metrics (HPO reports them to its pruner and may raise).
    Checkpoints go to out_dir/checkpoints; an existing one is resumed when options.resume is set.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    model, tokenizer = build_for_training(spec, options.seed)
    space = answer_space(tokenizer, train)
    plan = plan_for_run(spec.plan, model, tokenizer, train, options)
    resume = checkpoints and options.resume and any((out_dir / "checkpoints").glob("checkpoint-*"))
    history = EpochHistory(out_dir / "epochs.jsonl", keep=resume)
    callbacks = [_EpochCallback(history, eval_sets, space, tokenizer, options, on_epoch)]
    trainer = sft_trainer(model, tokenizer, train.sft_rows(), options, plan, out_dir, callbacks, checkpoints)
    callbacks[0].trainer = trainer
    started = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=True if resume else None)
    finally:
        if spec.reuse_base:
            release_adapters(model)
    tokenizer.padding_side = "left"
    trained = None if spec.reuse_base else trainer.model
    return FitResult(trained, tokenizer, space, plan, history.rows, time.perf_counter() - started)


def plan_for_run(plan: HardwarePlan, model, tokenizer, train: Prompts, options: TrainOptions) -> HardwarePlan:
    """The plan with gradient checkpointing decided: as configured, or from the estimated memory of a
    batch of the longest rows (auto on CUDA)."""
    if plan.gradient_checkpointing is not None:
        return plan
    longest = max(train.texts, key=len)
    tokens = options.batch_size * (len(tokenizer(longest)["input_ids"]) + 8)  # + the answer and EOS
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    decided = needs_checkpointing(plan, ModelDims.of(model), n_trainable, tokens)
    return replace(plan, gradient_checkpointing=decided)


class EpochHistory:
    """One row of metrics per epoch, in epochs.jsonl as it happens (a resumed run keeps its rows); the file is
    rewritten whole and atomically each epoch, so a killed run never leaves half a line."""

    def __init__(self, path: Path, keep: bool) -> None:
        self.path, self.writes = path, is_main_process()  # under torchrun the main rank writes the file
        if not keep and self.writes:
            path.unlink(missing_ok=True)
        self.rows = [json.loads(line) for line in path.read_text().splitlines()] if keep and path.exists() else []

    def append(self, row: dict) -> None:
        self.rows.append(row)
        if self.writes:
            write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.rows))


class _EpochCallback(TrainerCallback):
    """Stops on a non-finite loss; after each epoch scores the eval sets and records the row."""

    def __init__(self, history: EpochHistory, eval_sets, space, tokenizer, options: TrainOptions, on_epoch) -> None:
        self.history, self.eval_sets, self.space, self.tokenizer = history, eval_sets, space, tokenizer
        self.options, self.on_epoch = options, on_epoch
        self.started = time.perf_counter()
        self.trainer = None  # set once the trainer exists (`fit`)

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        bad = {k: v for k, v in (logs or {}).items() if k in ("loss", "grad_norm") and not math.isfinite(v)}
        if bad:
            raise NonFiniteLoss(
                f"training {' and '.join(bad)} became nan at step {state.global_step} (epoch {state.epoch:.2f}); "
                f"lower trainer.learning_rate (now {self.options.learning_rate})"
            )

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        row: dict = {"epoch": round(state.epoch), "step": state.global_step}
        if self.options.eval_each_epoch:
            for name, prompts in self.eval_sets.items():
                metrics, _ = evaluate_restricted(
                    model, self.tokenizer, prompts, self.space, self.options.eval_batch_size
                )
                row |= {f"{name}_{key}": metrics[key] for key in ("loss", "accuracy", "macro_f1")}
        row["seconds"] = round(time.perf_counter() - self.started, 2)
        self.history.append(row)
        if self.trainer is not None and len(row) > 3:  # through the Trainer: every tracker and the console see it
            self.trainer.log({f"eval_{key}": value for key, value in row.items() if key not in ("epoch", "step")})
        if not self.options.progress:  # no progress bars: one line per epoch instead
            shown = ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k.endswith(("_loss", "_accuracy")))
            log.info(f"epoch {row['epoch']}/{self.options.epochs}: {shown} ({row['seconds']:.1f} s)")
        if self.on_epoch is not None:
            self.on_epoch(row)


def sft_trainer(
    model, tokenizer, rows: list[dict], options: TrainOptions, plan: HardwarePlan, out_dir: Path, callbacks=(),
    checkpoints: bool = True,
):  # fmt: skip
    """TRL's SFTTrainer on prompt/completion rows with the options' optimizer setup."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTTrainer

    trainer = SFTTrainer(
        model=model,
        args=sft_config(options, plan, len(rows), out_dir, checkpoints),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[*callbacks, *tensorboard_callback(options, out_dir)],
    )
    if not options.progress:  # without progress bars transformers prints every log dict instead
        trainer.remove_callback(PrinterCallback)
    keep_adapters_in_fp32(trainer.model)  # the optimizer is created at train(): it sees fp32 weights
    return trainer


def tensorboard_callback(options: TrainOptions, out_dir: Path) -> list:
    """TensorBoard events in the run directory (out_dir/tensorboard), not under the checkpoints."""
    if "tensorboard" not in options.report_to or not is_main_process():
        return []
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    return [TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(out_dir / "tensorboard")))]


def sft_config(options: TrainOptions, plan: HardwarePlan, n_rows: int, out_dir: Path, checkpoints: bool):
    from trl import SFTConfig

    steps_per_epoch = max(1, n_rows // (options.batch_size * options.grad_accum))
    return SFTConfig(
        output_dir=str(out_dir / "checkpoints"),
        num_train_epochs=options.epochs,
        per_device_train_batch_size=options.batch_size,
        gradient_accumulation_steps=options.grad_accum,
        learning_rate=options.learning_rate,
        lr_scheduler_type=options.lr_scheduler,
        warmup_steps=0,
        weight_decay=options.weight_decay,
        max_grad_norm=options.max_grad_norm,
        optim=plan.optimizer,
        bf16=plan.dtype == "bfloat16",
        activation_checkpointing=bool(plan.gradient_checkpointing),
        activation_checkpointing_kwargs={"use_reentrant": False} if plan.gradient_checkpointing else None,
        fp16=plan.dtype == "float16",
        completion_only_loss=True,  # loss on ` Y = k</s>` only: the study's whole-sequence loss rewarded copying numbers
        max_length=None,  # dynamic padding to the longest row of each batch; nothing is truncated
        logging_steps=max(1, steps_per_epoch // 4),
        logging_nan_inf_filter=False,  # a NaN loss must reach the callback that stops the run
        save_strategy="epoch" if checkpoints else "no",
        save_total_limit=1,
        report_to=[name for name in options.report_to if name != "tensorboard"] or "none",  # tensorboard: ours
        seed=options.seed,
        data_seed=options.seed,
        use_cpu=plan.device == "cpu",
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,  # under torchrun: every LoRA weight takes part in every step
        disable_tqdm=not options.progress,
    )
