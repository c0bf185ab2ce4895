"""Benchmark: loading the full-scale TEP training data, first time (parse + cache) vs cached.

    python scripts/bench_tep_load.py --dir /tmp/tep_full      # writes ~2.3 GB of synthetic .RData once
    python scripts/bench_tep_load.py --trace                  # also: peak RSS by line of loaders.py

Writes synthetic Rieth training tables of the real size (250,000 + 5,000,000 rows x 55)
as .RData, then times `faultllm.loaders.load` for labels 0, 1, 4, 5 in fresh processes:
the first load parses the .RData and writes the columnar cache; the cached load reads only
the requested labels from Parquet. The naive way (parse the .RData every time, as the
study's code did) is the first-load number.

Memory is the peak RSS of the load itself (process included: the high-water mark is reset
after the imports, so nothing the parent or the imports did counts; `ru_maxrss` would carry
a forking parent's peak into the child) beside the baseline after the imports. What moves
it is pinned in the children's environment and printed: Arrow's memory pool, Arrow's and
OpenMP's thread counts, glibc's malloc arenas.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

FEATURES = [f"xmeas_{i}" for i in range(1, 42)] + [f"xmv_{i}" for i in range(1, 12)]
PINNED = {
    "ARROW_DEFAULT_MEMORY_POOL": "mimalloc",
    "OMP_NUM_THREADS": "2",
    "ARROW_IO_THREADS": "2",
    "MALLOC_ARENA_MAX": "2",
}
GIB = 2**30


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


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


class LineTracer(threading.Thread):
    """Samples RSS every 2 ms and charges it to the line of loaders.py the main thread is in."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.main = threading.main_thread().ident
        self.peaks: dict[str, int] = {}
        self.done = threading.Event()

    def run(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not self.done.wait(0.002):
            with open("/proc/self/statm") as statm:
                rss = int(statm.read().split()[1]) * page
            frame, where = sys._current_frames().get(self.main), "(outside loaders.py)"
            while frame is not None:
                if frame.f_code.co_filename.endswith("loaders.py"):
                    where = f"{frame.f_code.co_name}:{frame.f_lineno}"
                    break
                frame = frame.f_back
            self.peaks[where] = max(self.peaks.get(where, 0), rss)


def timed_load(directory: Path, cache: Path, trace: bool) -> dict:
    import pyarrow as pa

    from faultllm.config import load_config
    from faultllm.loaders import load

    cfg = load_config("prepare", ["data=tep", f"data.path={directory}", f"cache_dir={cache}"])
    pool = pa.default_memory_pool()
    baseline = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset the high-water mark (VmHWM) to the current RSS
    tracer = LineTracer() if trace else None
    if tracer:
        tracer.start()
    start, cpu_start = time.perf_counter(), time.process_time()
    raw = load(cfg.data)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    if tracer:
        tracer.done.set()
        tracer.join()
    result = {
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),  # all threads; wall time minus waiting, when contended
        "peak_rss_gib": round(_status_kib("VmHWM") / 2**20, 2),
        "baseline_rss_gib": round(baseline / 2**20, 2),
        "rss_after_gib": round(_status_kib("VmRSS") / 2**20, 2),
        "returned_gib": round(int(raw.pool.memory_usage(deep=True).sum()) / GIB, 2),
        "rows_loaded": len(raw.pool),
        "arrow_pool": f"{pool.backend_name}, peak {pool.max_memory() / GIB:.2f} GiB, "
        f"held after {pool.bytes_allocated() / GIB:.2f} GiB",
        "threads": f"arrow cpu {pa.cpu_count()}, io {pa.io_thread_count()}",
    }
    if tracer:
        result["peak_by_line_gib"] = {
            k: round(v / GIB, 2) for k, v in sorted(tracer.peaks.items(), key=lambda kv: kv[1])
        }
    return result


def run_child(args: argparse.Namespace, *flags: str) -> str:
    command = [sys.executable, __file__, "--dir", str(args.dir), *flags]
    env = {**os.environ, **PINNED}
    return subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, default=Path("/tmp/tep_full"))
    parser.add_argument("--trace", action="store_true", help="peak RSS by line of faultllm/loaders.py")
    parser.add_argument("--repeat", type=int, default=5, help="cached loads, each in a fresh process")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--write", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cache = args.dir / "cache"
    if args.write:
        write_synthetic(args.dir)
        return 0
    if args.child:
        print(json.dumps(timed_load(args.dir, cache, args.trace)))
        return 0
    print(run_child(args, "--write"), end="", flush=True)  # in a child: this process stays small
    print("pinned: " + ", ".join(f"{k}={v}" for k, v in PINNED.items()), flush=True)
    shutil.rmtree(cache, ignore_errors=True)
    flags = ["--child", *(["--trace"] if args.trace else [])]
    runs = []
    for phase in ["first load (parse .RData, write cache)"] + [f"cached load {i + 1}" for i in range(args.repeat)]:
        runs.append(json.loads(run_child(args, *flags).strip().splitlines()[-1]))
        print(f"{phase:<40} {runs[-1]}", flush=True)
    first, cached = runs[0], runs[1:]
    seconds = sorted(run["seconds"] for run in cached)
    cpu = sorted(run["cpu_seconds"] for run in cached)
    print(
        f"first load: {first['seconds']:.2f} s ({first['cpu_seconds']:.2f} s CPU), peak RSS {first['peak_rss_gib']:.2f} GiB\n"
        f"cached load ({len(cached)} fresh processes): {seconds[0]:.2f} s best, {seconds[len(seconds) // 2]:.2f} s "
        f"median ({cpu[len(cpu) // 2]:.2f} s CPU), peak RSS {max(run['peak_rss_gib'] for run in cached):.2f} GiB "
        f"at most (baseline after imports {cached[0]['baseline_rss_gib']:.2f} GiB; "
        f"returned frame {cached[0]['returned_gib']:.2f} GiB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
