"""prompt.template=chat on three template styles (Llama-3 headers, ChatML, Mistral without a system role)."""

from __future__ import annotations

import pandas as pd
import pytest

from faultllm.config.load import load_config
from faultllm.llm.tiny import SHIPPED
from faultllm.llm.tokenizer import load_tokenizer
from faultllm.prompts.serialize import Serializer
from faultllm.runtime.errors import FaultLLMError
from tests.chat_models import STYLES, TEMPLATE_ONLY, build_chat_model
from tests.conftest import easy_overrides

pytestmark = pytest.mark.slow  # trains tiny models

SYSTEM = "You are an expert in fault diagnosis."


@pytest.fixture(scope="module")
def chat_models(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("chat_models")
    return {style: build_chat_model(style, root / style) for style in [*STYLES, *TEMPLATE_ONLY]}


def _serializer(path, tokenizer) -> Serializer:
    cfg = load_config("train", ["model=tiny", "prompt.template=chat", "data=csv", "data.path=unused.csv"])
    cfg.data.system_prompt = SYSTEM
    return Serializer.from_config(cfg.prompt, cfg.data.system_prompt, ["a", "b"], [0, 1], tokenizer)


def _ids(encoded) -> list[int]:
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


@pytest.mark.parametrize("style", [*STYLES, *TEMPLATE_ONLY])
def test_prompt_and_answer_are_the_templates_own_rendering_with_one_bos(chat_models, style):
    from transformers import AutoTokenizer

    path = chat_models[style]
    own = AutoTokenizer.from_pretrained(path)  # the tokenizer as shipped, before faultllm prepares it
    tokenizer = load_tokenizer(str(path), chat=True)
    serializer = _serializer(path, tokenizer)
    prompts = serializer.render(pd.DataFrame({"a": [0.25], "b": [0.5], "label": [1]}))
    user = serializer.question([0.25, 0.5])
    messages = serializer.template.messages(SYSTEM, user)
    if style.startswith("mistral"):  # no system role (v0.3: one that moves): the system text opens the user turn
        assert messages == [{"role": "user", "content": f"{SYSTEM}\n\n{user}"}]
    rendered = _ids(own.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
    assert tokenizer(prompts.texts[0])["input_ids"] == rendered
    answered = _ids(own.apply_chat_template([*messages, {"role": "assistant", "content": "Y = 1"}], tokenize=True))
    full = tokenizer(prompts.texts[0] + prompts.completions[1])["input_ids"]
    assert full == answered[: len(full)] and full[-1] == tokenizer.eos_token_id
    end = {"llama3": "<|eot_id|>", "chatml": "<|im_end|>", "mistral": "</s>", "mistral_v3": "</s>"}[style]
    assert tokenizer.eos_token == end and prompts.completions[1].lstrip() == f"Y = 1{end}"  # v0.3: " Y = 1</s>"
    pad = {"llama3": "<|reserved_special_token_0|>", "chatml": "<|pad|>", "mistral": "<unk>", "mistral_v3": "<unk>"}[
        style
    ]
    assert tokenizer.pad_token == pad and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert len(tokenizer) == len(own) + (style == "chatml")  # a pad token is added only where none exists
    if own.bos_token:
        assert full.count(own.bos_token_id) == 1 and not prompts.texts[0].startswith(own.bos_token)


@pytest.mark.parametrize("style", [*STYLES, *TEMPLATE_ONLY])
def test_shots_are_earlier_user_and_assistant_turns_token_for_token(chat_models, style):
    from transformers import AutoTokenizer

    path = chat_models[style]
    own = AutoTokenizer.from_pretrained(path)
    tokenizer = load_tokenizer(str(path), chat=True)
    cfg = load_config("train", ["model=tiny", "prompt.template=chat", "prompt.shots=3", "prompt.shot_selection=random"])
    train = pd.DataFrame({"a": [0.1, 0.2, 0.3, 0.7, 0.8, 0.9], "b": 0.5, "label": [0, 0, 0, 1, 1, 1]})
    serializer = Serializer.from_config(cfg.prompt, SYSTEM, ["a", "b"], [0, 1], tokenizer, 0, train)
    test = pd.DataFrame({"a": [0.25], "b": [0.5], "label": [1]})
    (shown,) = serializer.examples(test)
    turns = [{"role": r, "content": c} for q, label in shown for r, c in (("user", q), ("assistant", f"Y = {label}"))]
    turns += [{"role": "user", "content": serializer.question([0.25, 0.5])}]
    if style.startswith("mistral"):  # no system role: the system text opens the first user turn
        messages = [{"role": "user", "content": f"{SYSTEM}\n\n{turns[0]['content']}"}, *turns[1:]]
    else:
        messages = [{"role": "system", "content": SYSTEM}, *turns]
    assert len(shown) == 3 and {label for _, label in shown} == {0, 1}
    expected = _ids(own.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
    assert tokenizer(serializer.render(test).texts[0])["input_ids"] == expected


def test_a_tokenizer_without_chat_template_names_the_way_out():
    with pytest.raises(FaultLLMError, match=r"no chat template; use prompt.template=llama2 or .*prompt.chat_template="):
        load_tokenizer(str(SHIPPED), chat=True)


@pytest.mark.parametrize("style", list(STYLES))
def test_train_evaluate_reload_and_explain(chat_models, style, tiny_cache, easy_csv, tmp_path):
    from faultllm.jobs.evaluate import run as evaluate
    from faultllm.jobs.explain import run as explain
    from faultllm.jobs.train import run as train

    overrides = [
        *easy_overrides(tiny_cache, easy_csv), "model.build=null", f"model.path={chat_models[style]}",
        "prompt.template=chat", "data.train_size=40", "data.test_size=20", "trainer.epochs=1",
    ]  # fmt: skip
    metrics = train(load_config("train", overrides), tmp_path / "run")
    assert metrics["test"]["n"] == 20 and metrics["epochs"]
    reloaded = evaluate(load_config("evaluate", [f"run_dir={tmp_path / 'run'}"]), tmp_path / "eval")
    assert reloaded["accuracy"] == metrics["test"]["accuracy"]
    assert reloaded["loss"] == pytest.approx(metrics["test"]["loss"], rel=1e-4)
    generated = evaluate(
        load_config("evaluate", [f"run_dir={tmp_path / 'run'}", "eval.mode=generate", "eval.max_new_tokens=4"]),
        tmp_path / "generate",
    )
    assert generated["n"] == 20 and 0 <= generated["invalid_outputs"] <= 20
    explained = explain(
        load_config(
            "explain",
            [
                f"run_dir={tmp_path / 'run'}",
                "explain.n_probe_rows=1",
                "explain.new_tokens=[4]",
                "explain.n_attribution_rows=4",
            ],
        ),
        tmp_path / "explain",
    )
    assert set(explained["top_features"]) <= {"a", "b", "c"}
