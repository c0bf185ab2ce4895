"""`faultllm plan`: token counts equal the rendered prompts tokenized directly, summed over the exact rows, folds,
epochs and trials; FLOPs and GPU-hours follow by the documented formulas; offline with a tokenizer and a
config.json only. No weights are loaded and nothing is trained."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from faultllm.config.hpo import SearchParam
from faultllm.cost import plan as planning
from faultllm.cost.cases import rendering_key, space_values
from faultllm.cost.flops import GPUS
from faultllm.cost.records import FoldRows, PlanRecord, TokenStats
from faultllm.cost.work import Work, assumed_rates
from faultllm.data.splits import cv_folds, fold_splits, make_split, prepared_split
from faultllm.jobs import plan as plan_job
from faultllm.llm.shape import model_shape
from faultllm.llm.sources import SHIPPED_CONFIGS
from faultllm.llm.tiny import SHIPPED
from faultllm.llm.tokenizer import load_tokenizer
from faultllm.prompts.serialize import Serializer
from faultllm.runtime.errors import FaultLLMError

TINY_BASE, TINY_PARAMS = 442_240, 490_880  # test_costs.py: the tiny model's shape by hand
TINY_LORA_16 = 77_792  # r=16 (configs/experiment/cpu_smoke.yaml) on every linear layer
TINY_LORA = lambda r: TINY_LORA_16 // 16 * r  # noqa: E731


def direct_tokens(cfg, frame, name_features: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(prompt tokens, prompt + completion tokens) per row: the rendered texts through the tokenizer, nothing else."""
    tokenizer = load_tokenizer(str(SHIPPED))
    prompt_cfg = (
        cfg.prompt
        if name_features is None
        else type(cfg.prompt)(**{**cfg.prompt.__dict__, "name_features": name_features})
    )
    serializer = Serializer.from_config(
        prompt_cfg, cfg.data.system_prompt, list(frame.columns[:-1]), [0, 1, 4, 5], tokenizer
    )
    prompts = serializer.render(frame)
    completions = [prompts.completions[label] for label in prompts.truth]
    prompt = np.array([len(tokenizer(text)["input_ids"]) for text in prompts.texts])
    whole = np.array([len(tokenizer(t + c)["input_ids"]) for t, c in zip(prompts.texts, completions, strict=True)])
    return prompt, whole


def features_and_label(split_side, features):
    return split_side[[*features, "label"]]


def test_train_plan_by_hand(compose_cfg):
    cfg = compose_cfg("plan", ["job=train", "model=tiny", "data.train_size=8", "data.test_size=8", "trainer.epochs=2"])
    plan = planning.make_plan(cfg)
    split, _ = prepared_split(cfg.data, cfg.seed)
    train_prompt, train_whole = direct_tokens(cfg, features_and_label(split.train, split.features))
    test_prompt, test_whole = direct_tokens(cfg, features_and_label(split.test, split.features))
    prompts = np.concatenate([train_prompt, test_prompt])
    assert plan.prompt_tokens == TokenStats(prompts.min(), pytest.approx(prompts.mean()), prompts.max())
    assert (plan.rows.train, plan.rows.test, plan.rows.folds) == (8, 8, [])
    assert plan.train_tokens.worst == plan.train_tokens.expected == 2 * train_whole.sum()
    # restricted scoring runs the prompt, the shared `▁Y ▁= ▁` and the answers' prefix tree (one node per
    # label for 0, 1, 4, 5): prompt + 3 + 4 = prompt + answer (5) + 2 tokens, after each of the 2 epochs on
    # train and test, then once more at the end
    assert plan.completion_tokens == TokenStats(5, 5.0, 5)
    scored = (train_whole + 2).sum() + (test_whole + 2).sum()
    assert plan.scoring_tokens.expected == 3 * scored
    assert plan.model.n_base == TINY_BASE and plan.model.n_lora == TINY_LORA_16
    flops = 2 * train_whole.sum() * (4 * TINY_BASE + 6 * TINY_LORA_16) + 3 * scored * 2 * (TINY_BASE + TINY_LORA_16)
    assert plan.flops.expected == pytest.approx(flops, rel=1e-12)
    # an H100 SXM at MFU 0.35, plus one load of a 2-byte-per-parameter checkpoint at 1 GB/s
    seconds = flops / (989.4e12 * 0.35) + TINY_PARAMS * 2 / 1e9
    assert plan.gpu_hours.expected == pytest.approx(seconds / 3600, rel=1e-12)
    assert plan.model_loads.expected == 1 and plan.memory_gib.gradient_checkpointing is False


