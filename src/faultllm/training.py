"""`faultllm train`: QLoRA SFT with TRL on prompt/completion rows, then restricted-label evaluation.

`fit` is shared with HPO (one call per fold); `train` is the job: split -> fit -> save
the adapter -> evaluate train and test -> write metrics, predictions, curves, plots.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from faultllm.errors import FaultLLMError
from faultllm.modeling import HardwarePlan
from faultllm.prompts import PromptFormat, prompts, sft_rows


class NonFiniteLoss(FaultLLMError):
    """The loss or gradient became NaN/inf: the run cannot recover (HPO prunes the trial)."""


@dataclass
class EvalSet:
    """Rows with their prompts rendered once (prompt building is not free at 5 M rows or 100 trials)."""

    frame: pd.DataFrame
    prompts: list[str]


def eval_set(frame: pd.DataFrame, features: list[str], labels: list, fmt: PromptFormat) -> EvalSet:
    return EvalSet(frame=frame, prompts=prompts(frame, features, labels, fmt))


@dataclass
class FitResult:
    model: object
    tokenizer: object
    answer_space: object  # evaluation.AnswerSpace of the labels under this tokenizer
    history: list[dict] = field(default_factory=list)  # one row per epoch
    seconds: float = 0.0


def fit(
    cfg,
    plan: HardwarePlan,
    train_frame: pd.DataFrame,
    features: list[str],
    labels: list,
    fmt: PromptFormat,
    eval_sets: dict[str, EvalSet],
    out_dir: Path,
    on_epoch: Callable[[dict], None] | None = None,
    checkpoints: bool = True,
) -> FitResult:
    """Train LoRA adapters on `train_frame`; after each epoch score every eval set (restricted labels).

    `on_epoch(row)` sees each epoch's metrics (HPO reports them to its pruner and may raise).
    Checkpoints go to out_dir/checkpoints; an existing one is resumed when trainer.resume is set.
    """
    from omegaconf import OmegaConf
    from transformers import TrainerCallback, set_seed

    from faultllm.evaluation import answer_space, evaluate_frame
    from faultllm.modeling import build_for_training

    out_dir.mkdir(parents=True, exist_ok=True)
    set_seed(cfg.seed)  # before LoRA's random init, which would otherwise depend on whatever ran earlier
    model, tokenizer = build_for_training(cfg, plan)
    space = answer_space(tokenizer, labels, next(iter(eval_sets.values())).prompts[0])
    history_path = out_dir / "epochs.jsonl"
    resume = checkpoints and bool(cfg.trainer.resume) and any((out_dir / "checkpoints").glob("checkpoint-*"))
    history = _read_history(history_path) if resume else []
    if not resume:
        history_path.unlink(missing_ok=True)

    class EpochMetrics(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            bad = {k: v for k, v in (logs or {}).items() if k in ("loss", "grad_norm") and not math.isfinite(v)}
            if bad:
                raise NonFiniteLoss(
                    f"training {' and '.join(bad)} became nan at step {state.global_step} (epoch {state.epoch:.2f}); "
                    f"lower trainer.learning_rate (now {cfg.trainer.learning_rate})"
                )

        def on_epoch_end(self, args, state, control, model=None, **kwargs):
            row: dict = {"epoch": round(state.epoch), "step": state.global_step}
            if cfg.trainer.eval_each_epoch:
                eval_cfg = OmegaConf.create({"mode": "restricted", "batch_size": cfg.eval.batch_size})
                for name, data in eval_sets.items():
                    metrics, _ = evaluate_frame(model, tokenizer, data.frame, data.prompts, space, eval_cfg)
                    row |= {
                        f"{name}_loss": metrics["loss"],
                        f"{name}_accuracy": metrics["accuracy"],
                        f"{name}_macro_f1": metrics["macro_f1"],
                    }
            row["seconds"] = round(time.perf_counter() - started, 2)
            history.append(row)
            with history_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            if on_epoch is not None:
                on_epoch(row)

    rows = sft_rows(train_frame, features, labels, fmt)
    trainer = sft_trainer(cfg, plan, model, tokenizer, rows, out_dir, [EpochMetrics()], checkpoints=checkpoints)
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=True if resume else None)
    tokenizer.padding_side = "left"
    return FitResult(
        model=trainer.model,
        tokenizer=tokenizer,
        answer_space=space,
        history=history,
        seconds=time.perf_counter() - started,
    )


def sft_trainer(
    cfg, plan: HardwarePlan, model, tokenizer, rows: list[dict], out_dir: Path, callbacks=(), checkpoints: bool = True
):
    """TRL's SFTTrainer on prompt/completion rows with the config's optimizer setup."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    steps_per_epoch = max(1, len(rows) // (cfg.trainer.batch_size * cfg.trainer.grad_accum))
    args = SFTConfig(
        output_dir=str(out_dir / "checkpoints"),
        num_train_epochs=cfg.trainer.epochs,
        per_device_train_batch_size=cfg.trainer.batch_size,
        gradient_accumulation_steps=cfg.trainer.grad_accum,
        learning_rate=float(cfg.trainer.learning_rate),
        lr_scheduler_type=cfg.trainer.lr_scheduler,
        warmup_steps=0,
        weight_decay=cfg.trainer.weight_decay,
        max_grad_norm=cfg.trainer.max_grad_norm,
        optim=plan.optimizer,
        bf16=plan.dtype == "bfloat16",
        gradient_checkpointing=plan.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if plan.gradient_checkpointing else None,
        completion_only_loss=True,  # loss on ` Y = k</s>` only: the study's whole-sequence loss rewarded copying numbers
        max_length=None,  # dynamic padding to the longest row of each batch; nothing is truncated
        logging_steps=max(1, steps_per_epoch // 4),
        logging_nan_inf_filter=False,  # a NaN loss must reach the callback that stops the run
        save_strategy="epoch" if checkpoints else "no",
        save_total_limit=1,
        report_to="none",
        seed=cfg.seed,
        data_seed=cfg.seed,
        use_cpu=plan.device == "cpu",
        dataloader_num_workers=0,
        disable_tqdm=not cfg.progress,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )
    if not cfg.progress:  # without progress bars transformers prints every log dict instead
        trainer.remove_callback(PrinterCallback)
    return trainer


def _read_history(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# ---------------------------------------------------------------- the `faultllm train` job


def train(cfg, run_dir) -> dict:
    """Fine-tune, evaluate, and write everything into run_dir. Returns metrics.json's content."""
    from faultllm.config import start_run, write_json
    from faultllm.evaluation import evaluate_frame, plot_confusion_matrix
    from faultllm.modeling import hardware_plan
    from faultllm.prepare import prepared_split, write_split_summary
    from faultllm.reporting import plot_learning_curves, print_summary

    run_dir = start_run(cfg, run_dir)
    plan = hardware_plan(cfg.model)
    split, scaler = prepared_split(cfg)
    split_info = write_split_summary(run_dir, split, scaler, cfg.seed)
    if scaler is not None:
        write_json(
            run_dir / "scaler.json",
            {
                "minimum": scaler.minimum,
                "maximum": scaler.maximum,
                "feature_range": scaler.feature_range,
                "features": split.features,
            },
        )
    fmt = PromptFormat.from_config(cfg.prompt, cfg.data)
    sets = {
        name: eval_set(frame, split.features, split.labels, fmt)
        for name, frame in (("train", split.train), ("test", split.test))
    }

    result = fit(cfg, plan, split.train, split.features, split.labels, fmt, sets, run_dir)
    result.model.save_pretrained(run_dir / "adapter")
    result.tokenizer.save_pretrained(run_dir / "adapter")

    final = {}
    for name, data in sets.items():
        final[name], predictions = evaluate_frame(
            result.model, result.tokenizer, data.frame, data.prompts, result.answer_space, cfg.eval
        )
        if name == "test":
            predictions.to_csv(run_dir / "predictions.csv", index=False)
            plot_confusion_matrix(
                final[name]["confusion_matrix"],
                split.labels,
                run_dir / "confusion_matrix.png",
                f"test ({cfg.eval.mode})",
            )

    pd.DataFrame(result.history).to_csv(run_dir / "learning_curves.csv", index=False)
    if result.history:
        plot_learning_curves(
            result.history,
            run_dir / "learning_curves.png",
            title=f"{cfg.data.display_name}: {Path(str(cfg.model.path or 'tiny')).name}",
        )
    metrics = {
        "train": final["train"],
        "test": final["test"],
        "epochs": result.history,
        "eval_mode": cfg.eval.mode,
        "train_seconds": round(result.seconds, 2),
        "hardware": plan.__dict__,
        "split": split_info,
    }
    write_json(run_dir / "metrics.json", metrics)
    print_summary(
        f"trained: {cfg.data.display_name}",
        {
            "model": f"{cfg.model.path or 'tiny'} ({plan.quantization}, {plan.attn_implementation}, {plan.device})",
            "lora r / alpha / dropout": f"{cfg.lora.r} / {cfg.lora.alpha} / {cfg.lora.dropout}",
            "epochs / batch / lr": f"{cfg.trainer.epochs} / {cfg.trainer.batch_size} / {cfg.trainer.learning_rate}",
            "train accuracy / loss": _acc_loss(final["train"]),
            "test accuracy / macro-F1": f"{final['test']['accuracy']:.3f} / {final['test']['macro_f1']:.3f}",
            "test loss": f"{final['test'].get('loss', float('nan')):.4f}",
            "training time": f"{result.seconds:.1f} s",
            "written to": str(run_dir),
        },
    )
    return metrics


def _acc_loss(metrics: dict) -> str:
    return f"{metrics['accuracy']:.3f} / {metrics.get('loss', float('nan')):.4f}"
