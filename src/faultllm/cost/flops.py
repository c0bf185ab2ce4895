"""What a protocol costs in FLOPs and GPU time: GPU datasheet numbers, FLOPs per token.

FLOPs per token, with N_base the frozen base's parameters (4-bit weights counted at their unpacked
size; the input embedding, a table lookup, left out unless tied to the output head) and N_lora the
trainable LoRA parameters:
  training (model FLOPs, MFU):   forward 2 N_base + backward activation gradients 2 N_base (no weight
                                 gradients: the base is frozen) + LoRA forward and backward 6 N_lora
                                 = 4 N_base + 6 N_lora
  training (hardware FLOPs, HFU): with gradient checkpointing the forward runs twice: + 2 N_base + 2 N_lora
  scoring (forward only):        2 (N_base + N_lora)
Attention-score FLOPs (QK^T and AV, about 12 x layers x seq_len x hidden per trained token) are not
counted: a few percent for a 7B model at a few hundred tokens per row, so utilizations are slightly
understated and plans slightly optimistic, never the other way round. NF4 dequantization is not counted either.
"""

from __future__ import annotations

from faultllm.llm.hardware import Gpu

# Dense (no 2:4 sparsity) 16-bit tensor-core peak in TFLOP/s by exact `torch.cuda.get_device_name()`:
# bf16 with fp32 accumulation; fp16 where the GPU has no bf16 (T4, V100). Variants of one chip
# differ (H100 SXM / PCIe / NVL), so names are matched exactly, never by substring.
PEAK_TFLOPS: dict[str, float] = {
    "NVIDIA H100 80GB HBM3": 989.4,  # SXM
    "NVIDIA H100 PCIe": 756.0,
    "NVIDIA H100 NVL": 835.5,
    "NVIDIA H200": 989.4,  # SXM
    "NVIDIA H200 NVL": 835.5,
    "NVIDIA A100-SXM4-80GB": 312.0,
    "NVIDIA A100-SXM4-40GB": 312.0,
    "NVIDIA A100 80GB PCIe": 312.0,
    "NVIDIA A100-PCIE-40GB": 312.0,
    "NVIDIA L40S": 362.05,
    "NVIDIA L4": 121.0,
    "NVIDIA A10G": 70.0,
    "NVIDIA A10": 125.0,
    "NVIDIA RTX A6000": 154.8,
    "NVIDIA GeForce RTX 4090": 165.2,
    "Tesla T4": 65.0,  # fp16
    "Tesla V100-SXM2-16GB": 125.0,  # fp16
    "Tesla V100-SXM2-32GB": 125.0,  # fp16
    "Tesla V100-PCIE-16GB": 112.0,  # fp16
    "Tesla V100-PCIE-32GB": 112.0,  # fp16
}


# the GPUs `plan.gpu` names, from their datasheets; each name is in PEAK_TFLOPS
GPUS: dict[str, Gpu] = {
    "h100": Gpu("NVIDIA H100 80GB HBM3", 79.1, bf16=True, bandwidth_tb_s=3.35),
    "h200": Gpu("NVIDIA H200", 139.8, bf16=True, bandwidth_tb_s=4.8),
    "a100": Gpu("NVIDIA A100-SXM4-80GB", 79.1, bf16=True, bandwidth_tb_s=2.04),
    "l40s": Gpu("NVIDIA L40S", 44.4, bf16=True, bandwidth_tb_s=0.864),
    "a10": Gpu("NVIDIA A10", 22.1, bf16=True, bandwidth_tb_s=0.6),
    "t4": Gpu("Tesla T4", 14.6, bf16=False, bandwidth_tb_s=0.32),
}


def peak_tflops(device_name: str, override: float | None = None) -> float | None:
    """The override if given, else the table's value for exactly this device name, else None."""
    return override if override is not None else PEAK_TFLOPS.get(device_name.strip())


def model_flops_per_token(n_base: float, n_lora: float) -> float:
    """Training FLOPs per token with a frozen base: 4 N_base + 6 N_lora (see the module docstring)."""
    return 4.0 * n_base + 6.0 * n_lora


def hardware_flops_per_token(n_base: float, n_lora: float, checkpointing: bool) -> float:
    """FLOPs the GPU executes per trained token: the model FLOPs plus, with gradient checkpointing, a second forward."""
    recompute = 2.0 * (n_base + n_lora) if checkpointing else 0.0
    return model_flops_per_token(n_base, n_lora) + recompute


def scoring_flops_per_token(n_base: float, n_lora: float) -> float:
    """A forward pass: 2 N (unmerged LoRA adapters run as extra matmuls)."""
    return 2.0 * (n_base + n_lora)


def utilization(flops_per_token: float, tokens_per_s: float, peak: float) -> float:
    """Achieved FLOP/s over the peak (in TFLOP/s): MFU with model FLOPs, HFU with hardware FLOPs."""
    return flops_per_token * tokens_per_s / (peak * 1e12)
