"""`faultllm train` (configs/train.yaml): QLoRA SFT on one split, then restricted-label evaluation.

Writes adapter/, metrics.json, predictions.csv, epochs.jsonl, learning_curves.{csv,png},
confusion_matrix.png and the split (split.json, train/test.parquet, scaler.json).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from faultllm import plots
from faultllm.evaluation import evaluate_prompts
from faultllm.modeling import HardwarePlan, ModelSpec
from faultllm.prompts import Prompts, Serializer
from faultllm.reporting import print_summary
from faultllm.rundir import save_split, start_run, write_json
from faultllm.splits import MinMaxScaler, Split, prepared_split
from faultllm.training import FitResult, TrainOptions, fit


def run(cfg, run_dir) -> dict:
    """Fine-tune, evaluate, and write everything into run_dir. Returns metrics.json's content."""
    run_dir = start_run(cfg, run_dir)
    split, scaler = prepared_split(cfg.data, cfg.seed)
    return train_on_split(cfg, split, scaler, run_dir)


def train_on_split(cfg, split: Split, scaler: MinMaxScaler | None, run_dir: Path) -> dict:
    """The train job after its split is made (also HPO's refit of the best parameters)."""
    split_info = save_split(run_dir, split, scaler, cfg.seed)
    serializer = Serializer.from_config(cfg.prompt, cfg.data, split.features, split.labels)
    sets = {"train": serializer.render(split.train), "test": serializer.render(split.test)}
    spec = ModelSpec.from_config(cfg.model, cfg.lora, cfg.cache_dir)
    options = TrainOptions.from_config(cfg.trainer, cfg.seed, cfg.eval.batch_size, cfg.progress)
    result = fit(spec, sets["train"], sets, options, run_dir)
    result.model.save_pretrained(run_dir / "adapter")
    result.tokenizer.save_pretrained(run_dir / "adapter")

    final = _evaluate(result, sets, cfg.eval, run_dir)
    _write_curves(result.history, run_dir, f"{cfg.data.display_name}: {Path(str(cfg.model.path or 'tiny')).name}")
    metrics = {
        "train": final["train"],
        "test": final["test"],
        "epochs": result.history,
        "eval_mode": cfg.eval.mode,
        "train_seconds": round(result.seconds, 2),
        "hardware": result.plan.__dict__,
        "split": split_info,
    }
    write_json(run_dir / "metrics.json", metrics)
    _print_summary(cfg, result.plan, final, result.seconds, run_dir)
    return metrics


def _evaluate(result: FitResult, sets: dict[str, Prompts], eval_cfg, run_dir: Path) -> dict[str, dict]:
    """Final metrics of every set; the test set's predictions and confusion matrix are written."""
    final = {}
    for name, prompts in sets.items():
        final[name], predictions = evaluate_prompts(
            result.model, result.tokenizer, prompts, result.answer_space, eval_cfg
        )
        if name == "test":
            predictions.to_csv(run_dir / "predictions.csv", index=False)
            plots.confusion_matrix(
                final[name]["confusion_matrix"],
                prompts.labels,
                run_dir / "confusion_matrix.png",
                f"test ({eval_cfg.mode})",
            )
    return final


def _write_curves(history: list[dict], run_dir: Path, title: str) -> None:
    pd.DataFrame(history).to_csv(run_dir / "learning_curves.csv", index=False)
    if history:
        plots.learning_curves(history, run_dir / "learning_curves.png", title=title)


def _print_summary(cfg, plan: HardwarePlan, final: dict, seconds: float, run_dir: Path) -> None:
    train, test = final["train"], final["test"]
    print_summary(
        f"trained: {cfg.data.display_name}",
        {
            "model": f"{cfg.model.path or 'tiny'} ({plan.quantization}, {plan.attn_implementation}, {plan.device})",
            "lora r / alpha / dropout": f"{cfg.lora.r} / {cfg.lora.alpha} / {cfg.lora.dropout}",
            "epochs / batch / lr": f"{cfg.trainer.epochs} / {cfg.trainer.batch_size} / {cfg.trainer.learning_rate}",
            "train accuracy / loss": f"{train['accuracy']:.3f} / {train.get('loss', float('nan')):.4f}",
            "test accuracy / macro-F1": f"{test['accuracy']:.3f} / {test['macro_f1']:.3f}",
            "test loss": f"{test.get('loss', float('nan')):.4f}",
            "training time": f"{seconds:.1f} s",
            "written to": str(run_dir),
        },
    )
