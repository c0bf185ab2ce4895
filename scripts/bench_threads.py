"""Wall time of `faultllm train model=tiny` and `faultllm baselines` with the default thread budget
(faultllm/runtime/threads.py) against OMP_NUM_THREADS=1 and =2, on a quiet machine and beside one other
CPU-bound process; the metrics of every setting must be identical.

    python scripts/bench_threads.py [--repeats 1] [--out runs/bench_threads]

Reduced sizes (stated in the output): train runs 1 epoch on 80 training and 40 test rows of the bundled
data; baselines runs the study's models on the bundled data with 3 permutation repeats (10 by default).
Acceptance (issue 29): the defaults within 10% of the best setting on the quiet machine and within 25%
beside the other process. Times on a shared machine are noisy: rerun where nothing else runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from faultllm.runtime.threads import POOL_VARIABLES

COMMANDS = {
    "train": ["train", "model=tiny", "progress=false", "trainer.epochs=1", "data.train_size=80", "data.test_size=40"],
    "baselines": ["baselines", "progress=false", "baselines.permutation_repeats=3"],
}
SETTINGS = {"defaults": None, "OMP_NUM_THREADS=1": "1", "OMP_NUM_THREADS=2": "2"}
TOLERANCE = {"quiet": 1.10, "busy": 1.25}
TIMING_WORDS = ("seconds", "runtime", "per_second", "duration", "time")  # keys that differ by design


def environment(omp: str | None) -> dict[str, str]:
    """This environment without any pool variable, plus OMP_NUM_THREADS=omp when given."""
    env = {k: v for k, v in os.environ.items() if k not in (*POOL_VARIABLES, "TOKENIZERS_PARALLELISM")}
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    return env | ({"OMP_NUM_THREADS": omp} if omp else {})


def timed_run(command: str, omp: str | None, run_dir: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "faultllm", *COMMANDS[command], f"hydra.run.dir={run_dir}"],
        env=environment(omp), check=True, capture_output=True, text=True,
    )  # fmt: skip
    return time.perf_counter() - start


def without_timings(value):
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if not any(w in k for w in TIMING_WORDS)}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def metrics(run_dir: Path):
    return without_timings(json.loads((run_dir / "metrics.json").read_text()))


def measure(condition: str, out: Path, repeats: int) -> list[dict]:
    """Every command under every setting: the best of `repeats` wall times, and whether the metrics agree."""
    rows = []
    for command in COMMANDS:
        seconds, reference = {}, None
        for setting, omp in SETTINGS.items():
            run_dirs = [out / condition / command / f"{setting.replace('=', '')}-{i}" for i in range(repeats)]
            seconds[setting] = min(timed_run(command, omp, run_dir) for run_dir in run_dirs)
            reference = reference or metrics(run_dirs[0])
            same = all(metrics(run_dir) == reference for run_dir in run_dirs)
            rows.append({"condition": condition, "command": command, "setting": setting,
                         "seconds": round(seconds[setting], 1), "metrics identical": same})  # fmt: skip
            print(f"{condition:>5} {command:<9} {setting:<18} {seconds[setting]:7.1f} s  metrics identical: {same}")
        ratio = seconds["defaults"] / min(seconds.values())
        verdict = "ok" if ratio <= TOLERANCE[condition] else "FAIL"
        print(
            f"{condition:>5} {command:<9} defaults / best = {ratio:.2f} (limit {TOLERANCE[condition]:.2f}): {verdict}"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_threads"))
    args = parser.parse_args()
    for command, overrides in COMMANDS.items():
        print(f"faultllm {' '.join(overrides)}    ({command})")
    for command in COMMANDS:  # untimed: the first run pays for cold file caches, whichever setting it has
        timed_run(command, None, args.out / "warmup" / command)
    rows = measure("quiet", args.out, args.repeats)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # one other CPU-bound process
    try:
        rows += measure("busy", args.out, args.repeats)
    finally:
        busy.kill()
    (args.out / "bench_threads.json").write_text(json.dumps(rows, indent=2))
    print(f"written to {args.out / 'bench_threads.json'}")


if __name__ == "__main__":
    main()