def small_hpo(compose_cfg, *extra: str):
    drop = [f"~hpo.space.{name}" for name in ("lora_alpha", "lora_dropout", "learning_rate", "normalize")]
    return compose_cfg("plan", ["job=hpo", "model=tiny", "data.train_size=16", "data.test_size=8", "hpo.folds=2",
                                "hpo.n_trials=3", "trainer.epochs=2", *drop, *extra])  # fmt: skip


def test_hpo_train_tokens_are_the_sum_over_rows_folds_epochs_and_trials(compose_cfg):
    """Space: name_features true/false, lora.r 4..256. Worst: named features, every trial whole; expected:
    both choices equally likely, 28% of the fold-epochs pruned (hpo.schedule=full, median pruner). Each + the refit on the whole split."""
    cfg = small_hpo(compose_cfg, "hpo.schedule=full", "hpo.pruner=median")
    plan = planning.make_plan(cfg)
    raw = make_split(cfg.data, cfg.seed)
    folds = fold_splits(raw, cv_folds(raw.train, 2, cfg.seed), True, [0.0, 1.0])
    whole, _ = prepared_split(cfg.data, cfg.seed)

    def trained(named: bool) -> tuple[int, int]:
        fold_tokens = sum(direct_tokens(cfg, features_and_label(f.train, raw.features), named)[1].sum() for f in folds)
        refit = direct_tokens(cfg, features_and_label(whole.train, raw.features), named)[1].sum()
        return 3 * 2 * fold_tokens, 2 * refit  # 3 trials x 2 epochs, 2 refit epochs

    def scored(named: bool) -> int:
        """Restricted scoring (prompt + completion + 2 tokens a row, test_train_plan_by_hand): each fold's
        validation rows after both epochs, its training rows after the last; the refit's train and test rows
        after both epochs and at the end."""
        rows = lambda frame: (direct_tokens(cfg, features_and_label(frame, raw.features), named)[1] + 2).sum()  # noqa: E731
        search = 3 * sum(2 * rows(f.test) + rows(f.train) for f in folds)
        return search + 3 * (rows(whole.train) + rows(whole.test))

    (search_named, refit_named), (search_plain, refit_plain) = trained(True), trained(False)
    assert search_named > search_plain
    assert plan.train_tokens.worst == search_named + refit_named
    assert plan.scoring_tokens.worst == scored(True)
    expected = (1 - 0.28) * (search_named + search_plain) / 2 + (refit_named + refit_plain) / 2
    assert plan.train_tokens.expected == pytest.approx(expected, rel=1e-12)
    assert plan.rows.folds == [FoldRows(len(f.train), len(f.test)) for f in folds]
    worst = next(case for case in plan.cases if case.case == "worst")
    assert worst.values == {"prompt.name_features": True, "lora.r": 256} and worst.n_lora == TINY_LORA(256)
    assert plan.model_loads.worst == 2  # one base model for the worker's folds + the refit's


