"""Read the supported data sets into one shape, `RawData`: HST, any table, and TEP (tep.py).

Loaders only read and validate; leakage guards that need the data set's semantics
(TEP's pre-fault rows) are applied by its loader because only the loader knows them, and
everything generic (sampling, splitting, scaling) lives in `splits.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from faultllm.config.groups import DataConfig
from faultllm.data.tables import (
    GROUP,
    LABEL,
    RawData,
    existing_path,
    normalize_labels,
    read_data_table,
    require_columns,
    validate_features,
)
from faultllm.data.tep import load_tep
from faultllm.runtime.errors import FaultLLMError

HST_FEATURES = [str(i) for i in range(46)]


def load(data_cfg: DataConfig) -> RawData:
    loaders: dict[str, Callable[[DataConfig], RawData]] = {"hst": load_hst, "tep": load_tep, "table": load_table}
    return loaders[data_cfg.loader](data_cfg)


def load_hst(data_cfg: DataConfig) -> RawData:
    path = existing_path(data_cfg.path, "data.path")
    frame = read_data_table(path)
    if list(frame.columns) != HST_FEATURES + [LABEL]:
        shown = ",".join(map(str, frame.columns[:4])) + ",...," + ",".join(map(str, frame.columns[-2:]))
        raise FaultLLMError(f"{path}: header is {shown}; expected the HST header 0,1,...,45,label")
    validate_features(frame, HST_FEATURES, path, data_cfg.allow_missing)
    frame[LABEL] = normalize_labels(frame[LABEL], path, LABEL)
    return RawData(pool=frame, test_pool=None, features=list(HST_FEATURES), source=str(path))


def load_table(data_cfg: DataConfig) -> RawData:
    path = existing_path(data_cfg.path, "data.path")
    label_column, group_column = data_cfg.label_column, data_cfg.group_column

    def read(file: Path) -> pd.DataFrame:
        frame = read_data_table(file)
        require_columns(frame, [label_column], file, f"a label column {label_column!r} (data.label_column)")
        features = list(data_cfg.feature_columns or [])
        if not features:
            excluded = {label_column, group_column, *data_cfg.drop_columns}
            features = [c for c in frame.columns if c not in excluded]
        require_columns(frame, features, file, "the columns in data.feature_columns")
        validate_features(frame, features, file, data_cfg.allow_missing)
        out = frame[features].copy()
        out[LABEL] = normalize_labels(frame[label_column], file, label_column)
        if group_column:
            require_columns(frame, [group_column], file, f"a group column {group_column!r} (data.group_column)")
            out[GROUP] = frame[group_column].to_numpy()
        return out

    pool = read(path)
    test_pool = read(existing_path(data_cfg.test_path, "data.test_path")) if data_cfg.test_path else None
    features = [c for c in pool.columns if c not in (LABEL, GROUP)]
    if test_pool is not None and [c for c in test_pool.columns if c not in (LABEL, GROUP)] != features:
        raise FaultLLMError(f"{data_cfg.test_path}: feature columns differ from {path}")
    return RawData(pool=pool, test_pool=test_pool, features=features, source=str(path))
