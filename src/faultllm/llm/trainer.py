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

from transformers import ProgressCallback, TrainerCallback

from faultllm.config.choices import EPOCH_METRICS, trackers
from faultllm.config.groups import TrainerConfig
from faultllm.llm.build import (
    ModelSpec,
    attention_of,
    build_for_training,
    checkpointing_off,
    keep_adapters_in_fp32,
    load_untrained,
    release_adapters,
)
from faultllm.llm.evaluation import evaluate_restricted
from faultllm.llm.hardware import HardwarePlan
from faultllm.llm.memory import Step, longest_row, needs_checkpointing
from faultllm.llm.scoring import AnswerSpace, answer_space
from faultllm.llm.shape import ModelShape
from faultllm.prompts.serialize import Prompts
from faultllm.runtime.distributed import (
    check_shared_dir,
    is_main_process,
    main_decides,
    start_process_group,
    world_size,
)
from faultllm.runtime.errors import FaultLLMError
from faultllm.runtime.files import write_text
from faultllm.runtime.progress import Progress

log = logging.getLogger(__name__)


class NonFiniteLoss(FaultLLMError):
    """The loss or gradient became NaN/inf: the run cannot recover (HPO prunes the trial)."""


TRAINING = "training"  # what the progress lines call a run's training (HPO names the trial and fold)


@dataclass
class FitResult:
    model: object  # the trained peft model; None with spec.base_cache (the adapters were taken out again)
    tokenizer: object
    answer_space: AnswerSpace  # the labels under this tokenizer
    plan: HardwarePlan  # as run: gradient checkpointing decided
    history: list[dict] = field(default_factory=list)  # one row per epoch
    seconds: float = 0.0
    trained: bool = True  # False: the base model as loaded (trainer.epochs=0), no adapters to save


def untrained(spec: ModelSpec, train: Prompts) -> FitResult:
    """The base model as it is, for trainer.epochs=0 (zero- and few-shot prompting): nothing is trained."""
    model, tokenizer = load_untrained(spec)
    plan = replace(spec.plan, attn_implementation=attention_of(model))  # as run: after any fallback
    return FitResult(model, tokenizer, answer_space(tokenizer, train), plan, trained=False)


