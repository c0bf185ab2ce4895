from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from faultllm.config.fields import ConfigError
from faultllm.data.datasets import HST_FEATURES
from faultllm.data.splits import prepared_split
from faultllm.data.standins import stand_in_data
from faultllm.data.tep import TEP_FEATURES
from faultllm.llm.scoring import answer_space
from faultllm.llm.tiny import SHIPPED
from faultllm.llm.tokenizer import load_tokenizer
from faultllm.prompts.serialize import PromptFormat, Serializer, question
from faultllm.prompts.templates import answer, chat_prompt, short_names
from faultllm.run.directory import start_run
from faultllm.run.kind import RunKind


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sentencepiece_bpe = _script("tokens_per_row").sentencepiece_bpe  # SentencePiece BPE without the sentencepiece package

STUDY_SYSTEM = (
    "You are an expert in fault diagnosis of chemical plants operation. You master the reaction process and "
    "control structures in the Fault Detection Dataset. You are capable of accurately determining the plant "
    "process state based on given variables and their values. Below is a sample of the Fault Detection Dataset monitoring."
)


def test_study_example_sentence_exactly():
    fmt = PromptFormat(system="", name_features=True, decimals=None)
    features = ["setting_1", "setting_2", "condition", "sensor_1", "sensor_2"]
    assert question([1, 1, 2, 0.05, 0.7], features, [0, 1], fmt) == (
        "Tell me if the value of Y is 0 or 1. If feature setting_1 = 1, feature setting_2 = 1, "
        "feature condition = 2, feature sensor_1 = 0.05, feature sensor_2 = 0.7. What should be Y?"
    )


def test_unnamed_fixed_decimals_and_multiclass_wording():
    fmt = PromptFormat(system="", name_features=False, decimals=4)
    assert question([0, 1, 0.52541], ["a", "b", "c"], [0, 1, 4, 5], fmt) == (
        "Tell me if the value of Y is 0, 1, 4 or 5. If the features are: 0.0000, 1.0000, 0.5254. What should be Y?"
    )


def test_llama2_layout_without_literal_bos(compose_cfg):
    cfg = compose_cfg("prepare", ["experiment=hst_paper", "data.path=unused.csv"])
    serializer = Serializer.from_config(cfg.prompt, cfg.data.system_prompt, ["x"], [0, 1], load_tokenizer(str(SHIPPED)))
    assert serializer.fmt.system == STUDY_SYSTEM
    frame = pd.DataFrame({"x": [0.5], "label": [1]})
    rendered = serializer.render(frame)
    (prompt,) = rendered.texts
    assert prompt == (
        f"[INST] <<SYS>>\n{STUDY_SYSTEM}\n<</SYS>>\n\n"
        "Tell me if the value of Y is 0 or 1. If the features are: 0.5000. What should be Y? [/INST]"
    )
    assert "<s>" not in prompt and "</s>" not in prompt
    assert rendered.sft_rows() == [{"prompt": prompt, "completion": " Y = 1</s>"}]  # TRL adds no second EOS
    assert chat_prompt("q", "s") + answer(4) == "[INST] <<SYS>>\ns\n<</SYS>>\n\nq [/INST] Y = 4"


# ---------------------------------------------------------------- prompt.format=compact

COMPACT = PromptFormat(system="", name_features=False, decimals=4, style="compact")
LLAMA_STYLE_MODEL = Path(__file__).parent / "assets" / "mistral_v0.1_tokenizer.model"


def test_compact_question_exactly():
    """Integers round(99 v) (a test row beyond the training range stays beyond 0-99), "?" for a missing value,
    short names with prompt.name_features, the labels asked last; decimals play no part."""
    values, features = [0.2534, 0.0, 1.0, np.nan, 1.04, -0.02], ["a", "b", "c", "d", "e", "f"]
    assert question(values, features, [0, 1, 4, 5], COMPACT) == (
        "Features (0-99): 25 0 99 ? 103 -2. Y is 0, 1, 4 or 5?"
    )
    named = replace(COMPACT, name_features=True, decimals=None, missing="omit")
    assert question(values, features, [0, 1], named) == "Features (0-99): x1=25 x2=0 x3=99 x5=103 x6=-2. Y is 0 or 1?"


