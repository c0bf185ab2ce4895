"""Benchmark: loading the full-scale TEP training data, first time (parse + cache) vs cached.

    python scripts/bench_tep_load.py --dir /tmp/tep_full      # writes ~2.3 GB of synthetic .RData once

Writes synthetic Rieth training tables of the real size (250,000 + 5,000,000 rows x 55)
as .RData, then times `faultllm.loaders.load` for labels 0, 1, 4, 5 in fresh
processes: the first load parses the .RData and writes the columnar cache; the cached
load reads only the requested labels from Parquet. Peak memory is the process's maxrss.
The naive way (parse the .RData every time, as the study's code did) is the first-load number.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

FEATURES = [f"xmeas_{i}" for i in range(1, 42)] + [f"xmv_{i}" for i in range(1, 12)]


def write_synthetic(directory: Path) -> None:
    import pyreadr

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for stem, name, faults in (
        ("TEP_FaultFree_Training", "fault_free_training", [0]),
        ("TEP_Faulty_Training", "faulty_training", list(range(1, 21))),
    ):
        path = directory / f"{stem}.RData"
        if path.exists():
            continue
        runs, samples = 500, 500
        n = len(faults) * runs * samples
        frame = pd.DataFrame(rng.normal(size=(n, 52)), columns=FEATURES)
        frame.insert(0, "sample", np.tile(np.arange(1, samples + 1, dtype=np.float64), len(faults) * runs))
        frame.insert(
            0, "simulationRun", np.tile(np.repeat(np.arange(1, runs + 1, dtype=np.float64), samples), len(faults))
        )
        frame.insert(0, "faultNumber", np.repeat(np.asarray(faults, dtype=np.float64), runs * samples))
        print(f"writing {path} ({n:,} rows)", flush=True)
        pyreadr.write_rdata(str(path), frame, df_name=name)
        del frame


def timed_load(directory: Path, cache: Path) -> dict:
    from faultllm.config import compose
    from faultllm.loaders import load

    cfg = compose("prepare", ["data=tep", f"data.path={directory}", f"cache_dir={cache}"])
    start = time.perf_counter()
    raw = load(cfg.data)
    seconds = time.perf_counter() - start
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"seconds": round(seconds, 2), "peak_rss_gib": round(peak_gib, 2), "rows_loaded": len(raw.pool)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, default=Path("/tmp/tep_full"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cache = args.dir / "cache"
    if args.child:
        print(json.dumps(timed_load(args.dir, cache)))
        return 0
    write_synthetic(args.dir)
    shutil.rmtree(cache, ignore_errors=True)
    results = {}
    for phase in ("first load (parse .RData, write cache)", "cached load", "cached load again"):
        out = subprocess.run(
            [sys.executable, __file__, "--dir", str(args.dir), "--child"], capture_output=True, text=True, check=True
        )
        results[phase] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{phase:<40} {results[phase]}", flush=True)
    first, cached = results["first load (parse .RData, write cache)"], results["cached load"]
    print(
        f"cached load is {first['seconds'] / cached['seconds']:.1f}x faster, "
        f"peak memory {first['peak_rss_gib']:.2f} -> {cached['peak_rss_gib']:.2f} GiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