def fit(
    spec: ModelSpec,
    train: Prompts,
    eval_sets: dict[str, Prompts],
    trainer_cfg: TrainerConfig,
    out_dir: Path,
    *,
    seed: int,
    eval_batch_size: int,
    progress: bool,
    title: str = TRAINING,
    on_epoch: Callable[[dict], None] | None = None,
    checkpoints: bool = True,
    last_epoch_only: frozenset[str] = frozenset(),
) -> FitResult:
    """Train LoRA adapters on `train` as `trainer_cfg` says; after each epoch score every eval set (restricted
    labels, `eval_batch_size` rows a batch), those named in `last_epoch_only` after the last epoch only.

    `on_epoch(row)` sees each epoch's metrics (HPO reports them to its pruner and may raise).
    Checkpoints go to out_dir/checkpoints; an existing one is resumed when trainer.resume is set.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    resume = decide_resume(out_dir, trainer_cfg, checkpoints)
    log.info(f"{title}: {spec.loading()}")
    model, tokenizer = build_for_training(spec, seed)
    space = answer_space(tokenizer, train)
    rows = train.sft_rows()
    plan = plan_for_run(spec.plan, model, tokenizer, rows, trainer_cfg.batch_size)
    if not plan.gradient_checkpointing:
        checkpointing_off(model)  # a reused base keeps what an earlier fold's Trainer turned on
    through = checkpoint_epoch(out_dir / "checkpoints") if resume else 0
    history = EpochHistory(out_dir / "epochs.jsonl", through=through)
    scorer = _EpochCallback(
        history, eval_sets, space, tokenizer, trainer_cfg, eval_batch_size, title, on_epoch, last_epoch_only
    )
    callbacks = [scorer, _StepLines(title)]
    log.info(f"{title}: tokenizing {len(rows)} rows")
    trainer = sft_trainer(
        model, tokenizer, rows, trainer_cfg, plan, out_dir, callbacks, checkpoints, seed=seed, progress=progress
    )
    scorer.trainer = trainer
    started = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=True if resume else None)
    finally:
        if spec.base_cache is not None:
            release_adapters(model)
    trained = None if spec.base_cache is not None else trainer.model
    return FitResult(trained, tokenizer, space, plan, history.rows, time.perf_counter() - started)


def decide_resume(out_dir: Path, trainer_cfg: TrainerConfig, checkpoints: bool) -> bool:
    """Resume from out_dir/checkpoints? Under torchrun the main rank decides for all (each node would look at
    its own disk), once every rank is known to see the run directory the checkpoints live in."""
    if not checkpoints:
        return False
    if world_size() > 1:
        start_process_group(trainer_cfg.ddp_timeout)
        check_shared_dir(out_dir)
    return trainer_cfg.resume and main_decides(lambda: any((out_dir / "checkpoints").glob("checkpoint-*")))


def plan_for_run(plan: HardwarePlan, model, tokenizer, rows: list[dict], batch_size: int) -> HardwarePlan:
    """The plan as run: the attention the model loaded with, and gradient checkpointing decided: as
    configured, or (auto on CUDA) by `memory.needs_checkpointing` for a batch of `batch_size` of the longest
    prompt/completion rows, as `faultllm plan` decides it."""
    plan = replace(plan, attn_implementation=attention_of(model))
    if plan.gradient_checkpointing is not None:
        return plan
    step = Step.of(plan, batch_size, *longest_row(tokenizer, rows))
    return replace(plan, gradient_checkpointing=needs_checkpointing(plan, ModelShape.of(model), step))


def checkpoint_epoch(checkpoints: Path) -> int:
    """The epochs done in the checkpoint a resumed Trainer starts from (the last one; saved at epoch ends)."""
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(str(checkpoints))
    return 0 if last is None else round(json.loads((Path(last) / "trainer_state.json").read_text())["epoch"])


class EpochHistory:
    """One row of metrics per epoch, appended to epochs.jsonl as it happens.

    A resumed run keeps the rows of the epochs its checkpoint holds (`through`; 0 for a fresh run) and
    drops later ones: a run stopped after an epoch's row but before its checkpoint redoes that epoch.
    """

    def __init__(self, path: Path, through: int) -> None:
        self.path, self.writes = path, is_main_process()  # under torchrun the main rank writes the file
        rows = [json.loads(line) for line in path.read_text().splitlines()] if through and path.exists() else []
        self.rows = [row for row in rows if row["epoch"] <= through]
        if self.writes and not through:
            path.unlink(missing_ok=True)
        elif self.writes and len(self.rows) < len(rows):  # replaced at once: other ranks may be reading the file
            self._save()

    def append(self, row: dict) -> None:
        self.rows.append(row)
        if self.writes:
            self._save()

    def _save(self) -> None:
        write_text(self.path, "".join(json.dumps(row) + "\n" for row in self.rows))


class _EpochCallback(TrainerCallback):
    """Stops on a non-finite loss; after each epoch scores the eval sets (`last_epoch_only`: those scored after the
    last epoch only) and records the row."""

    def __init__(
        self, history: EpochHistory, eval_sets, space, tokenizer, trainer_cfg: TrainerConfig, eval_batch_size: int,
        title: str, on_epoch, last_epoch_only: frozenset[str] = frozenset(),
    ) -> None:  # fmt: skip
        self.history, self.eval_sets, self.space, self.tokenizer = history, eval_sets, space, tokenizer
        self.trainer_cfg, self.eval_batch_size, self.title, self.on_epoch = (
            trainer_cfg,
            eval_batch_size,
            title,
            on_epoch,
        )
        self.last_epoch_only = last_epoch_only
        self.started = time.perf_counter()
        self.trainer = None  # set once the trainer exists (`fit`)

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        # fp16's GradScaler skips a step whose gradients overflowed (and logs grad_norm inf): only the loss counts
        judged = ("loss",) if args.fp16 else ("loss", "grad_norm")
        bad = {k: v for k, v in (logs or {}).items() if k in judged and not math.isfinite(v)}
        if bad:
            raise NonFiniteLoss(
                f"training {' and '.join(bad)} became nan at step {state.global_step} (epoch {state.epoch:.2f}); "
                f"lower trainer.learning_rate (now {self.trainer_cfg.learning_rate})"
            )

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        row: dict = {"epoch": round(state.epoch), "step": state.global_step}
        if self.trainer_cfg.eval_each_epoch:
            last = row["epoch"] == self.trainer_cfg.epochs
            for name, prompts in self.eval_sets.items():
                if name in self.last_epoch_only and not last:
                    continue
                metrics, _ = evaluate_restricted(model, self.tokenizer, prompts, self.space, self.eval_batch_size)
                row |= {f"{name}_{key}": metrics[key] for key in EPOCH_METRICS}
        row["seconds"] = round(time.perf_counter() - self.started, 2)
        self.history.append(row)
        if self.trainer is not None and len(row) > 3:  # through the Trainer: every tracker and the console see it
            self.trainer.log({f"eval_{key}": value for key, value in row.items() if key not in ("epoch", "step")})
        shown = ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k.endswith(("_loss", "_accuracy")))
        fold = "" if self.title == TRAINING else f"{self.title}: "  # HPO's trial and fold
        log.info(f"{fold}epoch {row['epoch']}/{self.trainer_cfg.epochs}: {shown} ({row['seconds']:.1f} s)")
        if self.on_epoch is not None:
            self.on_epoch(row)


def sft_trainer(
    model, tokenizer, rows: list[dict], trainer_cfg: TrainerConfig, plan: HardwarePlan, out_dir: Path, callbacks=(),
    checkpoints: bool = True, *, seed: int, progress: bool,
):  # fmt: skip
    """TRL's SFTTrainer on prompt/completion rows with the trainer config's optimizer setup."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTTrainer

    args = sft_config(trainer_cfg, plan, len(rows), out_dir, checkpoints, seed=seed, progress=progress)
    check_one_gpu(args)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[*callbacks, *tensorboard_callback(trackers(trainer_cfg.report_to), out_dir)],
    )
    # transformers prints every log dict ({'loss': '0.6344', ...}); the epoch line says it once per epoch
    trainer.remove_callback(PrinterCallback)
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(_BarsOnly)
    keep_adapters_in_fp32(trainer.model)  # the optimizer is created at train(): it sees fp32 weights
    return trainer