def test_workers_and_pruning_change_time_not_the_trained_tokens_of_the_worst_case(compose_cfg):
    one = planning.make_plan(small_hpo(compose_cfg, "hpo.schedule=full", "hpo.pruner=median"))
    four = planning.make_plan(small_hpo(compose_cfg, "hpo.schedule=full", "hpo.workers=4", "hpo.pruner=none"))
    assert one.train_tokens.worst == four.train_tokens.worst
    assert four.train_tokens.expected > one.train_tokens.expected  # nothing pruned
    by_workers = {row.workers: row for row in four.hours}
    assert set(by_workers) == {1, 4}
    assert by_workers[4].wall_hours.worst < by_workers[1].wall_hours.worst  # the refit runs alone
    extra_loads = by_workers[4].gpu_hours.worst - by_workers[1].gpu_hours.worst
    assert extra_loads * 3600 == pytest.approx(3 * four.throughput.load_seconds)  # one base model per worker


def test_the_studys_way_pads_decodes_and_reloads(compose_cfg):
    cfg = compose_cfg("plan", ["job=train", "model=tiny", "data.train_size=8", "data.test_size=8", "trainer.epochs=2",
                               "plan.study_pad_to=1000"])  # fmt: skip
    plan = planning.make_plan(cfg)
    study = plan.study
    assert study.train_tokens == 2 * 8 * 1000 and study.pad_to == 1000
    assert study.generated_tokens == 3 * 16 * 5  # every evaluated row (3 passes over 16 rows), 5 tokens each
    assert plan.study_ratio == pytest.approx(study.gpu_hours / plan.gpu_hours.expected)
    assert plan.study_ratio > 1


def test_rates_measured_or_assumed():
    shape = model_shape(SHIPPED_CONFIGS / "meta-llama/Llama-2-7b-chat-hf")
    rates = assumed_rates(GPUS["a100"], 0.5, shape, quantized=True, load_seconds=None)
    assert rates.train_flops_per_s == rates.scoring_flops_per_s == 312e12 * 0.5
    assert rates.decode_step_seconds == pytest.approx(shape.n_base * 0.55 / 2.04e12)  # bandwidth-bound
    assert rates.load_seconds == pytest.approx(shape.n_params * 2 / 1e9)
    work = Work(train_hardware_flops=3e15, scoring_flops=1e15, decode_steps=10, model_loads=2)
    assert rates.seconds(work) == pytest.approx(4e15 / 156e12 + 10 * rates.decode_step_seconds + 2 * rates.load_seconds)


def test_space_values_worst_and_expected():
    space = {
        "r": SearchParam(key="lora.r", type="int", low=4, high=256),
        "lr": SearchParam(key="trainer.learning_rate", type="float", low=1e-5, high=1e-2, log=True),
        "nf": SearchParam(key="prompt.name_features", type="categorical", choices=[True, False]),
    }
    worst, expected = space_values(space)
    assert worst == [{"prompt.name_features": c, "lora.r": 256, "trainer.learning_rate": 1e-2} for c in (True, False)]
    assert [e["lora.r"] for e in expected] == [130, 130]
    assert expected[0]["trainer.learning_rate"] == pytest.approx((1e-2 - 1e-5) / np.log(1e3))  # log-uniform mean
    assert rendering_key(worst[0]) == (("prompt.name_features", "True"),)


