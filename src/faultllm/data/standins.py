"""Stand-in data a plan renders prompts from when the real files are absent."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from faultllm.config.groups import DataConfig
from faultllm.data.datasets import HST_FEATURES
from faultllm.data.tables import LABEL
from faultllm.runtime.errors import FaultLLMError
from faultllm.runtime.files import write_csv
from faultllm.runtime.paths import PROJECT_ROOT

TEP_STAND_IN = PROJECT_ROOT / "data" / "tep_sim"


def stand_in_data(data_cfg: DataConfig, cache_dir: str) -> tuple[DataConfig, str | None]:
    """`data_cfg` itself when it names its files; without data.path, TEP rows from the bundled simulation
    and HST rows from a synthetic HST-shaped table, at the protocol's sizes (with a note saying so).

    Prompts of min-max scaled rows are as long whatever the values; unscaled, the stand-in's raw values
    (TEP: the simulation's, HST: 0/1 and [0, 1)) set the lengths."""
    if data_cfg.path:
        return data_cfg, None
    if data_cfg.loader == "tep":
        note = f"data.path is not set: TEP rows from the bundled simulation ({TEP_STAND_IN.name}), same schema"
        return _with_path(data_cfg, str(TEP_STAND_IN)), note
    if data_cfg.loader == "hst":
        note = "data.path is not set: a synthetic HST-shaped table (46 features: 31 binary, 15 in [0, 1))"
        return _with_path(data_cfg, str(synthetic_hst(cache_dir))), note
    raise FaultLLMError("data.path is not set: the rows to plan for are needed (data=csv data.path=TABLE)")


def _with_path(data_cfg: DataConfig, path: str) -> DataConfig:
    return replace(data_cfg, path=path)


def synthetic_hst(cache_dir: str, rows: int = 2000, seed: int = 0) -> Path:
    """A CSV in the HST layout (header 0..45,label): 31 binary and 15 float features, labels 0/1, seeded."""
    rng = np.random.default_rng(seed)
    values = np.hstack([rng.integers(0, 2, size=(rows, 31)), rng.uniform(size=(rows, 15)).round(6)])
    frame = pd.DataFrame(values, columns=HST_FEATURES)
    frame[LABEL] = rng.integers(0, 2, size=rows)
    digest = hashlib.sha1(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()).hexdigest()[:10]
    path = Path(cache_dir).expanduser() / "stand_in" / f"hst-synthetic-{digest}.csv"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_csv(frame, path, durable=False)  # a stand-in, rebuilt when missing
    return path
