"""The one place that turns a config into a tokenizer and a (quantized, LoRA-wrapped) causal LM.

`hardware_plan` is a pure function of the config and what the machine has, so the CUDA
choices (4-bit NF4 + double quantization + bf16 compute, FlashAttention-2) are
unit-tested without a GPU.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from faultllm.errors import FaultLLMError
from faultllm.tiny import ensure_tiny_model


@dataclass(frozen=True)
class HardwarePlan:
    device: str  # "cuda" | "cpu"
    quantization: str  # "nf4" | "none"
    attn_implementation: str  # "flash_attention_2" | "sdpa" | "eager"
    dtype: str  # "bfloat16" | "float32"
    optimizer: str  # a transformers `optim` name
    gradient_checkpointing: bool


def hardware_plan(
    model_cfg, cuda_available: bool | None = None, flash_attn_available: bool | None = None
) -> HardwarePlan:
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    if flash_attn_available is None:
        flash_attn_available = importlib.util.find_spec("flash_attn") is not None

    quantization = model_cfg.quantization
    if quantization == "auto":
        quantization = "nf4" if cuda_available else "none"
    if quantization not in ("nf4", "none"):
        raise FaultLLMError(f"model.quantization={quantization!r}; expected auto, nf4 or none")

    attn = model_cfg.attn_implementation
    if attn == "auto":
        attn = "flash_attention_2" if cuda_available and flash_attn_available else "sdpa"
    elif attn == "flash_attention_2" and not (cuda_available and flash_attn_available):
        raise FaultLLMError("model.attn_implementation=flash_attention_2 needs CUDA and `pip install -e '.[gpu]'`")

    optimizer = model_cfg.optimizer
    if optimizer == "auto":  # paged optimizers page optimizer state to CPU under memory pressure, CUDA only
        optimizer = "paged_adamw_32bit" if cuda_available else "adamw_torch"
    checkpointing = model_cfg.gradient_checkpointing
    if checkpointing == "auto":
        checkpointing = cuda_available
    return HardwarePlan(
        device="cuda" if cuda_available else "cpu",
        quantization=quantization,
        attn_implementation=attn,
        dtype="bfloat16" if cuda_available else "float32",
        optimizer=optimizer,
        gradient_checkpointing=bool(checkpointing),
    )


def quantization_config(plan: HardwarePlan):
    """4-bit NF4 with double quantization; compute in bf16 on GPU (fp32 on CPU, where bf16 matmuls are slow)."""
    if plan.quantization != "nf4":
        return None
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=getattr(torch, plan.dtype),
    )


def lora_config(lora_cfg):
    from peft import LoraConfig

    return LoraConfig(
        r=int(lora_cfg.r),
        lora_alpha=int(lora_cfg.alpha),
        lora_dropout=float(lora_cfg.dropout),
        target_modules="all-linear",  # every linear layer of every block (not lm_head), as in QLoRA
        bias="none",
        task_type="CAUSAL_LM",
    )


def resolve_model_path(model_cfg, cache_dir: str) -> str:
    """The base model to load: a hub id, a local directory, or the tiny model (shipped or built on first use)."""
    if model_cfg.get("build") == "tiny":
        return str(ensure_tiny_model(model_cfg, cache_dir))
    path = str(model_cfg.path)
    looks_local = path.startswith((".", "/", "~")) or Path(path).expanduser().exists()
    if looks_local and not Path(path).expanduser().is_dir():
        raise FaultLLMError(f"model.path={path}: no such model directory")
    return str(Path(path).expanduser()) if looks_local else path


@dataclass(frozen=True)
class ModelSpec:
    """What `build_for_training` needs: the base model, how to load it here, and the adapters to add."""

    path: str
    plan: HardwarePlan
    lora: Any  # the lora config slice: r, alpha, dropout

    @classmethod
    def from_config(cls, model_cfg, lora_cfg, cache_dir: str) -> ModelSpec:
        return cls(resolve_model_path(model_cfg, cache_dir), hardware_plan(model_cfg), lora_cfg)


def load_tokenizer(path: str, padding_side: str = "left"):
    """Pad token distinct from EOS (else EOS is masked as padding and never learned)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as err:
        raise FaultLLMError(f"cannot load a tokenizer from {path!r}: {str(err).splitlines()[0]}") from None
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        if tokenizer.unk_token is not None and tokenizer.unk_token_id != tokenizer.eos_token_id:
            tokenizer.pad_token = tokenizer.unk_token  # Llama-2's usual choice: no new embedding row needed
        else:
            raise FaultLLMError(f"{path}: the tokenizer has no pad or unk token distinct from EOS")
    tokenizer.padding_side = padding_side
    return tokenizer


def load_base_model(path: str, plan: HardwarePlan):
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=getattr(torch, plan.dtype),
            attn_implementation=plan.attn_implementation,
            quantization_config=quantization_config(plan),
            device_map={"": 0} if plan.device == "cuda" else None,
        )
    except OSError as err:
        raise FaultLLMError(f"cannot load a model from {path!r}: {str(err).splitlines()[0]}") from None
    model.config.use_cache = False  # training; evaluation turns the cache on where it helps
    return model


def build_for_training(spec: ModelSpec):
    """(peft model, tokenizer) ready for SFT: base model, k-bit preparation if quantized, LoRA."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    tokenizer = load_tokenizer(spec.path, padding_side="right")
    model = load_base_model(spec.path, spec.plan)
    if spec.plan.quantization == "nf4":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=spec.plan.gradient_checkpointing)
    elif spec.plan.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    return get_peft_model(model, lora_config(spec.lora)), tokenizer


def load_trained(run_dir: Path, model_cfg, cache_dir: str):
    """(model with the run's adapter, tokenizer) for evaluation or explanation."""
    from peft import PeftModel

    adapter = Path(run_dir) / "adapter"
    if not (adapter / "adapter_config.json").exists():
        raise FaultLLMError(
            f"{run_dir}: no adapter found (expected {adapter}/adapter_config.json); was training finished?"
        )
    tokenizer = load_tokenizer(str(adapter), padding_side="left")
    base = load_base_model(resolve_model_path(model_cfg, cache_dir), hardware_plan(model_cfg))
    model = PeftModel.from_pretrained(base, str(adapter))
    return model.eval(), tokenizer
