"""Which runs may be compared, and what each holds: `load_runs` reads finished train/baselines run
directories (a Hydra multirun directory counts as its runs), refuses runs made on different data configs,
and pools only runs whose configs differ in nothing but the seed and the training-set size (differing LLM
runs, e.g. fine-tuned and few-shot, become rows of their own). The seed (a new split, a new fine-tune) is
the unit of replication: each model's result in each run is one `ModelRun`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from faultllm.compare.baselines import NAMES
from faultllm.compare.calibration import Forecast, forecast_of
from faultllm.run.directory import read_config_tree
from faultllm.run.kind import RunKind, run_kind
from faultllm.run.records import BaselinesMetrics, SplitSummary, TrainMetrics
from faultllm.run.saved import expand_run_dirs
from faultllm.runtime.errors import FaultLLMError
from faultllm.runtime.progress import steps

# Keys that may differ between runs pooled into one row: the seed, and the training-set size (a curve).
VARYING = ("seed", "data.train_size")
# Keys that do not change a model's numbers (which baselines a run fitted, how it reported, whether it scored
# every epoch, how long ranks wait, how memory is saved): runs differing only there are one protocol.
IGNORED = (
    "progress", "cache_dir", "data.cache_dir", "hpo.worker_index", "run_dir", "trainer.report_to", "trainer.resume",
    "eval.batch_size", "eval.generate_batch_size", "baselines.models", "baselines.importances_for",
    "baselines.permutation_repeats", "trainer.eval_each_epoch", "trainer.ddp_timeout", "model.gradient_checkpointing",
)  # fmt: skip


# How a differing key is shown in an LLM row's name: `LLM (tiny, shots=4, epochs=0)`.
SHORT_NAMES = {"prompt.shots": "shots", "prompt.shot_selection": "shot_selection", "trainer.epochs": "epochs"}


@dataclass(frozen=True)
class ModelRun:
    """One model's result in one run directory."""

    model: str
    kind: str  # "llm" or "baseline"
    run_dir: Path
    seed: int
    train_rows: int
    test_rows: int
    fingerprint: str
    train_accuracy: float
    test_accuracy: float
    test_macro_f1: float
    seconds: float | None
    correct: np.ndarray | None  # per test row, when the run kept its predictions
    forecast: Forecast | None = None  # per test row probabilities, when the run kept them (calibration)

    @property
    def test_correct(self) -> int:
        """Test rows right: an integer, so that equal gaps compare equal (in floats 0.85 - 0.8 != 0.9 - 0.85)."""
        return round(self.test_accuracy * self.test_rows)


def load_runs(paths: list) -> list[ModelRun]:
    """Every model result in the given runs, after checking they may be pooled and compared."""
    run_dirs = expand_run_dirs(paths)
    configs = {run_dir: _read_config(run_dir) for run_dir in run_dirs}
    check_comparable(configs)
    names = llm_names({d: c for d, c in configs.items() if run_kind(d) is not RunKind.BASELINES})
    read = steps(run_dirs, "report: runs read")
    results = [r for run_dir in read for r in _model_runs(run_dir, names.get(run_dir))]
    seen: dict[tuple, Path] = {}
    for r in results:
        if (r.model, r.fingerprint) in seen:
            raise FaultLLMError(
                f"{r.model} appears twice on one split ({seen[(r.model, r.fingerprint)]} and {r.run_dir}): "
                "repeated runs are pooled over seeds, so give each split once"
            )
        seen[(r.model, r.fingerprint)] = r.run_dir
    return results


def _read_config(run_dir: Path) -> dict:
    for name in ("metrics.json", "split.json", "config.yaml"):
        if not (run_dir / name).exists():
            raise FaultLLMError(f"{run_dir}: not a finished faultllm train/baselines run (no {name})")
    return _flatten(read_config_tree(run_dir))


