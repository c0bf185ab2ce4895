"""Simulate a small Tennessee Eastman data set in the Rieth et al. (2017) schema.

    python scripts/simulate_tep.py --out data/tep_sim          # needs: pip install -e '.[sim]'

Closed-loop runs of the `tep-studio` simulator (Ricker's decentralized controller).
Training runs last 25 h with the fault switched on after 1 h (sample 20), testing runs
48 h with the fault after 8 h (sample 160); one sample every 3 minutes, as in the Rieth
files. Every run gets its own nonzero measurement-noise seed (seed 0 is broken in
tep-studio). Writes the four Rieth tables as Parquet (float32), which
`faultllm data prepare data=tep data.path=OUT` reads like the real files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

SAMPLE_HOURS = 0.05  # 3 minutes
CONTROL_INTERVAL_HOURS = 0.01
# (table name, hours simulated, fault onset in hours)
PARTS = {"Training": (25.0, 1.0), "Testing": (48.0, 8.0)}
XMEAS = [f"xmeas_{i}" for i in range(1, 42)]
XMV = [f"xmv_{i}" for i in range(1, 12)]


def simulate_run(fault: int, seed: int, hours: float, onset_hours: float) -> np.ndarray:
    """One closed-loop run -> array (samples, 52): 41 measurements then 11 manipulated variables."""
    from tep_studio import ClosedLoopSimulation

    def disturbances(time_h: float) -> np.ndarray:
        idv = np.zeros(28)
        if fault and time_h >= onset_hours:
            idv[fault - 1] = 1.0
        return idv

    steps_per_sample = round(SAMPLE_HOURS / CONTROL_INTERVAL_HOURS)
    result = ClosedLoopSimulation(control_interval=CONTROL_INTERVAL_HOURS, horizon=hours).run(
        seed=float(seed), disturbance_schedule=disturbances, record_every=steps_per_sample
    )
    if result.terminated:
        raise RuntimeError(f"fault {fault} seed {seed}: the plant shut down at {result.final_time:.2f} h")
    # The Rieth files hold XMV 1-11; the 12th manipulated variable (agitator speed) is not recorded.
    rows = np.asarray([np.concatenate([r.measurements, r.implemented_action[:11]]) for r in result.results])
    return round_significant(rows[: round(hours / SAMPLE_HOURS)], digits=5)


def round_significant(values: np.ndarray, digits: int) -> np.ndarray:
    """Round to `digits` significant digits, the precision of the Rieth files (and half the Parquet size)."""
    magnitude = np.floor(np.log10(np.abs(values) + 1e-30))
    scale = 10.0 ** (digits - 1 - magnitude)
    return np.round(values * scale) / scale


def simulate_table(faults: list[int], runs: int, hours: float, onset_hours: float, seed_base: int) -> pd.DataFrame:
    frames = []
    for fault in faults:
        for run in range(1, runs + 1):
            values = simulate_run(fault, seed=seed_base + 100 * fault + run, hours=hours, onset_hours=onset_hours)
            frame = pd.DataFrame(values.astype(np.float32), columns=XMEAS + XMV)
            frame.insert(0, "sample", np.arange(1, len(frame) + 1, dtype=np.int32))
            frame.insert(0, "simulationRun", np.int32(run))
            frame.insert(0, "faultNumber", np.int32(fault))
            frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/tep_sim"))
    parser.add_argument("--faults", type=int, nargs="+", default=[1, 4, 5])
    parser.add_argument("--train-runs", type=int, default=5)
    parser.add_argument("--test-runs", type=int, default=1)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for part, (hours, onset) in PARTS.items():
        runs = args.train_runs if part == "Training" else args.test_runs
        seed_base = 1 if part == "Training" else 50_001
        tables = {
            f"TEP_FaultFree_{part}": simulate_table([0], runs, hours, onset, seed_base),
            f"TEP_Faulty_{part}": simulate_table(args.faults, runs, hours, onset, seed_base),
        }
        for name, table in tables.items():
            path = args.out / f"{name}.parquet"
            table.to_parquet(path, index=False, compression="zstd", compression_level=19)
            print(f"{path}: {len(table):,} rows, {path.stat().st_size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