class _StepLines(TrainerCallback):
    """Optimizer steps done, with an ETA from the pace so far: lines beside (or, on a terminal, under)
    transformers' bar."""

    def __init__(self, title: str) -> None:
        self.title, self.progress = title, None

    def on_train_begin(self, args, state, control, **kwargs):
        if is_main_process():
            what = f"{self.title}: optimizer steps ({args.num_train_epochs:g} epochs)"
            self.progress = Progress(what, state.max_steps, bar=False, start=state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(state.global_step)


class _BarsOnly(ProgressCallback):
    """transformers' progress bars without the raw log dicts it writes under them."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        return None


def check_one_gpu(args) -> None:
    """Outside a launcher a process trains on one GPU: on more, transformers wraps the model in DataParallel
    (or, 4-bit, silently takes batch_size x GPUs rows a step)."""
    if world_size() == 1 and args.n_gpu > 1:
        raise FaultLLMError(
            f"this process sees {args.n_gpu} GPUs and would train on all of them at once; run it through the "
            "`faultllm` command (one GPU per process), set CUDA_VISIBLE_DEVICES to one GPU, or use torchrun for DDP"
        )


def tensorboard_callback(report_to: tuple[str, ...], out_dir: Path) -> list:
    """TensorBoard events in the run directory (out_dir/tensorboard), not under the checkpoints."""
    if "tensorboard" not in report_to or not is_main_process():
        return []
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    return [TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(out_dir / "tensorboard")))]


def sft_config(
    trainer_cfg: TrainerConfig, plan: HardwarePlan, n_rows: int, out_dir: Path, checkpoints: bool, *, seed: int,
    progress: bool,
):  # fmt: skip
    from trl import SFTConfig

    batches = math.ceil(math.ceil(n_rows / world_size()) / trainer_cfg.batch_size)  # per rank under torchrun
    steps_per_epoch = math.ceil(batches / trainer_cfg.grad_accum)
    return SFTConfig(
        output_dir=str(out_dir / "checkpoints"),
        num_train_epochs=trainer_cfg.epochs,
        per_device_train_batch_size=trainer_cfg.batch_size,
        gradient_accumulation_steps=trainer_cfg.grad_accum,
        learning_rate=trainer_cfg.learning_rate,
        lr_scheduler_type=trainer_cfg.lr_scheduler,
        warmup_steps=0,
        weight_decay=trainer_cfg.weight_decay,
        max_grad_norm=trainer_cfg.max_grad_norm,
        optim=plan.optimizer,
        bf16=plan.dtype == "bfloat16",
        activation_checkpointing=bool(plan.gradient_checkpointing),
        activation_checkpointing_kwargs={"use_reentrant": False} if plan.gradient_checkpointing else None,
        fp16=plan.dtype == "float16",
        completion_only_loss=True,  # loss on ` Y = k</s>` only: the study's whole-sequence loss rewarded copying numbers
        max_length=None,  # dynamic padding to the longest row of each batch; nothing is truncated
        # FlashAttention-2 on a padded batch unpads it in every layer, a host sync each (cu_seqlens from the mask):
        # its rows go concatenated instead, with position ids and sequence bounds the collator computes on the CPU
        padding_free=plan.attn_implementation == "flash_attention_2",
        logging_steps=max(1, steps_per_epoch // 4),
        logging_nan_inf_filter=False,  # a NaN loss must reach the callback that stops the run
        save_strategy="epoch" if checkpoints else "no",
        save_total_limit=1,
        report_to=[name for name in trackers(trainer_cfg.report_to) if name != "tensorboard"] or "none",  # ours
        seed=seed,
        data_seed=seed,
        use_cpu=plan.device == "cpu",
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,  # under torchrun: every LoRA weight takes part in every step
        ddp_timeout=trainer_cfg.ddp_timeout,
        disable_tqdm=not progress,
    )
