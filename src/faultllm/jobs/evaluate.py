"""`faultllm evaluate run_dir=DIR` (configs/evaluate.yaml): score a trained run's adapter on its own
test split (kept in the run directory) or on raw rows given by `eval.split_path`."""

from __future__ import annotations

from pathlib import Path

from faultllm.compare import plots
from faultllm.compare.tables import print_summary
from faultllm.config.jobs import EvaluateJob
from faultllm.llm.evaluation import evaluate_prompts
from faultllm.llm.scoring import answer_space
from faultllm.llm.trained import TrainedLLM
from faultllm.preflight import evaluate_inputs
from faultllm.run.directory import start_run
from faultllm.run.kind import RunKind
from faultllm.run.records import EvaluateMetrics
from faultllm.runtime.files import write_csv


def run(cfg: EvaluateJob, out_dir: Path) -> dict:
    saved, frame, source = evaluate_inputs(cfg)  # checked before the model loads
    llm = TrainedLLM.from_run(saved)
    out_dir = start_run(cfg, out_dir, RunKind.EVALUATE)
    prompts = llm.serializer.render(frame)
    space = answer_space(llm.tokenizer, prompts)
    metrics, predictions = evaluate_prompts(llm.model, llm.tokenizer, prompts, space, cfg.eval, f"scoring {source}")
    written = EvaluateMetrics.from_json(
        metrics | {"eval_mode": cfg.eval.mode, "source": source, "run_dir": str(saved.run_dir)}
    )
    written.write(out_dir / "metrics.json")
    write_csv(predictions, out_dir / "predictions.csv")
    plots.confusion_matrix(metrics["confusion_matrix"], prompts.labels, out_dir / "confusion_matrix.png", cfg.eval.mode)
    items = {
        "rows": f"{metrics['n']} from {source}",
        "accuracy / macro-F1": f"{metrics['accuracy']:.3f} / {metrics['macro_f1']:.3f}",
    }
    if "loss" in metrics:
        items["loss"] = f"{metrics['loss']:.4f}"
    if "invalid_outputs" in metrics:
        items["invalid outputs"] = str(metrics["invalid_outputs"])
    print_summary(f"evaluated ({cfg.eval.mode}): {saved.run_dir}", items | {"written to": str(out_dir)})
    return metrics
