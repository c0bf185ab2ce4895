"""`faultllm train` (configs/train.yaml): QLoRA SFT on one split, then restricted-label evaluation.

Writes adapter/, metrics.json, predictions.csv, prompt_features.json, epochs.jsonl, learning_curves.{csv,png},
confusion_matrix.png and the split (split.json, train/test.parquet, scaler.json).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from faultllm import plots
from faultllm.distributed import is_main_process, world_size
from faultllm.evaluation import evaluate_prompts
from faultllm.files import atomic_directory, write_csv
from faultllm.modeling import ModelSpec
from faultllm.prompts import Serializer, ordered_features
from faultllm.reporting import print_summary
from faultllm.rundir import PROMPT_FEATURES, TRAIN_RESUME, save_split, start_run, write_json
from faultllm.splits import MinMaxScaler, Split, prepared_split
from faultllm.training import FitResult, TrainOptions, fit


def run(cfg, run_dir) -> dict:
    """Fine-tune, evaluate, and write everything into run_dir. Returns metrics.json's content.

    Under torchrun/accelerate every rank trains (DDP) and scores its share of the rows; the main
    process writes the files.
    """
    run_dir = start_run(cfg, run_dir, TRAIN_RESUME) if is_main_process() else Path(run_dir)
    split, scaler = prepared_split(cfg.data, cfg.seed)
    return train_on_split(cfg, split, scaler, run_dir)


def train_on_split(
    cfg, split: Split, scaler: MinMaxScaler | None, run_dir: Path, features: list[str] | None = None
) -> dict:
    """The train job after its split is made (also HPO's refit of the best parameters, which passes the
    prompt's feature order its trials used)."""
    spec = ModelSpec.from_config(cfg.model, cfg.lora, cfg.cache_dir, cfg.prompt)  # first: fails fast off the hub
    split_info = save_split(run_dir, split, scaler, cfg.seed) if is_main_process() else split.summary(scaler, cfg.seed)
    features = features or ordered_features(cfg.prompt, split.features, cfg.seed, split_info["split_fingerprint"])
    if is_main_process():
        write_json(run_dir / PROMPT_FEATURES, features)
    serializer = Serializer.from_config(cfg.prompt, cfg.data, features, split.labels, spec.tokenizer())
    sets = {"train": serializer.render(split.train), "test": serializer.render(split.test)}
    options = TrainOptions.from_config(cfg.trainer, cfg.seed, cfg.eval.batch_size, cfg.progress)
    result = fit(spec, sets["train"], sets, options, run_dir)
    final = {
        name: evaluate_prompts(result.model, result.tokenizer, p, result.answer_space, cfg.eval)
        for name, p in sets.items()
    }
    metrics = {
        "train": final["train"][0],
        "test": final["test"][0],
        "epochs": result.history,
        "eval_mode": cfg.eval.mode,
        "train_seconds": round(result.seconds, 2),
        "hardware": result.plan.__dict__,
        "processes": world_size(),
        "effective_batch_size": options.batch_size * options.grad_accum * world_size(),
        "split": split_info,
    }
    if is_main_process():
        title = f"{cfg.data.display_name}: {Path(str(cfg.model.path or 'tiny')).name}"
        _write_outputs(result, metrics, final["test"][1], cfg.eval.mode, run_dir, title)
        _print_summary(cfg, metrics, result.seconds, run_dir)
    return metrics


def _write_outputs(result: FitResult, metrics: dict, predictions, eval_mode: str, run_dir: Path, title: str) -> None:
    """adapter/, metrics.json, the test predictions and confusion matrix, the learning curves."""
    with atomic_directory(run_dir / "adapter") as adapter:
        result.model.save_pretrained(adapter)
        result.tokenizer.save_pretrained(adapter)
    write_json(run_dir / "metrics.json", metrics)
    write_csv(predictions, run_dir / "predictions.csv")
    labels = result.answer_space.labels
    plots.confusion_matrix(
        metrics["test"]["confusion_matrix"], labels, run_dir / "confusion_matrix.png", f"test ({eval_mode})"
    )
    write_csv(pd.DataFrame(result.history), run_dir / "learning_curves.csv")
    if result.history:
        plots.learning_curves(result.history, run_dir / "learning_curves.png", title=title)


def _print_summary(cfg, metrics: dict, seconds: float, run_dir: Path) -> None:
    plan, train, test = metrics["hardware"], metrics["train"], metrics["test"]
    batch = (
        f"{cfg.trainer.batch_size} (effective {metrics['effective_batch_size']} over {metrics['processes']} processes)"
    )
    print_summary(
        f"trained: {cfg.data.display_name}",
        {
            "model": f"{cfg.model.path or 'tiny'} ({plan['quantization']}, {plan['attn_implementation']})",
            "device": plan["gpu_name"] or plan["device"],
            "lora r / alpha / dropout": f"{cfg.lora.r} / {cfg.lora.alpha} / {cfg.lora.dropout}",
            "epochs / batch / lr": f"{cfg.trainer.epochs} / {batch} / {cfg.trainer.learning_rate}",
            "train accuracy / loss": f"{train['accuracy']:.3f} / {train.get('loss', float('nan')):.4f}",
            "test accuracy / macro-F1": f"{test['accuracy']:.3f} / {test['macro_f1']:.3f}",
            "test loss": f"{test.get('loss', float('nan')):.4f}",
            "training time": f"{seconds:.1f} s",
            "written to": str(run_dir),
        },
    )
