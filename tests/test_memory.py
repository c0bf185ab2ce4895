"""The one memory model of a training step (faultllm/llm/memory.py): checked against a real CPU step, and the
same for `faultllm plan` and `train`'s checkpointing decision."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from faultllm.config.groups import LoraConfig, ModelConfig
from faultllm.cost.tokens import RowTokens
from faultllm.llm.build import peft_lora_config
from faultllm.llm.hardware import Gpu, hardware_plan
from faultllm.llm.memory import Step, longest_row, needs_checkpointing, step_memory
from faultllm.llm.shape import ModelShape, model_shape
from faultllm.llm.sources import SHIPPED_CONFIGS

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_memory_model.py"
LLAMA2_7B = SHIPPED_CONFIGS / "meta-llama" / "Llama-2-7b-chat-hf"
H100 = Gpu("NVIDIA H100 80GB HBM3", 79.1, bf16=True)
AUTO = ModelConfig(quantization="auto", attn_implementation="auto", optimizer="auto", gradient_checkpointing="auto")


def _check_script():
    spec = importlib.util.spec_from_file_location("check_memory_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("r", "seq_len", "checkpointing"), [(8, 96, False), (64, 64, True)])
def test_the_model_counts_what_a_cpu_step_saves_and_holds_within_ten_percent(tmp_path, r, seq_len, checkpointing):
    """A 4-bit random Llama body trained as `train` trains (k-bit prepared, LoRA with dropout, TRL's fused
    head, bf16 autocast): the bytes saved for backward, the base's weights and the adapters' weights, gradients
    and AdamW moments after one step, against `step_memory` (scripts/check_memory_model.py prints the table)."""
    check = _check_script()
    path = check.random_llama(str(tmp_path / "body"), hidden=256, layers=2, vocab=1000, kv_heads=2)
    row = check.check(path, r, seq_len, batch=2, checkpointing=checkpointing)
    for term in ("saved", "base_weights", "lora_state"):
        assert row[term]["predicted"] == pytest.approx(row[term]["measured"], rel=0.10), term


def _llama2_7b_with_lora(lora):
    """Llama-2-7B on the meta device (no weights) with faultllm's adapters: what `train` counts from."""
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(LLAMA2_7B))
    return get_peft_model(model, peft_lora_config(lora))


@pytest.mark.parametrize("dropout", [0.1, 0.0])
def test_plan_counts_the_same_dimensions_from_config_json_as_train_from_the_model(compose_cfg, dropout):
    lora = compose_cfg("train", ["lora.r=8", f"lora.dropout={dropout}"]).lora
    planned = model_shape(LLAMA2_7B).with_lora(lora)
    assert planned == ModelShape.of(_llama2_7b_with_lora(lora))
    assert planned.adapters.n_params == 19_988_480 and planned.adapters.inputs == 6 * 4096 + 11008


@pytest.mark.parametrize("prompt_tokens", [745, 880])  # 6,000 and 7,080 tokens a step at batch 8
def test_plan_and_train_decide_checkpointing_alike_where_they_differed(compose_cfg, prompt_tokens):
    """Before, plan's dimensions left LoRA out and train's counted it: on Llama-2-7B at r=8, batch 8 on an H100
    plan said no checkpointing up to 7,443 tokens a step, train turned it on from 5,401 (both cases here differed).
    Now both decide by one model, whose threshold is ~6,900 tokens."""
    from faultllm.cost.cases import memory_estimate
    from faultllm.cost.flops import GPUS
    from faultllm.llm.trainer import plan_for_run

    cfg = compose_cfg("plan", ["job=train", "trainer.batch_size=8", "lora.r=8"])
    rows = RowTokens(np.array([prompt_tokens - 3, prompt_tokens]), np.array([5, 5]), np.array([0, 0]))
    planned = memory_estimate(cfg, GPUS["h100"], model_shape(LLAMA2_7B), rows)
    assert planned.tokens_per_step == 8 * (prompt_tokens + 5)
    terms = planned.terms_gib  # plan.json: the LoRA terms apart
    lora = ("lora_weights", "lora_gradients", "lora_optimizer", "lora_activations")
    assert planned.lora_gib == pytest.approx(sum(terms[key] for key in lora)) and planned.lora_gib > 0.29

    plan = hardware_plan(cfg.model, gpu=H100, flash_attn_available=True)
    tokenizer = _WordTokenizer()
    sft_rows = [{"prompt": "w " * (prompt_tokens - 3), "completion": "w " * 5}, {"prompt": "w " * prompt_tokens,
                                                                                   "completion": "a b c d e"}]  # fmt: skip
    assert longest_row(tokenizer, sft_rows) == (prompt_tokens, 5)
    trained = plan_for_run(plan, _llama2_7b_with_lora(cfg.lora), tokenizer, sft_rows, cfg.trainer.batch_size)
    assert trained.gradient_checkpointing == planned.gradient_checkpointing == (prompt_tokens == 880)


class _WordTokenizer:
    """One token per word: rows of an exact length."""

    def __call__(self, texts: list[str]) -> dict:
        return {"input_ids": [text.split() for text in texts]}


def test_trl_s_fused_head_keeps_only_the_completions_rows_on_cuda():
    """The installed TRL's SFT loss projects the hidden states in tiles, never the (tokens x vocab) logits;
    with Triton (CUDA) only the positions the loss covers."""
    shape = model_shape(LLAMA2_7B).with_lora(LoraConfig(r=8, alpha=16, dropout=0.1))
    plan = hardware_plan(AUTO, gpu=H100, flash_attn_available=True)
    step = Step.of(plan, batch_size=8, prompt_tokens=512, completion_tokens=5)
    assert step == Step(8 * 517, 8 * 5)
    need = step_memory(shape, step, plan, checkpointing=False)
    assert need.head == 8 * 5 * (4 * 4096 + 17)  # the 40 fp32 hidden rows and per-row statistics
    # backward: their fp32 gradients, a 40 x 32,000 bf16 tile, the fp32 head's rows cast to bf16
    assert need.backward == 40 * 4096 * 4 + 40 * 32000 * 2 + 32000 * 4096 * 2
    assert need.backward < 0.3 * 2**30 < 8 * 32000 * step.tokens  # the fp32 logits and their gradient: 1 GiB


def test_checkpointing_is_decided_without_the_rows_when_configured():
    plan = hardware_plan(AUTO, gpu=None)
    assert not needs_checkpointing(plan, ModelShape(1, 0, 1, 1, 1, 1, 1, ()), Step(10**9, 10**9))  # the CPU: off
