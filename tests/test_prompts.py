from __future__ import annotations

import pandas as pd

from faultllm.modeling import load_tokenizer
from faultllm.prompts import PromptFormat, Serializer, question
from faultllm.templates import answer, chat_prompt
from faultllm.tiny import SHIPPED

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
