"""The typed files a run writes (metrics.json, split.json / summary.json) and the run-kind rule."""

from __future__ import annotations

import json

import pytest

from faultllm.run.kind import RunKind, run_kind
from faultllm.run.records import (
    BaselineMetrics,
    BaselinesMetrics,
    EvaluateMetrics,
    PredictMetrics,
    SplitMetrics,
    SplitSummary,
    TrainMetrics,
    VersionedFile,
)
from faultllm.runtime.errors import FaultLLMError

SUMMARY = SplitSummary(
    rows={"train": {"0": 8, "1": 8}, "test": {"0": 2, "1": 2}},
    labels=["0", "1"],
    features=["a", "b"],
    seed=3,
    split_fingerprint="0123456789abcdef",
    scaler_range=[0.0, 1.0],
)
SCORED = SplitMetrics(
    0.75, 0.7, {"0": 1.0, "1": 0.5}, ["0", "1"], [[2, 0], [1, 1]], 4, loss=0.4, extra={"valid_mass": 1.0}
)
RECORDS = [
    SUMMARY,
    TrainMetrics(
        train=SCORED, test=SCORED, epochs=[{"epoch": 1}], eval_mode="restricted", train_seconds=1.5, split=SUMMARY
    ),
    BaselinesMetrics({"lr": BaselineMetrics(1.0, 0.75, 0.7, fit_seconds=0.1), "knn": BaselineMetrics(0.9, 0.5, 0.4)}),
    EvaluateMetrics(0.5, 0.4, n=4, extra={"valid_mass": 0.9}, eval_mode="generate", source="x.csv", run_dir="r"),
    PredictMetrics(1.0, 1.0, n=2, model="Logistic Regression", input="rows.csv"),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda record: type(record).__name__)
def test_each_file_record_reads_back_equal_with_its_version(record: VersionedFile, tmp_path):
    path = tmp_path / "metrics.json"
    record.write(path)
    assert json.loads(path.read_text())["version"] == type(record).VERSION
    assert type(record).read(path) == record


@pytest.mark.parametrize("record", RECORDS, ids=lambda record: type(record).__name__)
def test_a_file_of_another_version_or_none_is_refused_in_one_line(record: VersionedFile, tmp_path):
    path = tmp_path / "metrics.json"
    payload = record.to_json()
    path.write_text(json.dumps(payload | {"version": record.VERSION + 1}))
    with pytest.raises(FaultLLMError, match=rf"written with version {record.VERSION + 1}; .* rerun the job") as refused:
        type(record).read(path)
    assert "\n" not in str(refused.value)
    del payload["version"]
    path.write_text(json.dumps(payload))
    with pytest.raises(FaultLLMError, match=r"written with no version \(an older faultllm\); .* rerun the job"):
        type(record).read(path)


def test_a_file_missing_a_required_field_is_refused(tmp_path):
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"version": SplitSummary.VERSION, "labels": ["0"]}))
    with pytest.raises(FaultLLMError, match=r"split.json: not a faultllm SplitSummary file"):
        SplitSummary.read(path)


def test_the_run_kind_is_run_info_s_job_or_what_an_older_run_directory_holds(tmp_path):
    for kind in RunKind:
        (tmp_path / kind.value).mkdir()
        (tmp_path / kind.value / "run_info.json").write_text(json.dumps({"job": kind.value}))
        assert run_kind(tmp_path / kind.value) is kind
    (tmp_path / "old_train" / "adapter").mkdir(parents=True)
    (tmp_path / "old_baselines" / "models").mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    assert [run_kind(tmp_path / name) for name in ("old_train", "old_baselines", "empty")] == [
        RunKind.TRAIN, RunKind.BASELINES, RunKind.UNKNOWN,
    ]  # fmt: skip
    assert RunKind.PREPARE.command == "faultllm data prepare" and f"{RunKind.HPO}" == "hpo"
    assert {kind for kind in RunKind if kind.fine_tunes} == {RunKind.TRAIN, RunKind.HPO}
