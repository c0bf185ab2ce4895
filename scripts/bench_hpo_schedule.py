"""Benchmark: the same search (space, seeds, trials) under hpo.schedule=full and a faster schedule, on CPU.

    python scripts/bench_hpo_schedule.py                                  # tiny model, a learnable table, asha
    python scripts/bench_hpo_schedule.py --task tep                       # the bundled TEP (the tiny model stays at chance)
    python scripts/bench_hpo_schedule.py --schedule race --seeds 0,1,2 hpo.n_trials=12

`full` is the study's protocol (hpo.pruner=none, the default: every fold-epoch of every trial); add
hpo.pruner=median to compare with the same-fold median pruner instead. The default task is a table the tiny
model learns within a fold's 3 epochs at some of the space's learning rates (four classes, decided by two of
four features), so the trials differ and the refit accuracy says whether the schedule kept a good trial; on
TEP the tiny model learns nothing in a search's budget and every trial is at chance.

Per seed and schedule: the fold-epochs the search trained, its wall time, the chosen trial and the refit's
test accuracy; then the faster schedule's fold-epochs and time as ratios of full's, and the refit accuracies'
mean and standard deviation over the seeds (the across-seed noise the faster schedule is judged against).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import pandas as pd

DEFAULTS = ["model=tiny", "progress=false", "hpo.n_trials=30", "hpo.folds=5", "hpo.min_epochs=1", "eval.batch_size=32",
            "hpo.space.lora_r.high=16"]  # fmt: skip
TASKS = {
    "learnable": ["data=csv", "data.train_size=160", "data.test_size=80", "trainer.epochs=3"],
    "tep": ["data.train_size=120", "data.test_size=60", "trainer.epochs=2"],
}


def learnable_table(path: Path, rows: int = 400, seed: int = 0) -> Path:
    """Four features in [0, 1] (two decimals): `a` and `b` each low (0.1) or high (0.9), their pair the label
    (four classes, 2 * a_high + b_high); `c` and `d` noise. The tiny model learns it within a fold's 3 epochs
    at a learning rate near 3e-3 and not at 1e-3, so the trials of the study's space differ."""
    rng = np.random.default_rng(seed)
    table = pd.DataFrame(rng.uniform(size=(rows, 4)).round(2), columns=list("abcd"))
    high_a, high_b = table["a"] > 0.5, table["b"] > 0.5
    table["label"] = 2 * high_a.astype(int) + high_b.astype(int)
    table["a"], table["b"] = np.where(high_a, 0.9, 0.1), np.where(high_b, 0.9, 0.1)
    table.to_csv(path, index=False)
    return path


def run_search(overrides: list[str], schedule: str, seed: int) -> dict:
    """One search and its refit: fold-epochs trained, seconds, the chosen trial, its refit's test accuracy."""
    from faultllm.config.load import load_config
    from faultllm.jobs.hpo import run

    cfg = load_config("hpo", [*overrides, f"hpo.schedule={schedule}", f"seed={seed}"])
    started = time.perf_counter()
    with TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        summary = run(cfg, tmp)
    protocol = summary["trials_finished"] * cfg.hpo.folds * cfg.trainer.epochs
    return {
        "fold_epochs": round(summary["fold_epochs_trained_fraction"] * protocol),
        "protocol": protocol,
        "seconds": time.perf_counter() - started,
        "best_trial": summary["best_trial"],
        "cv_accuracy": summary["hpo"]["val_accuracy"],  # the chosen trial's, its folds' mean
        "accuracy": summary["final"]["test"]["accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedule", default="asha", choices=["asha", "race"])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated")
    parser.add_argument("--task", default="learnable", choices=list(TASKS))
    args, overrides = parser.parse_known_args()
    with TemporaryDirectory() as tmp:
        table = [f"data.path={learnable_table(Path(tmp) / 'learnable.csv')}"] if args.task == "learnable" else []
        compare(args, [*DEFAULTS, *TASKS[args.task], *table, *overrides])


def compare(args: argparse.Namespace, overrides: list[str]) -> None:
    print(" ".join(overrides))
    results = {name: [] for name in ("full", args.schedule)}
    for seed in [int(seed) for seed in args.seeds.split(",")]:
        for name in results:
            found = run_search(overrides, name, seed)
            results[name].append(found)
            print(f"seed {seed} {name:5s}: {found['fold_epochs']:4d} of {found['protocol']} fold-epochs, "
                  f"{found['seconds']:7.1f} s, best trial {found['best_trial']} (validation accuracy {found['cv_accuracy']:.3f} "
                  f"over the folds), refit test accuracy {found['accuracy']:.3f}")  # fmt: skip
    report(results, args.schedule)


def report(results: dict[str, list[dict]], schedule: str) -> None:
    total = {
        name: {key: sum(r[key] for r in runs) for key in ("fold_epochs", "seconds")} for name, runs in results.items()
    }
    accuracy = {name: np.array([r["accuracy"] for r in runs]) for name, runs in results.items()}
    protocol = sum(r["protocol"] for r in results["full"])  # every fold-epoch of every trial
    print(f"{schedule} / full: fold-epochs {total[schedule]['fold_epochs'] / total['full']['fold_epochs']:.2f}, "
          f"wall time {total[schedule]['seconds'] / total['full']['seconds']:.2f}; of the unpruned protocol: "
          f"full {total['full']['fold_epochs'] / protocol:.2f}, {schedule} {total[schedule]['fold_epochs'] / protocol:.2f}")  # fmt: skip
    for name, runs in results.items():
        print(
            f"chosen trial's validation accuracy under {name:5s}: mean {np.mean([r['cv_accuracy'] for r in runs]):.3f}"
        )
    for name, values in accuracy.items():
        print(f"refit test accuracy under {name:5s}: mean {values.mean():.3f}, sd {values.std(ddof=1) if len(values) > 1 else 0:.3f} "
              f"over {len(values)} seeds")  # fmt: skip
    difference = accuracy[schedule] - accuracy["full"]
    print(f"{schedule} - full, same seeds: mean {difference.mean():+.3f} (per seed {np.round(difference, 3).tolist()})")
    if len(accuracy["full"]) > 1:
        noise = accuracy["full"].std(ddof=1)
        verdict = "within" if abs(difference.mean()) <= noise else "outside"
        print(f"|mean difference| {abs(difference.mean()):.3f} is {verdict} full's across-seed sd {noise:.3f}")


if __name__ == "__main__":
    main()