def test_compact_names_are_short_and_independent_of_the_prompt_order():
    """TEP's xmeas_1..41, xmv_1..11 are x1..x52 (their usual numbering); HST's 0..45 are x0..x45; whatever order
    prompt.feature_order writes them in, a feature keeps its name."""
    names = short_names(tuple(TEP_FEATURES))
    assert (
        names["xmeas_1"] == "x1" and names["xmeas_41"] == "x41" and names["xmv_1"] == "x42" and names["xmv_11"] == "x52"
    )
    assert short_names(tuple(reversed(TEP_FEATURES))) == names
    assert short_names(tuple(HST_FEATURES)) == {name: f"x{name}" for name in HST_FEATURES}
    named = replace(COMPACT, name_features=True)
    assert question([0.5, 0.1], ["xmv_2", "xmeas_10"], [0, 1], named) == "Features (0-99): x2=50 x1=10. Y is 0 or 1?"


def test_compact_keeps_the_answer_and_the_labels_scored(compose_cfg):
    """Only the question changes: the completions (`Y = k</s>`), the labels and so restricted scoring's answer
    space are the study's."""
    tokenizer = load_tokenizer(str(SHIPPED))
    frame = pd.DataFrame({"a": [0.5, 0.25], "b": [0.1, 0.9], "label": [1, 0]})
    rendered = {}
    for style in ("study", "compact"):
        cfg = compose_cfg("train", ["model=tiny", f"prompt.format={style}"])
        rendered[style] = Serializer.from_config(cfg.prompt, "sys", ["a", "b"], [0, 1], tokenizer).render(frame)
    study, compact = rendered["study"], rendered["compact"]
    assert compact.texts[0].endswith("Features (0-99): 50 10. Y is 0 or 1? [/INST]")
    assert (compact.completions, compact.labels, compact.truth) == (study.completions, study.labels, study.truth)
    assert answer_space(tokenizer, compact) == answer_space(tokenizer, study)


def test_compact_needs_values_scaled_to_0_1(compose_cfg):
    """Unscaled values (data.normalize=false, also as an hpo.space choice) or another scale_range would not be on
    the 0-99 grid: refused before any work."""
    for overrides in (["data.normalize=false"], ["data.scale_range=[-1,1]"]):
        with pytest.raises(ConfigError, match=r"prompt\.format=compact needs data\.normalize=true"):
            compose_cfg("train", ["model=tiny", "prompt.format=compact", *overrides])
    with pytest.raises(ConfigError, match=r"~hpo\.space\.normalize"):
        compose_cfg("hpo", ["model=tiny", "prompt.format=compact"])  # configs/hpo/default.yaml searches normalize
    assert (
        compose_cfg("hpo", ["model=tiny", "prompt.format=compact", "~hpo.space.normalize"]).prompt.format == "compact"
    )


def test_the_format_is_recorded_in_the_run_config(compose_cfg, tmp_path):
    """A study variable: config.yaml says which format the run's prompts were written in (and a resume must match)."""
    run_dir = start_run(compose_cfg("train", ["model=tiny", "prompt.format=compact"]), tmp_path / "run", RunKind.TRAIN)
    assert OmegaConf.load(run_dir / "config.yaml").prompt.format == "compact"
    assert compose_cfg("train", ["model=tiny"]).prompt.format == "study"  # the default is the study's question


def test_compact_tep_rows_take_at_most_55_percent_of_the_llama2_tokens(compose_cfg):
    """Counted with a real Llama-style SentencePiece model (Mistral-7B-v0.1's, made as Llama-2's: BPE, digits
    one per token, ▁ word boundaries; tests/assets) over the bundled TEP rows of the study's protocol, whole
    prompts (system prompt, layout and BOS) included."""
    tokenizer = sentencepiece_bpe(LLAMA_STYLE_MODEL)
    assert tokenizer.tokenize("0.2534") == ["▁", "0", ".", "2", "5", "3", "4"]  # every digit its own token
    counts = {}
    for style in ("study", "compact"):
        cfg = compose_cfg("plan", ["job=train", "model=tiny", "experiment=tep_paper", f"prompt.format={style}"])
        data_cfg, _ = stand_in_data(cfg.data, cfg.cache_dir)  # the bundled simulation in the Rieth schema
        split, _ = prepared_split(replace(data_cfg, train_size=16, test_size=4), cfg.seed)
        serializer = Serializer.from_config(cfg.prompt, cfg.data.system_prompt, split.features, split.labels, tokenizer)
        counts[style] = np.mean([len(tokenizer(t)["input_ids"]) for t in serializer.render(split.train).texts])
    assert counts["compact"] <= 0.55 * counts["study"]