def _flatten(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    return {k: v for key, value in tree.items() for k, v in _flatten(value, f"{prefix}{key}.").items()}


def check_comparable(configs: dict[Path, dict]) -> None:
    """The data config agrees across all runs, and the baselines runs agree on everything, except for
    the seed and the training-set size. (LLM runs that differ become separate rows: `llm_names`.)"""
    data_keys = lambda config: {k: v for k, v in config.items() if k.startswith("data.")}  # noqa: E731
    _refuse_differences(configs, data_keys, "different data configs")
    baselines = {d: c for d, c in configs.items() if run_kind(d) is RunKind.BASELINES}
    if baselines:
        _refuse_differences(baselines, lambda config: config, "configs that differ in more than the seed")


def llm_names(configs: dict[Path, dict]) -> dict[Path, str]:
    """Train runs are pooled when their configs agree but for the seed and training-set size; runs that
    differ (another model, prompt.feature_order, learning rate) are named by what sets them apart."""
    settings = {d: _comparable(c) for d, c in configs.items()}
    differing = sorted(
        {k for a in settings.values() for b in settings.values() for k in set(a) & set(b) if a[k] != b[k]}
        - {"model.path", "model.build"}
    )
    names = {}
    for run_dir, config in settings.items():
        shown = [Path(str(config.get("model.path") or "tiny")).name]
        shown += [f"{SHORT_NAMES.get(key, key)}={config[key]}" for key in differing if _telling(key, config)]
        names[run_dir] = f"LLM ({', '.join(shown)})"
    return names


def _telling(key: str, config: dict) -> bool:
    """A differing key worth naming for this run (how shots are chosen says nothing without shots)."""
    return key in config and not (key == "prompt.shot_selection" and not config.get("prompt.shots"))


def _refuse_differences(configs: dict[Path, dict], view, what: str) -> None:
    (first_dir, first), *rest = [(d, _comparable(view(c))) for d, c in configs.items()]
    for run_dir, config in rest:
        for key in sorted(set(first) & set(config)):  # a key only one run has came with a later faultllm
            if first.get(key) != config.get(key):
                raise FaultLLMError(
                    f"cannot pool runs made with {what}: {key} is {first.get(key)!r} in {first_dir} and "
                    f"{config.get(key)!r} in {run_dir} (only {' and '.join(VARYING)} may differ)"
                )


def _comparable(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in VARYING + IGNORED and not k.startswith("hydra.")}


def _forecast(predictions: pd.DataFrame | None, answered: str, prefix: str, labels: list[str]) -> Forecast | None:
    """The probability columns `prefix<label>` of predictions.csv, when the run wrote them (restricted
    scoring; baselines runs since they are written) and every answer is a label."""
    if predictions is None or not {f"{prefix}{label}" for label in labels} <= set(predictions):
        return None
    if not predictions[[answered, "label"]].isin(labels).to_numpy().all():
        return None
    return forecast_of(predictions, labels, prefix, answered)


def _model_runs(run_dir: Path, llm_name: str | None) -> list[ModelRun]:
    split = SplitSummary.read(run_dir / "split.json")
    labels = [str(label) for label in split.labels]
    common = {
        "run_dir": run_dir,
        "seed": int(split.seed),
        "train_rows": sum(split.rows["train"].values()),
        "test_rows": sum(split.rows["test"].values()),
        "fingerprint": split.split_fingerprint,
    }
    predictions = None
    if (run_dir / "predictions.csv").exists():  # as text: an unparsed generation ("") must not turn 1 into 1.0
        predictions = pd.read_csv(run_dir / "predictions.csv", dtype=str, keep_default_na=False)
    correct = lambda column: (  # noqa: E731
        None if predictions is None else (predictions[column] == predictions["label"]).to_numpy()
    )
    if run_kind(run_dir) is not RunKind.BASELINES:  # an LLM: a train run or an HPO refit
        llm = TrainMetrics.read(run_dir / "metrics.json")
        return [ModelRun(llm_name, "llm", train_accuracy=llm.train.accuracy, test_accuracy=llm.test.accuracy,
                         test_macro_f1=llm.test.macro_f1, seconds=llm.train_seconds,
                         correct=correct("predicted"), forecast=_forecast(predictions, "predicted", "prob_", labels),
                         **common)]  # fmt: skip
    return [
        ModelRun(NAMES.get(key, key), "baseline", train_accuracy=m.train_accuracy, test_accuracy=m.test_accuracy,
                 test_macro_f1=m.test_macro_f1, seconds=m.fit_seconds,
                 correct=correct(key) if predictions is not None and key in predictions else None,
                 forecast=_forecast(predictions, key, f"{key}_prob_", labels), **common)
        for key, m in BaselinesMetrics.read(run_dir / "metrics.json").models.items()
    ]  # fmt: skip


def runs_table(results: list[ModelRun]) -> pd.DataFrame:
    """One row per model per run (what `aggregate` summarizes)."""
    return pd.DataFrame([{
        "Model": r.model, "Train rows": r.train_rows, "Seed": r.seed, "Test rows": r.test_rows,
        "Train Accuracy": r.train_accuracy,
        "Test Accuracy": r.test_accuracy, "Test macro-F1": r.test_macro_f1, "Seconds": r.seconds,
        "Split": r.fingerprint, "Run": str(r.run_dir),
    } for r in results])  # fmt: skip
