"""Benchmark: loading the full-scale TEP training data, first time (parse + cache) vs cached.

    python scripts/bench_tep_load.py --dir /tmp/tep_full      # writes ~2.3 GB of synthetic .RData once
    python scripts/bench_tep_load.py --trace                  # also: peak RSS by line of faultllm/data/

Writes synthetic Rieth training tables of the real size (250,000 + 5,000,000 rows x 55)
as .RData, then times `faultllm.data.datasets.load` for labels 0, 1, 4, 5 in fresh processes:
the first load parses the .RData and writes the column cache; the cached load reads only
the requested labels' spans of each column. The naive way (parse the .RData every time, as
the study's code did) is the first-load number.

Memory is the peak RSS of the load itself (process included: the high-water mark is reset
after the imports, so nothing the parent or the imports did counts; `ru_maxrss` would carry
a forking parent's peak into the child) beside the baseline after the imports. Thread and
malloc-arena counts are pinned in the children's environment and printed.

Beside each cached load, a fresh process allocates and fills an array the size of the
returned features, timed the same way: no loader that returns the frame does less. On a
virtual machine whose host supplies memory pages on first touch, that alone moves several-fold
from one process to the next (and is cheaper right after another process freed the same amount),
so it is printed to show how much of a load's spread is the machine's, not the loader's.
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
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

FEATURES = [f"xmeas_{i}" for i in range(1, 42)] + [f"xmv_{i}" for i in range(1, 12)]
PINNED = {"OMP_NUM_THREADS": "2", "MALLOC_ARENA_MAX": "2"}
THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
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
    """Samples RSS every 2 ms and charges it to the line of faultllm/data/ the main thread is in."""

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
            frame, where = sys._current_frames().get(self.main), "(outside faultllm/data/)"
            while frame is not None:
                if Path(frame.f_code.co_filename).parent.parts[-2:] == ("faultllm", "data"):
                    where = f"{Path(frame.f_code.co_filename).stem}.{frame.f_code.co_name}:{frame.f_lineno}"
                    break
                frame = frame.f_back
            self.peaks[where] = max(self.peaks.get(where, 0), rss)


def _timed(work: Callable[[], object]) -> tuple[object, dict]:
    """Run `work`, timing it; the high-water mark is reset first, so the peak is the work's own."""
    baseline = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset the high-water mark (VmHWM) to the current RSS
    start, cpu_start = time.perf_counter(), time.process_time()
    result = work()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return result, {
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),  # all threads; wall time minus waiting, when contended
        "peak_rss_gib": round(_status_kib("VmHWM") / 2**20, 2),
        "baseline_rss_gib": round(baseline / 2**20, 2),
    }


def timed_load(directory: Path, cache: Path, trace: bool) -> dict:
    from faultllm.config.load import load_config
    from faultllm.data.datasets import load

    cfg = load_config("prepare", ["data=tep", f"data.path={directory}", f"cache_dir={cache}"])
    tracer = LineTracer() if trace else None
    if tracer:
        tracer.start()
    raw, result = _timed(lambda: load(cfg.data))
    if tracer:
        tracer.done.set()
        tracer.join()
    result |= {
        "rss_after_gib": round(_status_kib("VmRSS") / 2**20, 2),
        "returned_gib": round(int(raw.pool.memory_usage(deep=True).sum()) / GIB, 2),
        "rows_loaded": len(raw.pool),
    }
    if tracer:
        result["peak_by_line_gib"] = {
            k: round(v / GIB, 2) for k, v in sorted(tracer.peaks.items(), key=lambda kv: kv[1])
        }
    return result


def timed_floor(rows: int) -> dict:
    """Allocate and fill what the load returns (rows x 52 float64, column-major): no load can do less."""
    return _timed(lambda: np.empty((rows, len(FEATURES)), order="F").fill(0.0))[1]


def run_child(args: argparse.Namespace, *flags: str) -> str:
    command = [sys.executable, __file__, "--dir", str(args.dir), *flags]
    env = {**os.environ, **PINNED}
    return subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, default=Path("/tmp/tep_full"))
    parser.add_argument("--trace", action="store_true", help="peak RSS by line of faultllm/data/")
    parser.add_argument("--repeat", type=int, default=7, help="cached loads, each in a fresh process")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--floor", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--write", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cache = args.dir / "cache"
    if args.write:
        write_synthetic(args.dir)
        return 0
    if args.child:
        print(json.dumps(timed_floor(args.floor) if args.floor else timed_load(args.dir, cache, args.trace)))
        return 0
    print(run_child(args, "--write"), end="", flush=True)  # in a child: this process stays small
    thp = THP.read_text().strip() if THP.exists() else "unknown"
    print("pinned: " + ", ".join(f"{k}={v}" for k, v in PINNED.items()) + f"; transparent hugepages {thp}", flush=True)
    shutil.rmtree(cache, ignore_errors=True)
    flags = ["--child", *(["--trace"] if args.trace else [])]
    first = json.loads(run_child(args, *flags).strip().splitlines()[-1])
    print(f"{'first load (parse .RData, write cache)':<28} {first}", flush=True)
    loads, floors = [], []
    for i in range(args.repeat):
        loads.append(json.loads(run_child(args, *flags).strip().splitlines()[-1]))
        floors.append(json.loads(run_child(args, "--child", "--floor", str(loads[-1]["rows_loaded"]))))
        print(f"cached load {i + 1:<16} {loads[-1]}\n{'  allocate + fill alone':<28} {floors[-1]}", flush=True)
    load_s, floor_s = _median([r["seconds"] for r in loads]), _median([r["seconds"] for r in floors])
    print(
        f"first load: {first['seconds']:.2f} s ({first['cpu_seconds']:.2f} s CPU), peak RSS {first['peak_rss_gib']:.2f} GiB\n"
        f"cached load ({len(loads)} fresh processes): median {load_s:.2f} s (range {min(r['seconds'] for r in loads):.2f}-"
        f"{max(r['seconds'] for r in loads):.2f}; {_median([r['cpu_seconds'] for r in loads]):.2f} s CPU), "
        f"peak RSS {max(r['peak_rss_gib'] for r in loads):.2f} GiB at most (baseline after imports "
        f"{loads[0]['baseline_rss_gib']:.2f} GiB; returned frame {loads[0]['returned_gib']:.2f} GiB)\n"
        f"allocate + fill the returned features alone: median {floor_s:.2f} s (range "
        f"{min(r['seconds'] for r in floors):.2f}-{max(r['seconds'] for r in floors):.2f}); "
        f"first load / cached load: {first['seconds'] / load_s:.0f}x"
    )
    return 0


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


if __name__ == "__main__":
    sys.exit(main())
