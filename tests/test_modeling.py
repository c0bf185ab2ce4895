from __future__ import annotations

import pytest
import torch

from faultllm.errors import FaultLLMError
from faultllm.modeling import hardware_plan, lora_config, quantization_config, resolve_model_path


def test_cuda_path_asks_for_nf4_double_quant_bf16_and_flash_attention(compose_cfg):
    cfg = compose_cfg("train")  # the default model: Llama-2-7b-chat
    plan = hardware_plan(cfg.model, cuda_available=True, flash_attn_available=True)
    assert (plan.device, plan.quantization, plan.attn_implementation, plan.dtype) == (
        "cuda",
        "nf4",
        "flash_attention_2",
        "bfloat16",
    )
    assert plan.optimizer == "paged_adamw_32bit" and plan.gradient_checkpointing
    bnb = quantization_config(plan)
    assert bnb.load_in_4bit and bnb.bnb_4bit_quant_type == "nf4" and bnb.bnb_4bit_use_double_quant
    assert bnb.bnb_4bit_compute_dtype == torch.bfloat16


def test_falls_back_to_sdpa_without_flash_attn_and_to_full_precision_on_cpu(compose_cfg):
    cfg = compose_cfg("train")
    assert hardware_plan(cfg.model, cuda_available=True, flash_attn_available=False).attn_implementation == "sdpa"
    cpu = hardware_plan(cfg.model, cuda_available=False, flash_attn_available=False)
    assert (cpu.quantization, cpu.attn_implementation, cpu.dtype, cpu.optimizer) == (
        "none",
        "sdpa",
        "float32",
        "adamw_torch",
    )
    assert quantization_config(cpu) is None
    forced = hardware_plan(
        compose_cfg("train", ["model.quantization=nf4"]).model, cuda_available=False, flash_attn_available=False
    )
    assert forced.quantization == "nf4" and quantization_config(forced).bnb_4bit_compute_dtype == torch.float32
    with pytest.raises(FaultLLMError, match="needs CUDA"):
        hardware_plan(
            compose_cfg("train", ["model.attn_implementation=flash_attention_2"]).model,
            cuda_available=False,
            flash_attn_available=False,
        )


def test_lora_r8_on_llama2_7b_has_19_988_480_trainable_parameters(compose_cfg):
    from peft import get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    llama2_7b = LlamaConfig(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, vocab_size=32000
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(llama2_7b)
    peft_model = get_peft_model(model, lora_config(compose_cfg("train", ["lora.r=8"]).lora))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    # r * (in + out) over q, k, v, o (4096 -> 4096) and gate, up, down (4096 <-> 11008), 32 blocks
    assert trainable == 32 * 8 * (4 * (4096 + 4096) + 3 * (4096 + 11008)) == 19_988_480


def test_missing_local_model_path_is_a_clear_error(compose_cfg, tmp_path):
    with pytest.raises(FaultLLMError, match="no such model directory"):
        cfg = compose_cfg("train", [f"model.path={tmp_path / 'nope'}"])
        resolve_model_path(cfg.model, cfg.cache_dir)