def test_no_tokenizer_offline_is_one_line(compose_cfg, monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    with pytest.raises(FaultLLMError) as err:
        planning.make_plan(compose_cfg("plan", ["job=train"]))  # Llama-2-7b-chat: its config.json ships, no tokenizer
    message = str(err.value)
    assert "\n" not in message and "not in the local cache and HF_HUB_OFFLINE is set" in message
    assert "model.path=DIR" in message and "plan.tokenizer=tiny" in message


@pytest.mark.slow
def test_cli_plans_the_tep_protocol_offline_from_a_tokenizer_and_a_config_json(tmp_path):
    model_dir = tmp_path / "llama2-7b-files"
    model_dir.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):  # the tiny model's tokenizer: no weights anywhere
        shutil.copy(SHIPPED / name, model_dir / name)
    shutil.copy(SHIPPED_CONFIGS / "meta-llama/Llama-2-7b-chat-hf/config.json", model_dir / "config.json")
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "FAULTLLM_CACHE": str(tmp_path / "cache")}
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "faultllm", "plan", "job=hpo", "experiment=tep_paper", f"model.path={model_dir}",
         f"hydra.run.dir={run_dir}"], capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    plan = PlanRecord.read(run_dir / "plan.json")  # every field typed, of this version
    assert plan.rows.train == 400 and plan.rows.test == 160 and len(plan.rows.folds) == 5
    assert plan.model.parameters == 6_738_415_616 and plan.memory_gib.fits
    assert plan.data.stand_in and plan.study_ratio > 1
    assert plan.train_tokens.worst > plan.train_tokens.expected
    assert (run_dir / "plan.md").read_text().startswith("# plan: faultllm hpo")
    assert "LoRA: " in (run_dir / "plan.md").read_text()  # the memory's LoRA terms, apart (docs/memory_model.md)
    assert plan.memory_gib.terms_gib["lora_activations"] > 0
    assert "GPU-h" in result.stdout + result.stderr


def test_a_few_shot_plan_counts_the_shots_and_trains_nothing(compose_cfg):
    """`faultllm plan job=train trainer.epochs=0 prompt.shots=4`: the prompts as the run renders them (shots from the
    training rows), scored once at the end; no training tokens."""
    overrides = [
        "job=train",
        "model=tiny",
        "data.train_size=8",
        "data.test_size=8",
        "trainer.epochs=0",
        "prompt.shots=4",
    ]
    cfg = compose_cfg("plan", overrides)
    plan = planning.make_plan(cfg)
    split, _ = prepared_split(cfg.data, cfg.seed)
    serializer = Serializer.from_config(
        cfg.prompt,
        cfg.data.system_prompt,
        split.features,
        split.labels,
        load_tokenizer(str(SHIPPED)),
        cfg.seed,
        split.train,
    )
    tokenizer = load_tokenizer(str(SHIPPED))
    texts = serializer.render(split.train, own_rows=True).texts + serializer.render(split.test).texts
    prompts = np.array([len(tokenizer(text)["input_ids"]) for text in texts])
    assert plan.prompt_tokens == TokenStats(prompts.min(), pytest.approx(prompts.mean()), prompts.max())
    zero_shot = planning.make_plan(compose_cfg("plan", [*overrides[:-1], "prompt.shots=0"]))
    assert plan.prompt_tokens.mean > 4 * zero_shot.prompt_tokens.mean
    assert plan.train_tokens.expected == 0 and plan.scoring_tokens.expected == (prompts + 7).sum()


def test_plan_shows_the_tokens_per_row_of_the_chosen_prompt_format(compose_cfg):
    """`faultllm plan prompt.format=compact`: the rows rendered in that format are what is counted, and the
    summary says which format the tokens per row are for."""
    overrides = ["job=train", "model=tiny", "data.train_size=8", "data.test_size=8", "trainer.epochs=1"]
    plans = {
        style: planning.make_plan(compose_cfg("plan", [*overrides, f"prompt.format={style}"]))
        for style in ("study", "compact")
    }
    cfg = compose_cfg("plan", [*overrides, "prompt.format=compact"])
    split, _ = prepared_split(cfg.data, cfg.seed)
    prompt, _ = direct_tokens(cfg, features_and_label(split.train, split.features))
    assert plans["compact"].prompt_format == "compact" and plans["study"].prompt_format == "study"
    assert plans["compact"].prompt_tokens.mean < plans["study"].prompt_tokens.mean
    assert plans["compact"].prompt_tokens.min <= prompt.min() and prompt.max() <= plans["compact"].prompt_tokens.max
    line = plan_job.summary(cfg, plans["compact"])["prompt tokens per row"]
    assert line.startswith("prompt.format=compact: min ")
