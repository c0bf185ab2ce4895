"""What a protocol costs in FLOPs and GPU time: GPU datasheet numbers, FLOPs per token, a model's shape
from its config.json alone, and the stand-in data a plan renders prompts from when the real files are absent.

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

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from faultllm.errors import FaultLLMError
from faultllm.files import write_csv
from faultllm.loaders import HST_FEATURES, LABEL
from faultllm.paths import PROJECT_ROOT
from faultllm.schema import DataConfig

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


@dataclass(frozen=True)
class GpuSpec:
    """A GPU `plan.gpu` names: its exact device name (for the peak), memory as torch reports it, bandwidth."""

    device_name: str
    memory_gib: float
    bandwidth_tb_s: float  # memory bandwidth, TB/s: what batch-1 decoding waits on
    bf16: bool

    @property
    def peak_tflops(self) -> float:
        return PEAK_TFLOPS[self.device_name]


GPUS: dict[str, GpuSpec] = {
    "h100": GpuSpec("NVIDIA H100 80GB HBM3", 79.1, 3.35, True),
    "h200": GpuSpec("NVIDIA H200", 139.8, 4.8, True),
    "a100": GpuSpec("NVIDIA A100-SXM4-80GB", 79.1, 2.04, True),
    "l40s": GpuSpec("NVIDIA L40S", 44.4, 0.864, True),
    "a10": GpuSpec("NVIDIA A10", 22.1, 0.6, True),
    "t4": GpuSpec("Tesla T4", 14.6, 0.32, False),
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


def param_counts(model) -> tuple[int, int]:
    """(N_base, N_lora) of a peft model; 4-bit weights at their unpacked size, untied input embedding left out."""
    n_lora, total = model.get_nb_trainable_parameters()
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    tied = output is not None and output.weight is embedding
    return total - n_lora - (0 if tied or embedding.requires_grad else embedding.numel()), n_lora


# ---------------------------------------------------------------- a model's shape from config.json


@dataclass(frozen=True)
class ModelShape:
    """What the cost of a model depends on, read from its config.json (built on the meta device: no weights)."""

    n_params: int  # every parameter, tied ones once
    n_lookup: int  # the input embedding when it is not tied to the head: a lookup, no FLOPs
    hidden: int
    intermediate: int
    layers: int
    vocab: int
    context: int  # max_position_embeddings
    linears: tuple[tuple[str, int, int], ...]  # (module name, in, out) of every linear layer but the output head
    kv_hidden: int = 0  # the k and v projections' width (grouped-query attention); 0: hidden

    @property
    def n_base(self) -> int:
        return self.n_params - self.n_lookup

    def adapted(self, target_modules: str | list) -> list[tuple[str, int, int]]:
        """The linear layers LoRA adapts (all-linear: every one but the head, as peft)."""
        if isinstance(target_modules, str) and target_modules != "all-linear":
            target_modules = [target_modules]
        return [
            (name, n_in, n_out)
            for name, n_in, n_out in self.linears
            if target_modules == "all-linear" or any(name == t or name.endswith(f".{t}") for t in target_modules)
        ]

    def n_lora(self, r: int, target_modules: str | list) -> int:
        """LoRA parameters of rank r on the targeted linear layers."""
        return int(r * sum(n_in + n_out for _, n_in, n_out in self.adapted(target_modules)))


def model_shape(config_dir: str | Path, layers: int | None = None) -> ModelShape:
    """The shape of the architecture config.json describes (its first `layers` layers if given, as
    model.init=random builds it): the model is built on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(config_dir))
    except (OSError, ValueError) as err:
        raise FaultLLMError(f"cannot read a model config.json in {config_dir}: {str(err).splitlines()[0]}") from err
    if layers is not None:
        config.get_text_config().num_hidden_layers = layers
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is not None and head.weight is embedding.weight
    linears = tuple(
        (name, module.in_features, module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not head
    )
    text = config.get_text_config()
    return ModelShape(
        n_params=sum(p.numel() for p in model.parameters()),
        n_lookup=0 if tied else embedding.weight.numel(),
        hidden=text.hidden_size,
        intermediate=text.intermediate_size,
        layers=text.num_hidden_layers,
        vocab=text.vocab_size,
        context=int(getattr(text, "max_position_embeddings", 0) or 0),
        linears=linears,
        kv_hidden=kv_hidden(text),
    )


def kv_hidden(config) -> int:
    """The k and v projections' width: fewer heads than the queries' under grouped-query attention."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return (getattr(config, "num_key_value_heads", None) or heads) * head_dim


# ---------------------------------------------------------------- stand-in data when the real files are absent

TEP_STAND_IN = PROJECT_ROOT / "data" / "tep_sim"


def stand_in_data(data_cfg: DataConfig, cache_dir: str) -> tuple[DataConfig, str | None]:
    """`data_cfg` itself when it names its files; without data.path, TEP rows from the bundled simulation
    and HST rows from a synthetic HST-shaped table, at the protocol's sizes (with a note saying so).

    Prompts of min-max scaled rows are as long whatever the values; unscaled, the stand-in's raw values
    (TEP: the simulation's, HST: 0/1 and [0, 1)) set the lengths."""
    if data_cfg.path:
        return data_cfg, None
    if data_cfg.loader == "tep":
        note = f"data.path is not set: TEP rows from the bundled simulation ({TEP_STAND_IN.name}), same schema"
        return _with_path(data_cfg, str(TEP_STAND_IN)), note
    if data_cfg.loader == "hst":
        note = "data.path is not set: a synthetic HST-shaped table (46 features: 31 binary, 15 in [0, 1))"
        return _with_path(data_cfg, str(synthetic_hst(cache_dir))), note
    raise FaultLLMError("data.path is not set: the rows to plan for are needed (data=csv data.path=TABLE)")


def _with_path(data_cfg: DataConfig, path: str) -> DataConfig:
    return replace(data_cfg, path=path)


def synthetic_hst(cache_dir: str, rows: int = 2000, seed: int = 0) -> Path:
    """A CSV in the HST layout (header 0..45,label): 31 binary and 15 float features, labels 0/1, seeded."""
    rng = np.random.default_rng(seed)
    values = np.hstack([rng.integers(0, 2, size=(rows, 31)), rng.uniform(size=(rows, 15)).round(6)])
    frame = pd.DataFrame(values, columns=HST_FEATURES)
    frame[LABEL] = rng.integers(0, 2, size=rows)
    digest = hashlib.sha1(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()).hexdigest()[:10]
    path = Path(cache_dir).expanduser() / "stand_in" / f"hst-synthetic-{digest}.csv"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_csv(frame, path, durable=False)  # a stand-in, rebuilt when missing
    return path
