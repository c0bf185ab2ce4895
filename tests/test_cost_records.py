"""plan.json and bench.json: written from typed records, read back equal; a file of another version is refused."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path

import pytest

from faultllm.cost.plan import make_plan
from faultllm.cost.records import BenchRecord, PlanRecord
from faultllm.runtime.errors import FaultLLMError

# what `faultllm bench model=tiny` measured on a CPU (tests/test_bench.py runs it: slow)
TINY_BENCH = BenchRecord(
    device="cpu", model="tiny", init="pretrained",
    hardware={"device": "cpu", "quantization": "none", "attn_implementation": "sdpa", "dtype": "float32",
              "optimizer": "adamw_torch", "gradient_checkpointing": False, "gpu_memory_gib": None, "gpu_name": None},
    n_base=442_240, n_lora=77_792, batch_size=1, grad_accum=1, warmup_steps=1, steps=2, train_tokens=214,
    tokens_per_second=1523.7, step_seconds=0.0702, load_seconds=0.41, peak_memory_gib=0.93,
    memory_gib={"process": 0.93}, model_flops_per_token=2_235_712.0, hardware_flops_per_token=2_235_712.0,
    scoring_flops_per_token=1_040_064.0, peak_tflops=None, mfu=None, hfu=None, data_note=None,
    scoring_tokens_per_second=9120.5, scoring_rows_per_second=80.1, decode_step_seconds=0.0031,
)  # fmt: skip


def test_a_plan_round_trips(compose_cfg, tmp_path):
    cfg = compose_cfg("plan", ["job=hpo", "model=tiny", "data.train_size=16", "data.test_size=8", "hpo.folds=2",
                               "hpo.n_trials=3", "trainer.epochs=1", "~hpo.space.lora_alpha", "~hpo.space.lora_dropout",
                               "~hpo.space.learning_rate", "~hpo.space.normalize"])  # fmt: skip
    plan = make_plan(cfg)
    assert plan.rows.folds and plan.cases  # nested records and lists of them
    plan.write(tmp_path / "plan.json")
    assert PlanRecord.read(tmp_path / "plan.json") == plan
    assert json.loads((tmp_path / "plan.json").read_text())["gpu_hours"] == {"worst": plan.gpu_hours.worst,
                                                                            "expected": plan.gpu_hours.expected}  # fmt: skip


@pytest.mark.parametrize("record", [TINY_BENCH, replace(TINY_BENCH, peak_tflops=989.4, mfu=0.31, hfu=0.4)])
def test_a_bench_record_round_trips(record, tmp_path):
    record.write(tmp_path / "bench.json")
    assert BenchRecord.read(tmp_path / "bench.json") == record


@pytest.mark.parametrize("version", [None, 0, 2])
@pytest.mark.parametrize("kind", [BenchRecord, PlanRecord])
def test_a_file_of_another_version_is_refused_in_one_line(kind, version, tmp_path):
    payload = TINY_BENCH.to_json() if kind is BenchRecord else {"job": "train"}
    payload = {key: value for key, value in payload.items() if key != "version"}
    path = tmp_path / kind.FILE
    path.write_text(json.dumps(payload if version is None else payload | {"version": version}))
    with pytest.raises(FaultLLMError) as err:
        kind.read(path)
    message = str(err.value)
    found = "no version" if version is None else f"version {version}"
    assert "\n" not in message and f"written with {found}" in message and f"rerun `faultllm {kind.FILE[:-5]}" in message


def test_a_record_missing_a_field_is_refused_in_one_line(tmp_path):
    payload = {key: value for key, value in TINY_BENCH.to_json().items() if key != "tokens_per_second"}
    (tmp_path / "bench.json").write_text(json.dumps(payload))
    with pytest.raises(FaultLLMError, match=r"bench\.json: not a faultllm BenchRecord file") as err:
        BenchRecord.read(tmp_path / "bench.json")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kind", [BenchRecord, PlanRecord])
def test_docs_name_every_field(kind):
    page = (Path(__file__).resolve().parents[1] / "docs" / "cost.md").read_text()
    assert [spec.name for spec in fields(kind) if f"`{spec.name}`" not in page] == []
