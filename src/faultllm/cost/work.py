"""Amounts of work that add up (tokens, decoding steps, model loads, FLOPs) and the rates a GPU does them at:
assumed (the GPU's peak dense FLOP/s x `plan.mfu`) or measured by a `faultllm bench` run (`plan.throughput_from`)."""

from __future__ import annotations

from dataclasses import astuple, dataclass
from pathlib import Path

from faultllm.cost.flops import PEAK_TFLOPS, scoring_flops_per_token
from faultllm.cost.records import BenchRecord
from faultllm.llm.hardware import Gpu
from faultllm.llm.shape import ModelShape
from faultllm.runtime.errors import FaultLLMError


@dataclass(frozen=True)
class Work:
    """Amounts of work that add up: tokens through training and scoring, decoding steps, model loads, FLOPs."""

    train_tokens: float = 0.0
    scoring_tokens: float = 0.0  # forward-only tokens (prompts of decoded rows included)
    generated_tokens: float = 0.0
    decode_steps: float = 0.0  # sequential decoding steps (one token for every row of a batch)
    model_loads: float = 0.0
    train_flops: float = 0.0  # model FLOPs: 4 N_base + 6 N_lora per token
    train_hardware_flops: float = 0.0  # + the recomputed forward under gradient checkpointing
    scoring_flops: float = 0.0  # 2 N per scored token
    decode_flops: float = 0.0  # 2 N per generated token

    def __add__(self, other: Work) -> Work:
        return Work(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))

    def times(self, k: float) -> Work:
        return Work(*(a * k for a in astuple(self)))

    @property
    def flops(self) -> float:
        return self.train_flops + self.scoring_flops + self.decode_flops


def mean_work(works: list[Work]) -> Work:
    return sum(works[1:], works[0]).times(1 / len(works))


@dataclass(frozen=True)
class Rates:
    """How fast work is done on the planned GPU."""

    train_flops_per_s: float  # hardware FLOPs per second while training
    scoring_flops_per_s: float
    decode_step_seconds: float
    load_seconds: float
    source: str

    def seconds(self, work: Work) -> float:
        return (
            work.train_hardware_flops / self.train_flops_per_s
            + work.scoring_flops / self.scoring_flops_per_s
            + work.decode_steps * self.decode_step_seconds
            + work.model_loads * self.load_seconds
        )


def assumed_rates(gpu: Gpu, mfu: float, shape: ModelShape, quantized: bool, load_seconds: float | None) -> Rates:
    """peak x mfu for training and scoring; a decoding step at batch 1 reads every weight once, so it takes at
    least the weights' bytes over the memory bandwidth (a lower bound: bitsandbytes' 4-bit decoding is slower)."""
    peak = PEAK_TFLOPS[gpu.name]  # every GPU plan.gpu names has its peak
    flops = peak * 1e12 * mfu
    weight_bytes = shape.n_base * (0.55 if quantized else 2.0)
    decode = max(scoring_flops_per_token(shape.n_base, 0) / flops, weight_bytes / (gpu.bandwidth_tb_s * 1e12))
    load = default_load_seconds(shape) if load_seconds is None else load_seconds
    return Rates(flops, flops, decode, load, f"{gpu.name}: {peak:g} TFLOP/s peak x MFU {mfu:g}")


def default_load_seconds(shape: ModelShape) -> float:
    """Reading a 16-bit checkpoint (2 bytes per parameter) and quantizing it at 1 GB/s."""
    return shape.n_params * 2.0 / 1e9


def measured_rates(path: str, shape: ModelShape, load_seconds: float | None) -> tuple[Rates, BenchRecord]:
    """The FLOP/s a `faultllm bench` run achieved (its tokens/s x its FLOPs per token), and its decoding and
    load times scaled by model size when it measured another model."""
    file = Path(path).expanduser()
    file = file / BenchRecord.FILE if file.is_dir() else file
    if not file.exists():
        raise FaultLLMError(f"plan.throughput_from={path}: no bench.json there; run `faultllm bench ...` first")
    bench = BenchRecord.read(file)
    scale = shape.n_base / bench.n_base
    rates = Rates(
        train_flops_per_s=bench.tokens_per_second * bench.hardware_flops_per_token,
        scoring_flops_per_s=bench.scoring_tokens_per_second * bench.scoring_flops_per_token,
        decode_step_seconds=bench.decode_step_seconds * scale,
        load_seconds=bench.load_seconds * scale if load_seconds is None else load_seconds,
        source=f"measured by faultllm bench ({file}) on {bench.device} with {bench.model}",
    )
    return rates, bench
