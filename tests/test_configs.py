"""The config as a typed contract: every shipped config composes and validates, and every value that cannot
work is refused in one line naming the key, before any run directory exists."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest

from faultllm import cli
from faultllm.config.choices import LR_SCHEDULERS
from faultllm.config.jobs import JOBS
from faultllm.config.load import CONFIG_DIR, load_config
from faultllm.run.kind import RunKind
from faultllm.runtime.errors import FaultLLMError

REQUIRED = {
    "evaluate": ["run_dir=r"], "explain": ["run_dir=r"], "predict": ["run_dir=r", "input=i"], "report": ["run_dirs=[r]"],
}  # fmt: skip


def _options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONFIG_DIR / group).glob("*.yaml"))


def _combinations(job: str) -> list[list[str]]:
    if job in REQUIRED:
        return [REQUIRED[job]]
    trains = job in ("train", "hpo")
    # cpu_smoke sizes training (trainer.*, lora.*): a preset for the commands that train
    experiments = ["", *(f"experiment={e}" for e in _options("experiment") if trains or e != "cpu_smoke")]
    models = [f"model={m}" for m in _options("model")] if trains else [""]
    return [
        [o for o in (f"data={data}", experiment, model) if o]
        for data in _options("data")
        for experiment in experiments
        for model in models
    ]


@pytest.mark.slow  # composes every combination; the cases below are the quick check
@pytest.mark.parametrize("job", sorted(JOBS))
def test_every_config_composes_with_every_option_of_every_group(job):
    for overrides in _combinations(job):
        config = load_config(job, overrides)
        assert type(config) is JOBS[job], overrides


def _keys(schema: type, prefix: str = "") -> list[tuple[str, dict]]:
    """(dotted key, field metadata) of every field declaring choices or a range."""
    found = []
    for spec in fields(schema):
        default = spec.default_factory() if callable(spec.default_factory) else spec.default
        if is_dataclass(default):
            found += _keys(type(default), f"{prefix}{spec.name}.")
        elif "choices" in spec.metadata or "low" in spec.metadata:
            found.append((f"{prefix}{spec.name}", spec.metadata))
    return found


def _bad_values(key: str, meta: dict) -> list[str]:
    if "choices" in meta:
        return [f"{key}={str(meta['choices'][0]).lower()}x"]  # a misspelled choice
    values = [meta["low"] if meta["strict"] else meta["low"] - 1] + ([meta["below"]] if meta["below"] else [])
    return [f"{key}={value}" for value in values]


@pytest.mark.slow  # every key of every job; the cases below are the quick check
@pytest.mark.parametrize("job", sorted(JOBS))
def test_every_choice_and_range_is_refused_naming_the_key(job):
    cases = [bad for key, meta in _keys(JOBS[job]) for bad in _bad_values(key, meta)]
    assert cases or job == "report"
    for bad in cases:
        key = bad.split("=")[0]
        error = cli.config_error(job, [*REQUIRED.get(job, []), bad])
        assert error and error.startswith(f"{key}=") and "expected" in error, (bad, error)
        assert "\n" not in error


@pytest.mark.parametrize(
    ("job", "override", "message"),
    [
        ("train", "eval.mode=generat", "eval.mode='generat': expected one of restricted, generate (did you mean generate?)"),
        ("train", "trainer.lr_scheduler=cosin", "trainer.lr_scheduler='cosin': expected one of linear, cosine,"),
        ("train", "prompt.template=chatml", "prompt.template='chatml': expected one of llama2, chat"),
        ("hpo", "hpo.pruner=medain", "hpo.pruner='medain': expected one of none, median, hyperband (did you mean median?)"),
        ("hpo", "hpo.objective=val_acc", "hpo.objective='val_acc': expected one of val_loss, val_class_loss, val_accuracy, val_macro_f1"),
        ("explain", "explain.reference=mean", "explain.reference='mean': expected one of median, midpoint"),
        ("train", "lora.r=0", "lora.r=0: expected >= 1"),
        ("train", "trainer.learning_rate=-1", "trainer.learning_rate=-1.0: expected > 0"),
        ("train", "eval.batch_size=0", "eval.batch_size=0: expected >= 1"),
        ("train", "trainer.batch_size=0", "trainer.batch_size=0: expected >= 1"),
        ("train", "prompt.decimals=-1", "prompt.decimals=-1: expected >= 0"),
        ("hpo", "hpo.n_trials=0", "hpo.n_trials=0: expected >= 1"),
        ("hpo", "hpo.space.lora_r.low=0", "hpo.space.lora_r.low=0: lora.r=0: expected >= 1"),
        ("hpo", "hpo.space.lora_dropout.high=1.0", "hpo.space.lora_dropout.high=1.0: lora.dropout=1.0: expected < 1"),
        ("hpo", "+hpo.space.x={key:lora.rr,type:int,low:1,high:3}", "hpo.space.x.key='lora.rr': not a config key (did you mean lora.r?)"),
        ("train", "data.train_size=-8", "data.train_size=-8: expected >= 1"),
        ("prepare", "data.train_size=41", "data.train_size=41: cannot be balanced over 4 labels; use a multiple of 4"),
        ("train", "trainer.report_to=tensorbord", "trainer.report_to: unknown 'tensorbord'; expected some of tensorboard,"),
        ("baselines", "baselines.models=[rf,xgboost]", "baselines.models: unknown 'xgboost'; expected some of rf, lr,"),
        ("train", "prompt.missing=omit", "prompt.missing=omit needs prompt.name_features=true"),
        ("train", "prompt.feature_order=importance", "prompt.feature_order=importance needs prompt.importance_from=DIR"),
        ("train", "data.missing_rate=1.0", "data.missing_rate=1.0: expected < 1"),
        ("train", "data.scale_range=[1,0]", "data.scale_range=[1.0, 0.0]: expected [low, high] with low < high"),
        ("train", "trainer.epochz=3", "trainer.epochz: no such config key (did you mean trainer.epochs?)"),
        ("train", "+trainer.foo=1", "trainer.foo: no such config key"),
        ("train", "model=tinyy", "model=tinyy: no such option; expected one of llama2_13b_chat,"),
        ("train", "trainer.epochs=abc", "trainer.epochs='abc': expected an integer"),
        ("train", "model.optimizer=adamw_torh", "model.optimizer='adamw_torh': expected auto or a transformers optim name"),
        ("predict", "predict.model=svn", "predict.model='svn': expected one of rf, lr, svm, knn, gbm, hgb, xgb, lgbm, catboost or null"),
        ("hpo", "trainer.epochs=0", "trainer.epochs=0: hpo tunes training; expected >= 1"),
        ("hpo", "trainer.eval_each_epoch=false", "trainer.eval_each_epoch=false: hpo's objective and pruner read"),
        ("train", "trainer.epochs=-1", "trainer.epochs=-1: expected >= 0"),
        ("train", "prompt.shots=-1", "prompt.shots=-1: expected >= 0"),
        ("train", "prompt.shot_selection=closest", "prompt.shot_selection='closest': expected one of fixed, random, nearest"),
        ("train", "model.init=random", "model.init=random: random weights are never a result; add model.allow_random=true"),
        ("train", "model.init=randm", "model.init='randm': expected one of pretrained, random (did you mean random?)"),
        ("plan", "plan.gpu=h10", "plan.gpu='h10': expected one of h100, h200, a100, l40s, a10, t4"),
        ("plan", "plan.mfu=1.5", "plan.mfu=1.5: expected < 1"),
        ("plan", "job=trian", "job='trian': expected one of train, hpo (did you mean train?)"),
        ("bench", "bench.steps=0", "bench.steps=0: expected >= 1"),
    ],
)  # fmt: skip
def test_named_bad_values(job, override, message):
    model = ["model=tiny"] if job in ("train", "hpo") else []
    error = cli.config_error(job, [*REQUIRED.get(job, []), *model, override])
    assert error is not None and error.startswith(message), error


def test_the_schedulers_are_transformers_own():
    from transformers import SchedulerType

    assert set(LR_SCHEDULERS) == {member.value for member in SchedulerType}


def test_an_hpo_trial_config_is_checked_like_any_other():
    from faultllm.config.load import with_values

    cfg = load_config("hpo", ["model=tiny"])
    assert with_values(cfg, {"lora.r": 8, "data.normalize": False}).lora.r == 8
    with pytest.raises(FaultLLMError, match=r"lora.dropout=1.5: expected < 1"):
        with_values(cfg, {"lora.dropout": 1.5})


def faultllm(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "faultllm", *args], capture_output=True, text=True, cwd=cwd)
    return result, time.perf_counter() - started


@pytest.mark.parametrize(
    "args",
    [
        ["train", "model=tiny", "eval.mode=generat"],
        ["hpo", "model=tiny", "hpo.pruner=medain"],
        ["explain", "run_dir=nowhere", "explain.reference=mean"],
    ],
)
def test_the_cli_refuses_before_any_run_directory_exists(tmp_path, args):
    result, seconds = faultllm(*args, cwd=tmp_path)
    (line,) = result.stderr.strip().splitlines()
    assert result.returncode == 2 and args[-1].split("=")[0] in line and "expected one of" in line
    assert not (tmp_path / "runs").exists() and not (tmp_path / "nowhere").exists()
    assert seconds < 60  # no training, no model load: seconds on any machine


def test_a_multirun_checks_every_job_before_the_first(tmp_path):
    result, _ = faultllm("data", "prepare", "-m", "data.train_size=40,41,44", f"hydra.sweep.dir={tmp_path / 's'}",
                         cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2 and "data.train_size=41" in result.stderr and "sweep job" in result.stderr
    assert not (tmp_path / "s").exists()


def test_a_misspelled_command_names_the_closest():
    error = subprocess.run([sys.executable, "-m", "faultllm", "trian"], capture_output=True, text=True)
    assert error.returncode == 2 and "did you mean train?" in error.stderr


def test_a_job_failing_after_work_keeps_its_directory_and_its_log_ends_with_the_error(tmp_path, monkeypatch):
    from faultllm.jobs import prepare

    def fail_after_work(cfg, run_dir):
        prepare.start_run(cfg, run_dir, RunKind.PREPARE)
        (run_dir / "train.parquet").write_text("half-written")
        raise FaultLLMError("data.path=x: something went wrong")

    monkeypatch.setattr(prepare, "run", fail_after_work)
    with pytest.raises(SystemExit) as stopped:
        cli.main(["data", "prepare", f"hydra.run.dir={tmp_path / 'run'}", f"cache_dir={tmp_path}"])
    assert stopped.value.code == 2
    log = (tmp_path / "run" / "faultllm.log").read_text().strip().splitlines()
    assert log[-1].endswith("[faultllm][ERROR] data.path=x: something went wrong")
