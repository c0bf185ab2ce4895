from __future__ import annotations

import numpy as np
import pytest

from faultllm.data.splits import fit_scaler, make_split, prepared_split, scale_split
from faultllm.data.tables import GROUP, LABEL
from faultllm.runtime.errors import FaultLLMError


def test_tep_paper_protocol_sizes(rieth_dir, compose_cfg):
    cfg = compose_cfg(
        "prepare", ["experiment=tep_paper", f"data.path={rieth_dir}", "data.train_size=40", "data.test_size=16"]
    )
    split = make_split(cfg.data, cfg.seed)
    assert split.counts() == {"train": {"0": 10, "1": 10, "4": 10, "5": 10}, "test": {"0": 4, "1": 4, "4": 4, "5": 4}}
    assert len(split.features) == 52


def test_bundled_default_gives_the_paper_sizes(compose_cfg):
    split = make_split(compose_cfg("prepare").data, 42)
    assert len(split.train) == 400 and len(split.test) == 160
    assert set(split.train[LABEL]) == {0, 1, 4, 5}


def test_hst_paper_protocol_is_balanced_and_disjoint(hst_csv, compose_cfg):
    cfg = compose_cfg("prepare", ["experiment=hst_paper", f"data.path={hst_csv}"])
    split = make_split(cfg.data, cfg.seed)
    assert split.counts() == {"train": {"0": 120, "1": 120}, "test": {"0": 30, "1": 30}}
    rows = lambda frame: {tuple(r) for r in frame[split.features].to_numpy()}  # noqa: E731
    assert not rows(split.train) & rows(split.test)


def test_sampling_is_deterministic_for_a_seed(hst_csv, compose_cfg):
    cfg = compose_cfg("prepare", ["data=hst", f"data.path={hst_csv}"])
    first, again, other = make_split(cfg.data, 1), make_split(cfg.data, 1), make_split(cfg.data, 2)
    assert first.fingerprint() == again.fingerprint()
    assert first.train.equals(again.train)
    assert first.fingerprint() != other.fingerprint()


def test_without_testing_files_whole_runs_are_held_out(rieth_dir, compose_cfg):
    cfg = compose_cfg(
        "prepare",
        [
            "data=tep",
            f"data.path={rieth_dir}",
            "data.use_testing_files=false",
            "data.train_size=20",
            "data.test_size=8",
        ],
    )
    split = make_split(cfg.data, 0)
    assert not set(split.train[GROUP]) & set(split.test[GROUP])


def test_scaler_is_fitted_on_train_only(compose_cfg):
    cfg = compose_cfg("prepare")
    raw_split = make_split(cfg.data, cfg.seed)
    scaled, scaler = prepared_split(cfg.data, cfg.seed)
    train_values = scaled.train[scaled.features].to_numpy()
    assert np.allclose(train_values.min(axis=0)[train_values.max(axis=0) > 0], 0)
    assert np.allclose(scaler.minimum, raw_split.train[raw_split.features].min().to_numpy())
    assert np.allclose(scaler.maximum, raw_split.train[raw_split.features].max().to_numpy())
    # test rows are transformed with the training min/max, so they may leave [0, 1]
    test_values = scaled.test[scaled.features].to_numpy()
    assert test_values.min() < 0 or test_values.max() > 1


def test_scale_range_and_off_switch(compose_cfg):
    split = make_split(compose_cfg("prepare").data, 0)
    scaled, _ = scale_split(split, True, [-1, 1])
    assert scaled.train[split.features].to_numpy().min() == pytest.approx(-1)
    unscaled, scaler = scale_split(split, False, [0, 1])
    assert scaler is None and unscaled is split
    with pytest.raises(FaultLLMError, match="low < high"):
        fit_scaler(split.train, split.features, [1, 0])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.labels=[0,7]"], "label 7 does not occur"),
        (["data.train_size=401"], "cannot be balanced over 4 labels"),
        (["data.train_size=40000"], "label 0 has 2500 usable rows, 10000 needed"),
        (["data.labels=[0]"], "at least two distinct labels"),
    ],
)
def test_bad_requests(compose_cfg, overrides, message):
    with pytest.raises(FaultLLMError, match=message):
        make_split(compose_cfg("prepare", overrides).data, 0)
