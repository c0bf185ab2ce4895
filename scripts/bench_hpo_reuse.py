"""Benchmark: HPO seconds per fold when each worker loads the base model once vs once per fold.

    python scripts/bench_hpo_reuse.py                       # tiny model, bundled TEP, CPU
    python scripts/bench_hpo_reuse.py model=llama2_7b_chat  # on a GPU box: the load is 4-bit quantization of 13 GB

Both ways run the same study (same seed, trials and folds) and must give the same trial values.
"""

from __future__ import annotations

import sys
import time
from tempfile import TemporaryDirectory


def run_study(overrides: list[str], reuse: bool) -> tuple[float, float, int, list[float]]:
    """(seconds per fold, seconds spent loading base models, loads, trial values)."""
    import contextlib
    import io

    import optuna

    from faultllm.config.load import load_config
    from faultllm.jobs.hpo import run
    from faultllm.llm import build

    spent, load = [0.0, 0], build.load_base_model

    def timed_load(*args):
        start = time.perf_counter()
        try:
            return load(*args)
        finally:
            spent[0], spent[1] = spent[0] + time.perf_counter() - start, spent[1] + 1

    build.load_base_model = timed_load
    cfg = load_config("hpo", [*overrides, f"hpo.reuse_model={reuse}"])
    try:
        with TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
            summary = run(cfg, tmp)
            study = optuna.load_study(study_name=cfg.hpo.study_name, storage=f"sqlite:///{tmp}/study.db")
            values = [trial.value for trial in study.trials]
    finally:
        build.load_base_model = load
    folds = cfg.hpo.n_trials * cfg.hpo.folds
    return summary["search_seconds"] / folds, spent[0], spent[1], values


def main() -> None:
    overrides = [
        "model=tiny", "progress=false", "hpo.n_trials=3", "hpo.folds=3", "trainer.epochs=1", "hpo.refit=false",
        "hpo.schedule=full", "hpo.pruner=none", "data.train_size=120", "data.test_size=40", *sys.argv[1:],
    ]  # fmt: skip
    reload_fold, reload_load, reload_n, reload_values = run_study(overrides, reuse=False)
    reuse_fold, reuse_load, reuse_n, reuse_values = run_study(overrides, reuse=True)
    assert reload_values == reuse_values, (reload_values, reuse_values)
    print(f"{' '.join(overrides)}")
    print(f"load per fold (naive): {reload_fold:6.2f} s per fold, {reload_n} loads, {reload_load:6.2f} s loading")
    print(f"load once per worker:  {reuse_fold:6.2f} s per fold, {reuse_n} load,  {reuse_load:6.2f} s loading")
    print(f"{reload_fold / reuse_fold:.2f}x; identical trial values: {reuse_values}")


if __name__ == "__main__":
    main()
