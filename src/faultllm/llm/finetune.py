"""Fine-tune one split and write what a train run leaves behind: the `train` job's work, and HPO's refit.
With trainer.epochs=0 the base model is evaluated as it is (zero- or few-shot prompts): no adapter/.

Writes adapter/, metrics.json, predictions.csv, prompt_features.json, epochs.jsonl,
learning_curves.{csv,png}, confusion_matrix.png and the split (split.json, train/test.parquet, scaler.json).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from faultllm.compare import plots
from faultllm.compare.calibration import CALIBRATION_FILE, LLM, Recalibration, forecast_of
from faultllm.compare.tables import print_summary
from faultllm.config.groups import PromptConfig
from faultllm.config.jobs import TrainJob
from faultllm.data.splits import MinMaxScaler, Split, hold_out
from faultllm.llm.build import ModelSpec
from faultllm.llm.evaluation import evaluate_prompts
from faultllm.llm.trainer import FitResult, fit, untrained
from faultllm.prompts.serialize import Prompts, Serializer, ordered_features
from faultllm.run.directory import save_split
from faultllm.run.records import SplitMetrics, SplitSummary, TrainMetrics
from faultllm.run.saved import PROMPT_FEATURES, baseline_importances
from faultllm.runtime.distributed import is_main_process, world_size
from faultllm.runtime.errors import FaultLLMError
from faultllm.runtime.files import atomic_directory, write_csv, write_json

log = logging.getLogger(__name__)


def prompt_features(prompt: PromptConfig, features: list[str], seed: int, split_fingerprint: str) -> list[str]:
    """The features in the order prompts write them (`prompt.feature_order`)."""
    importance = None
    if prompt.feature_order == "importance":
        importance = baseline_importances(prompt.importance_from, prompt.importance_model, split_fingerprint)
        if set(importance) != set(map(str, features)):
            raise FaultLLMError(
                f"prompt.importance_from={prompt.importance_from}: its features differ from this data's"
            )
    return ordered_features(prompt.feature_order, features, seed, importance)


def train_on_split(
    cfg: TrainJob, split: Split, scaler: MinMaxScaler | None, run_dir: Path, features: list[str] | None = None
) -> dict:
    """Fine-tune on `split`, evaluate train and test, write the run's files (the main process) and return
    metrics.json's content. `features`: the prompt's feature order when the caller fixed it (HPO's refit)."""
    spec = ModelSpec.from_config(cfg.model, cfg.lora, cfg.cache_dir, cfg.prompt)  # first: fails fast off the hub
    split, held_out = hold_out(split, cfg.calibrate.holdout, cfg.seed)
    split_info = (
        save_split(run_dir, split, scaler, cfg.seed) if is_main_process() else SplitSummary.of(split, scaler, cfg.seed)
    )
    features = features or prompt_features(cfg.prompt, split.features, cfg.seed, split_info.split_fingerprint)
    if is_main_process():
        write_json(run_dir / PROMPT_FEATURES, features)
    serializer = Serializer.from_config(
        cfg.prompt, cfg.data.system_prompt, features, split.labels, spec.tokenizer(), cfg.seed, split.train
    )
    log.info(f"writing {len(split.train)} train and {len(split.test)} test rows as prompts")
    train, test = serializer.render_pair(split.train, split.test)
    sets = {"train": train, "test": test}
    result = _fitted(spec, sets, cfg, run_dir)
    final = {name: _final_scores(result, name, prompts, cfg) for name, prompts in sets.items()}
    metrics = TrainMetrics(
        train=SplitMetrics.from_json(final["train"][0]),
        test=SplitMetrics.from_json(final["test"][0]),
        epochs=result.history,
        eval_mode=cfg.eval.mode,
        train_seconds=round(result.seconds, 2),
        hardware=result.plan.__dict__,
        processes=world_size(),
        effective_batch_size=cfg.trainer.batch_size * cfg.trainer.grad_accum * world_size(),
        split=split_info,
    ).to_json()
    recalibration = _recalibrate(result, serializer, held_out, final["test"][1], cfg)
    if is_main_process():
        title = f"{cfg.data.display_name}: {Path(str(cfg.model.path or 'tiny')).name}"
        _write_outputs(result, metrics, final["test"][1], cfg.eval.mode, run_dir, title)
        if recalibration:
            write_json(run_dir / CALIBRATION_FILE, {LLM: recalibration})
        _print_summary(cfg, metrics, result.seconds, run_dir)
    return metrics


def _fitted(spec: ModelSpec, sets: dict[str, Prompts], cfg: TrainJob, run_dir: Path) -> FitResult:
    """The model fitted on the training rows, scoring both sets after each epoch; with trainer.epochs=0 the base
    model as it is."""
    if not cfg.trainer.epochs:
        log.info(f"{spec.loading()}, not trained")
        return untrained(spec, sets["train"])
    return fit(
        spec, sets["train"], sets, cfg.trainer, run_dir, seed=cfg.seed, eval_batch_size=cfg.eval.batch_size,
        progress=cfg.progress,
    )  # fmt: skip


def _final_scores(result: FitResult, name: str, prompts, cfg: TrainJob) -> tuple[dict, pd.DataFrame]:
    log.info(f"scoring the {len(prompts.texts)} {name} rows ({cfg.eval.mode})")
    return evaluate_prompts(result.model, result.tokenizer, prompts, result.answer_space, cfg.eval, f"scoring {name}")


def _recalibrate(
    result: FitResult, serializer: Serializer, held_out: pd.DataFrame | None, test: pd.DataFrame, cfg: TrainJob
) -> dict | None:
    """A temperature and prediction sets fitted on the held-out training rows, with what they do on the test
    rows (calibration.json); None without held-out rows, and in generate mode (no probabilities)."""
    if held_out is None:
        return None
    if cfg.eval.mode != "restricted":
        log.warning("calibrate.holdout: eval.mode=generate gives no probabilities; no temperature, no sets")
        return None
    labels = result.answer_space.labels
    _, held = _final_scores(result, "held-out", serializer.render(held_out), cfg)
    return Recalibration.fitted_and_checked(
        forecast_of(held, labels), forecast_of(test, labels), cfg.calibrate.coverage
    )


def _write_outputs(result: FitResult, metrics: dict, predictions, eval_mode: str, run_dir: Path, title: str) -> None:
    """adapter/ (not for an untrained run), metrics.json, the test predictions and confusion matrix, the
    learning curves."""
    if result.trained:
        with atomic_directory(run_dir / "adapter") as adapter:
            result.model.save_pretrained(adapter)
            result.tokenizer.save_pretrained(adapter)
    write_json(run_dir / "metrics.json", metrics)
    write_csv(predictions, run_dir / "predictions.csv")
    labels = result.answer_space.labels
    plots.confusion_matrix(
        metrics["test"]["confusion_matrix"], labels, run_dir / "confusion_matrix.png", f"test ({eval_mode})"
    )
    if result.history:
        write_csv(pd.DataFrame(result.history), run_dir / "learning_curves.csv")
        plots.learning_curves(result.history, run_dir / "learning_curves.png", title=title)


def _print_summary(cfg: TrainJob, metrics: dict, seconds: float, run_dir: Path) -> None:
    plan, train, test = metrics["hardware"], metrics["train"], metrics["test"]
    batch = (
        f"{cfg.trainer.batch_size} (effective {metrics['effective_batch_size']} over {metrics['processes']} processes)"
    )
    nan = float("nan")
    shots = f"{cfg.prompt.shots}-shot ({cfg.prompt.shot_selection})" if cfg.prompt.shots else "zero-shot"
    print_summary(
        f"trained: {cfg.data.display_name}" if cfg.trainer.epochs else f"not trained, {shots}: {cfg.data.display_name}",
        {
            "model": f"{cfg.model.path or 'tiny'} ({plan['quantization']}, {plan['attn_implementation']})",
            "device": plan["gpu_name"] or plan["device"],
            "lora r / alpha / dropout": f"{cfg.lora.r} / {cfg.lora.alpha} / {cfg.lora.dropout}",
            "epochs / batch / lr": f"{cfg.trainer.epochs} / {batch} / {cfg.trainer.learning_rate}",
            "train accuracy / loss": f"{train['accuracy']:.3f} / {train.get('loss', nan):.4f}",
            "test accuracy / macro-F1": f"{test['accuracy']:.3f} / {test['macro_f1']:.3f}",
            "test loss": f"{test.get('loss', nan):.4f}",
            "training time": f"{seconds:.1f} s" if cfg.trainer.epochs else "no training (epochs=0)",
            "written to": str(run_dir),
        },
    )
