"""What the machine has and how a model runs on it: the GPU, the hardware plan, quantization and precision.

`hardware_plan` is a pure function of the config and what the machine has (`Gpu`), so every
CUDA choice (4-bit NF4 + double quantization, bf16 or fp16 compute, FlashAttention-2, fused
AdamW, gradient checkpointing from a memory estimate) is unit-tested without a GPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from faultllm.config.groups import ModelConfig
from faultllm.runtime.errors import FaultLLMError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Gpu:
    """A GPU: the one this process sees (`detect_gpu`), or one `plan.gpu` names (`cost.flops.GPUS`, from datasheets)."""

    name: str  # exactly as torch.cuda.get_device_name() says it: the key to cost.flops.PEAK_TFLOPS
    memory_gib: float  # as torch reports it
    bf16: bool  # compute capability 8+ (Ampere and newer): bf16 and FlashAttention-2; T4 and V100: fp16 on SDPA
    bandwidth_tb_s: float | None = None  # memory bandwidth, TB/s (what batch-1 decoding waits on): datasheets only


def detect_gpu() -> Gpu | None:
    """The first visible CUDA device, or None."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    # compute capability 8+ (Ampere): is_bf16_supported() also says yes where bf16 is only emulated (T4, V100)
    bf16 = torch.cuda.get_device_capability()[0] >= 8
    return Gpu(name=props.name, memory_gib=props.total_memory / 2**30, bf16=bf16)


def flash_attention_available() -> bool:
    """transformers' own check: flash-attn installed and importable with this torch, not just present on disk."""
    from transformers.utils import is_flash_attn_2_available

    return bool(is_flash_attn_2_available())


@dataclass(frozen=True)
class HardwarePlan:
    device: str  # "cuda" | "cpu"
    quantization: str  # "nf4" | "none"
    attn_implementation: str  # "flash_attention_2" | "sdpa" | "eager"
    dtype: str  # "bfloat16" | "float16" | "float32"
    optimizer: str  # a transformers `optim` name
    gradient_checkpointing: bool | None  # None: decided per run from the estimated memory need (`needs_checkpointing`)
    gpu_memory_gib: float | None = None
    gpu_name: str | None = None  # the one GPU this process uses


DETECT = "detect"


def hardware_plan(
    model_cfg: ModelConfig, gpu: Gpu | str | None = DETECT, flash_attn_available: bool | None = None
) -> HardwarePlan:
    """The machine's plan for this model config; `gpu` is detected unless given (None: no CUDA)."""
    if gpu == DETECT:
        gpu = detect_gpu()
    cuda = gpu is not None
    if flash_attn_available is None:  # not asked on a GPU older than Ampere, which never runs it
        flash_attn_available = cuda and gpu.bf16 and flash_attention_available()
    quantization = model_cfg.quantization
    if quantization == "auto":
        quantization = "nf4" if cuda else "none"
    optimizer = model_cfg.optimizer
    if optimizer == "auto":  # fused AdamW; bitsandbytes' paged optimizers never free their state (ask for them by name)
        optimizer = "adamw_torch_fused" if cuda else "adamw_torch"
    checkpointing = model_cfg.gradient_checkpointing
    if checkpointing == "auto":
        checkpointing = None if cuda else False
    return HardwarePlan(
        device="cuda" if cuda else "cpu",
        quantization=quantization,
        attn_implementation=_attention(model_cfg.attn_implementation, gpu, flash_attn_available),
        dtype=("bfloat16" if gpu.bf16 else "float16") if cuda else "float32",
        optimizer=optimizer,
        gradient_checkpointing=checkpointing if checkpointing is None else bool(checkpointing),
        gpu_memory_gib=gpu.memory_gib if cuda else None,
        gpu_name=gpu.name if cuda else None,
    )


def _attention(requested: str, gpu: Gpu | None, flash_attn_available: bool) -> str:
    """FlashAttention-2 where it runs: an Ampere or newer GPU (its kernels need compute capability 8+; on a
    T4 or V100 they fail at the first forward) with flash-attn installed; else SDPA."""
    usable = gpu is not None and gpu.bf16 and flash_attn_available
    if requested == "auto":
        if gpu is not None and gpu.bf16 and not flash_attn_available:
            log.warning("FlashAttention-2 is not installed for this torch/CUDA: attention runs on SDPA")
        return "flash_attention_2" if usable else "sdpa"
    if requested == "flash_attention_2" and gpu is not None and not gpu.bf16:
        raise FaultLLMError(
            f"model.attn_implementation=flash_attention_2 needs compute capability 8.0 or newer (Ampere); "
            f"{gpu.name} is older: use model.attn_implementation=sdpa"
        )
    if requested == "flash_attention_2" and not usable:
        raise FaultLLMError(
            "model.attn_implementation=flash_attention_2 needs CUDA and a flash-attn build matching torch "
            "(see docs/gpu.md); or use model.attn_implementation=sdpa"
        )
    return requested


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


def autocast(plan: HardwarePlan):
    """The plan's mixed precision as accelerate trains under it: autocast to bf16/fp16 (nothing in fp32)."""
    import contextlib

    import torch

    if plan.dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(plan.device, dtype=getattr(torch, plan.dtype))


def in_plan_precision(model, plan: HardwarePlan):
    """Every forward of the base model under the plan's autocast: scoring and generation during training and
    after reloading alike. Accelerate autocasts only the trained peft model's forward (not generation's
    calls, not a model reloaded for `evaluate`), which would score in another precision than training."""
    import functools

    forward = model.forward
    if plan.dtype == "float32" or getattr(forward, "in_plan_precision", False):
        return model

    @functools.wraps(forward)
    def forward_under_autocast(*args, **kwargs):
        with autocast(plan):
            return forward(*args, **kwargs)

    forward_under_autocast.in_plan_precision = True
    model.forward = forward_under_autocast
    return model
