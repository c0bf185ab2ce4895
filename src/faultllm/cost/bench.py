"""Timed training steps, scoring batches and batch-1 decoding on this machine, as `faultllm train` runs them.

`faultllm bench` writes what `run_bench` measures to bench.json (a `BenchRecord`), which `faultllm plan
plan.throughput_from=DIR` reads; scripts/bench_gpu.py prints the same measurement in more detail,
and the other scripts/bench_*.py build their runs with `setup` and `bench_trainer`. Tokens are real
(non-pad) tokens. Training is clocked from the end of the warm-up steps to the end of the last one,
so start-up, kernel selection and first allocations are not counted.
"""

from __future__ import annotations

import gc
import logging
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from tempfile import TemporaryDirectory

from transformers import TrainerCallback

from faultllm.config.groups import BenchConfig
from faultllm.config.jobs import TrainJob
from faultllm.cost.flops import (
    hardware_flops_per_token,
    model_flops_per_token,
    peak_tflops,
    scoring_flops_per_token,
    utilization,
)
from faultllm.cost.records import BenchRecord
from faultllm.cost.tokens import row_tokens
from faultllm.data.splits import Split, prepared_split
from faultllm.data.standins import stand_in_data
from faultllm.llm.build import ModelSpec, build_for_training
from faultllm.llm.decoding import generate_answers
from faultllm.llm.hardware import HardwarePlan, detect_gpu
from faultllm.llm.scoring import answer_space, score
from faultllm.llm.shape import model_shape, param_counts
from faultllm.llm.sources import model_files
from faultllm.llm.trainer import plan_for_run, sft_trainer
from faultllm.prompts.serialize import Prompts, Serializer
from faultllm.runtime.errors import FaultLLMError

log = logging.getLogger(__name__)

GIB = 2**30
CPU_PARAMETER_LIMIT = 2e9  # beyond this a CPU takes hours per step: bench such a model on a GPU


# ---------------------------------------------------------------- a config's model, split and trainer


@dataclass
class Setup:
    spec: ModelSpec
    model: object
    tokenizer: object
    split: Split  # scaled
    serializer: Serializer
    cfg: TrainJob
    load_seconds: float = 0.0  # loading the base model (and quantizing it) plus adding the adapters
    plan: HardwarePlan | None = None  # as run, once `bench_trainer` has decided checkpointing
    data_note: str | None = None  # the stand-in data used when data.path is not set


def setup(cfg: TrainJob) -> Setup:
    """The model, split and config `faultllm train` would use (data.path unset: the plan's stand-in data)."""
    data_cfg, note = stand_in_data(cfg.data, cfg.cache_dir)
    spec = ModelSpec.from_config(cfg.model, cfg.lora, cfg.cache_dir, cfg.prompt)
    started = time.perf_counter()
    model, tokenizer = build_for_training(spec, cfg.seed)
    _sync(spec.plan)
    load_seconds = time.perf_counter() - started
    split, _ = prepared_split(data_cfg, cfg.seed)
    serializer = Serializer.from_config(
        cfg.prompt, data_cfg.system_prompt, split.features, split.labels, tokenizer, cfg.seed, split.train
    )  # prompt.shots: in-context examples from the training rows, as `train` renders them
    return Setup(spec, model, tokenizer, split, serializer, cfg, load_seconds, data_note=note)


def bench_trainer(run: Setup, rows: list[dict], out_dir: Path):
    """The SFT trainer `fit` would build (gradient checkpointing decided the same way), without checkpoints."""
    cfg = run.cfg
    run.plan = plan_for_run(run.spec.plan, run.model, run.tokenizer, rows, cfg.trainer.batch_size)
    return sft_trainer(
        run.model, run.tokenizer, rows, cfg.trainer, run.plan, out_dir, checkpoints=False, seed=cfg.seed,
        progress=cfg.progress,
    )  # fmt: skip


def _sync(plan: HardwarePlan) -> None:
    if plan.device == "cuda":
        import torch

        torch.cuda.synchronize()


def device_used_bytes() -> int:
    """Memory in use on the whole device, as nvidia-smi shows it (see `timed_training`)."""
    import torch

    try:
        return torch.cuda.device_memory_used()  # NVML; needs nvidia-ml-py
    except Exception:  # no nvidia-ml-py, or NVML unusable (containers without it)
        free, total = torch.cuda.mem_get_info()  # cudaMemGetInfo: the same device-wide view
        return total - free


def peaks_from_here() -> None:
    """CUDA peaks from now on only: what the setup freed (model.init=random's weights built on the GPU, the
    load's temporaries) is handed back to the device first, else torch's cache keeps it reserved and the
    reserved and device-wide peaks would count it as the training steps' memory."""
    import torch

    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def process_peak_bytes() -> int:
    """This process's peak resident memory (CPU runs): ru_maxrss is KiB on Linux, bytes on macOS."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


# ---------------------------------------------------------------- the timed parts


class TimedWindow(TrainerCallback):
    """Clocks optimizer steps warmup+1 .. warmup+steps, synchronizing `sync` at both ends only,
    and samples device memory (`sample`) after every optimizer step."""

    def __init__(self, warmup: int, steps: int, sync: Callable[[], None], sample: Callable[[], int]) -> None:
        self.bounds, self.sync, self.sample = (warmup, warmup + steps), sync, sample
        self.marks: list[tuple[float, int]] = []  # (time, state.num_input_tokens_seen) at both bounds
        self.device_peak = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.device_peak = max(self.device_peak, self.sample())
        if state.global_step in self.bounds:
            self.sync()
            self.marks.append((time.perf_counter(), state.num_input_tokens_seen))

    def tokens_and_seconds(self) -> tuple[int, float]:
        if len(self.marks) != 2:
            raise RuntimeError(f"training stopped before step {self.bounds[1]}; timed nothing")
        (start, tokens_before), (end, tokens_after) = self.marks
        return tokens_after - tokens_before, end - start


def timed_training(run: Setup, rows: list[dict], warmup: int, steps: int) -> tuple[TimedWindow, dict[str, float]]:
    """Runs warmup + steps optimizer steps (cycling `rows` if needed); returns the window and memory peaks in GiB.

    allocated: live torch tensors: 4-bit weights, LoRA, activations, grads; optimizer state unless paged (a paged
               bitsandbytes optimizer allocates its state itself, outside torch's allocator).
    reserved:  allocated + torch's caching-allocator slack; what torch holds from CUDA.
    device:    device-wide used memory, sampled after every optimizer step: reserved + the CUDA context, cuBLAS and
               FlashAttention workspaces, bitsandbytes' paged optimizer state + other processes on the same GPU.
    On a CPU: the process's peak resident memory (the libraries included).
    """
    import torch

    cuda = run.spec.plan.device == "cuda"
    window = TimedWindow(warmup, steps, lambda: _sync(run.spec.plan), device_used_bytes if cuda else lambda: 0)
    if cuda:
        peaks_from_here()
    with TemporaryDirectory() as tmp:
        trainer = bench_trainer(run, rows, Path(tmp))
        trainer.args.max_steps = warmup + steps  # overrides epochs; the data loader cycles when rows run out
        trainer.args.include_num_input_tokens_seen = "non_padding"  # attention-mask sum per micro-batch
        trainer.add_callback(window)
        trainer.train()
    if not cuda:
        return window, {"process": process_peak_bytes() / GIB}
    memory = {
        "allocated": torch.cuda.max_memory_allocated() / GIB,
        "reserved": torch.cuda.max_memory_reserved() / GIB,
        "device": window.device_peak / GIB,
    }
    return window, memory


def timed_scoring(run: Setup, prompts: Prompts, batch_size: int) -> tuple[float, float]:
    """(scored tokens/s, rows/s) of restricted scoring over `prompts`, after a warm-up call."""
    tokenizer = run.tokenizer
    space = answer_space(tokenizer, prompts)
    score(run.model, tokenizer, prompts.texts[:batch_size], prompts.truth[:batch_size], space, batch_size)
    _sync(run.spec.plan)
    started = time.perf_counter()
    score(run.model, tokenizer, prompts.texts, prompts.truth, space, batch_size)
    _sync(run.spec.plan)
    seconds = time.perf_counter() - started
    return float(row_tokens(tokenizer, prompts, space).scored.sum()) / seconds, len(prompts.texts) / seconds


def decode_step_seconds(run: Setup, texts: list[str], new_tokens: int) -> float:
    """Seconds per generated token at batch 1 (the study's evaluation): decoding `new_tokens` tokens minus
    decoding one, over as many steps, so the prompt's forward pass cancels out (each timed twice, the faster
    kept). EOS is suppressed: a random or barely trained model would stop at any length."""
    generation = run.model.generation_config
    saved = generation.min_new_tokens
    timings: dict[int, float] = {}
    try:
        for tokens in (1, new_tokens) * 2:
            generation.min_new_tokens = tokens
            _sync(run.spec.plan)
            started = time.perf_counter()
            generate_answers(run.model, run.tokenizer, texts, max_new_tokens=tokens, batch_size=1)
            _sync(run.spec.plan)
            timings[tokens] = min(timings.get(tokens, float("inf")), time.perf_counter() - started)
    finally:
        generation.min_new_tokens = saved
    return max(0.0, timings[new_tokens] - timings[1]) / ((new_tokens - 1) * len(texts))


# ---------------------------------------------------------------- bench.json


def check_fits_here(cfg: TrainJob) -> None:
    """A multi-billion-parameter model on a CPU would take hours per step: refuse it in one line."""
    if detect_gpu() is not None or cfg.model.build == "tiny":
        return
    layers = cfg.model.layers if cfg.model.init == "random" else None  # a shrunk random model may fit
    n_params = model_shape(model_files(cfg.model, cfg.cache_dir).config_dir, layers).n_params
    if n_params > CPU_PARAMETER_LIMIT:
        raise FaultLLMError(
            f"bench: no CUDA GPU here, and {cfg.model.path} has {n_params / 1e9:.1f} B parameters (hours per "
            "step on a CPU): run `faultllm bench model=tiny` here, this model on a GPU box"
        )


def run_bench(cfg: TrainJob, bench: BenchConfig) -> BenchRecord:
    """Times `bench.steps` training steps after `bench.warmup_steps`, `bench.scoring_batches` scoring batches
    and batch-1 decoding; returns bench.json's record."""
    check_fits_here(cfg)
    run = setup(cfg)
    per_step = cfg.trainer.batch_size * cfg.trainer.grad_accum
    train_rows = run.split.train.head((bench.warmup_steps + bench.steps) * per_step)
    sft_rows = run.serializer.render(train_rows, own_rows=True).sft_rows()  # the first rows of the pool itself
    window, memory = timed_training(run, sft_rows, bench.warmup_steps, bench.steps)
    test = run.serializer.render(run.split.test.head(bench.scoring_batches * cfg.eval.batch_size))
    timings = Timings(
        *window.tokens_and_seconds(),
        memory,
        *timed_scoring(run, test, cfg.eval.batch_size),
        decode_step_seconds(run, test.texts[: bench.generate_rows], max(2, cfg.eval.max_new_tokens)),
    )
    return bench_record(cfg, bench, run, timings)


@dataclass(frozen=True)
class Timings:
    """What `run_bench` clocked: the timed training window, its memory peaks, scoring and decoding rates."""

    train_tokens: int
    train_seconds: float
    memory_gib: dict[str, float]
    scoring_tokens_per_second: float
    scoring_rows_per_second: float
    decode_step_seconds: float


def bench_record(cfg: TrainJob, bench: BenchConfig, run: Setup, timings: Timings) -> BenchRecord:
    """bench.json: rates, memory, parameters and, on CUDA with a known peak, MFU and HFU."""
    plan, (n_base, n_lora) = run.plan, param_counts(run.model)
    rate = timings.train_tokens / timings.train_seconds
    peak = peak_tflops(plan.gpu_name, bench.peak_tflops) if plan.gpu_name else None
    model_flops = model_flops_per_token(n_base, n_lora)
    hardware_flops = hardware_flops_per_token(n_base, n_lora, bool(plan.gradient_checkpointing))
    memory = timings.memory_gib
    return BenchRecord(
        device=plan.gpu_name or "cpu",
        model=str(cfg.model.path or "tiny"),
        init=cfg.model.init,
        hardware=asdict(plan),
        n_base=n_base,
        n_lora=n_lora,
        batch_size=cfg.trainer.batch_size,
        grad_accum=cfg.trainer.grad_accum,
        warmup_steps=bench.warmup_steps,
        steps=bench.steps,
        train_tokens=timings.train_tokens,
        tokens_per_second=rate,
        step_seconds=timings.train_seconds / bench.steps,
        load_seconds=run.load_seconds,
        peak_memory_gib=memory.get("reserved", memory.get("process")),
        memory_gib=memory,
        model_flops_per_token=model_flops,
        hardware_flops_per_token=hardware_flops,
        scoring_flops_per_token=scoring_flops_per_token(n_base, n_lora),
        peak_tflops=peak,
        mfu=utilization(model_flops, rate, peak) if peak else None,
        hfu=utilization(hardware_flops, rate, peak) if peak else None,
        data_note=run.data_note,
        scoring_tokens_per_second=timings.scoring_tokens_per_second,
        scoring_rows_per_second=timings.scoring_rows_per_second,
        decode_step_seconds=timings.decode_step_seconds,
    )
