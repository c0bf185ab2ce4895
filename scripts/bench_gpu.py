"""GPU benchmark for the configured model: training tokens/s, MFU and HFU, peak memory, evaluation examples/s.

    python scripts/bench_gpu.py                                   # Llama-2-7b-chat, 4-bit NF4, bundled TEP
    python scripts/bench_gpu.py model=llama2_13b_chat trainer.batch_size=4 --peak-tflops 989.4
    python scripts/bench_gpu.py --warmup-steps 5 --steps 50 --rows 200

Trains `--warmup-steps` + `--steps` optimizer steps (the same code path as `faultllm train`)
and times only the last `--steps` of them, so CUDA start-up, kernel selection and the first
allocations are not counted. Tokens are real (non-pad) tokens. Then scores the test rows with
the restricted evaluator, after a warm-up call.

FLOPs per token, with N_base the frozen base's parameters (4-bit weights counted at their
unpacked size; the input embedding, a table lookup, left out unless tied to the output head)
and N_lora the trainable LoRA parameters:
  model FLOPs (MFU):    forward 2 N_base + backward activation gradients 2 N_base (no weight
                        gradients: the base is frozen) + LoRA forward and backward 6 N_lora
                        = 4 N_base + 6 N_lora
  hardware FLOPs (HFU): with gradient checkpointing the forward runs twice: + 2 N_base + 2 N_lora
Attention-score FLOPs (QK^T and AV, about 12 x layers x seq_len x hidden per token with
backward) are not counted: a few percent for a 7B model at a few hundred tokens per row, so
MFU and HFU are slightly understated, never overstated. NF4 dequantization is not counted either.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from tempfile import TemporaryDirectory

from faultllm.distributed import pin_first_gpu

pin_first_gpu()  # one GPU, before transformers (bitsandbytes asks CUDA on import): a benchmark of one device

from transformers import TrainerCallback  # noqa: E402

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


def peak_tflops(device_name: str, override: float | None = None) -> float | None:
    """The override if given, else the table's value for exactly this device name, else None."""
    return override if override is not None else PEAK_TFLOPS.get(device_name.strip())


def model_flops_per_token(n_base: int, n_lora: int) -> float:
    """Training FLOPs per token with a frozen base: 4 N_base + 6 N_lora (see the module docstring)."""
    return 4.0 * n_base + 6.0 * n_lora


def hardware_flops_per_token(n_base: int, n_lora: int, checkpointing: bool) -> float:
    """FLOPs the GPU executes per token: the model FLOPs plus, with gradient checkpointing, a second forward."""
    recompute = 2.0 * (n_base + n_lora) if checkpointing else 0.0
    return model_flops_per_token(n_base, n_lora) + recompute


def param_counts(model) -> tuple[int, int]:
    """(N_base, N_lora) of a peft model; 4-bit weights at their unpacked size, untied input embedding left out."""
    n_lora, total = model.get_nb_trainable_parameters()
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    tied = output is not None and output.weight is embedding
    return total - n_lora - (0 if tied or embedding.requires_grad else embedding.numel()), n_lora


def device_used_bytes() -> int:
    """Memory in use on the whole device, as nvidia-smi shows it (see `train` for what it includes)."""
    import torch

    try:
        return torch.cuda.device_memory_used()  # NVML; needs nvidia-ml-py
    except Exception:  # no nvidia-ml-py, or NVML unusable (containers without it)
        free, total = torch.cuda.mem_get_info()  # cudaMemGetInfo: the same device-wide view
        return total - free


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


def train(run, rows: list[dict], warmup: int, steps: int) -> tuple[TimedWindow, dict[str, float]]:
    """Runs warmup + steps optimizer steps (cycling `rows` if needed); returns the window and memory peaks in GiB.

    allocated: live torch tensors: 4-bit weights, LoRA, activations, grads; optimizer state unless paged (a paged
               bitsandbytes optimizer allocates its state itself, outside torch's allocator).
    reserved:  allocated + torch's caching-allocator slack; what torch holds from CUDA.
    device:    device-wide used memory, sampled after every optimizer step (torch's cache keeps the reserved
               peak, so the step-end sample sees it): reserved + the CUDA context, cuBLAS/FlashAttention
               workspaces, bitsandbytes' paged optimizer state (CUDA managed memory, while resident on the GPU)
               + other processes on the same GPU (`device before` is the reading before the model was loaded).
    """
    import torch

    from _bench import sft_trainer

    window = TimedWindow(warmup, steps, torch.cuda.synchronize, device_used_bytes)
    torch.cuda.reset_peak_memory_stats()
    with TemporaryDirectory() as tmp:
        trainer = sft_trainer(run, rows, Path(tmp))
        trainer.args.max_steps = warmup + steps  # overrides epochs; the data loader cycles when rows run out
        trainer.args.include_num_input_tokens_seen = "non_padding"  # attention-mask sum per micro-batch
        trainer.add_callback(window)
        trainer.train()
    gib = 2**30
    memory = {
        "allocated": torch.cuda.max_memory_allocated() / gib,
        "reserved": torch.cuda.max_memory_reserved() / gib,
        "device": window.device_peak / gib,
    }
    return window, memory


def eval_rate(run, batch_size: int) -> tuple[float, int]:
    """Restricted scoring examples/s on the test rows, after an 8-row warm-up call."""
    import torch

    from faultllm.evaluation import answer_space, score

    tokenizer = run.tokenizer
    tokenizer.padding_side = "left"
    test = run.serializer.render(run.split.test)
    texts, truth = test.texts, test.truth
    space = answer_space(tokenizer, test)
    score(run.model, tokenizer, texts[:8], truth[:8], space, batch_size)  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    score(run.model, tokenizer, texts, truth, space, batch_size)
    torch.cuda.synchronize()
    return len(texts) / (time.perf_counter() - start), len(texts)


def parse_args() -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup-steps", type=int, default=5, help="optimizer steps run before the clock starts")
    parser.add_argument("--steps", type=int, default=50, help="optimizer steps timed")
    parser.add_argument("--rows", type=int, default=None, help="training rows (default: one per row slot of all steps)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak; overrides the table")
    args, overrides = parser.parse_known_args()
    if args.warmup_steps < 1 or args.steps < 1:
        parser.error("--warmup-steps and --steps must be at least 1")
    return args, overrides


def utilization(flops_per_token: float, tokens_per_s: float, peak: float) -> float:
    """Achieved FLOP/s over the peak (in TFLOP/s): MFU with model FLOPs, HFU with hardware FLOPs."""
    return flops_per_token * tokens_per_s / (peak * 1e12)


def report(cfg, run, args, window: TimedWindow, memory: dict[str, float], device_before: float, evals) -> None:
    import torch

    name, plan, checkpointing = torch.cuda.get_device_name(), run.plan, run.plan.gradient_checkpointing
    n_base, n_lora = param_counts(run.model)
    tokens, seconds = window.tokens_and_seconds()
    rate = tokens / seconds
    peak = peak_tflops(name, args.peak_tflops)
    mfu_flops = model_flops_per_token(n_base, n_lora)
    hfu_flops = hardware_flops_per_token(n_base, n_lora, checkpointing)
    per_step = cfg.trainer.batch_size * cfg.trainer.grad_accum
    print(
        f"GPU {name}; model {cfg.model.path} ({plan.quantization}, {plan.attn_implementation}, "
        f"gradient checkpointing {'on' if checkpointing else 'off'})"
    )
    print(
        f"parameters: frozen base {n_base / 1e9:.2f} B (4-bit counted unpacked, input embedding excluded), "
        f"LoRA {n_lora / 1e6:.1f} M"
    )
    print(
        f"training: {rate:,.0f} tokens/s over {args.steps} steps after {args.warmup_steps} warm-up steps "
        f"({tokens:,} real tokens, {seconds:.1f} s; {per_step} rows/step, {tokens / (args.steps * per_step):.0f} "
        f"tokens/row)"
    )
    if peak is None:
        print(f"MFU/HFU: no peak for {name!r} (names match exactly); pass --peak-tflops (dense bf16, datasheet)")
    else:
        print(
            f"MFU {utilization(mfu_flops, rate, peak):.1%} (4 N_base + 6 N_lora = {mfu_flops / 1e9:.1f} GFLOP/token), "
            f"HFU {utilization(hfu_flops, rate, peak):.1%} ({hfu_flops / 1e9:.1f} GFLOP/token executed); "
            f"peak {peak:g} TFLOP/s{' (--peak-tflops)' if args.peak_tflops else ''}; attention scores not counted"
        )
    print(
        f"peak memory (training): torch allocated {memory['allocated']:.1f} GiB, torch reserved "
        f"{memory['reserved']:.1f} GiB, device used {memory['device']:.1f} GiB (CUDA context, bitsandbytes paged "
        f"state, other processes; {device_before:.1f} GiB before loading)"
    )
    print(f"evaluation (restricted, batch {cfg.eval.batch_size}): {evals[0]:.1f} examples/s over {evals[1]} rows")


def main() -> None:
    args, overrides = parse_args()
    import torch

    from _bench import setup
    from faultllm.config import load_config

    if not torch.cuda.is_available():
        sys.exit("bench_gpu.py needs a CUDA GPU; see scripts/bench_padding.py and bench_evaluator.py for CPU")
    cfg = load_config("train", ["trainer.epochs=1", "trainer.eval_each_epoch=false", "progress=false", *overrides])
    device_before = device_used_bytes() / 2**30
    run = setup(cfg)
    n_rows = args.rows or (args.warmup_steps + args.steps) * cfg.trainer.batch_size * cfg.trainer.grad_accum
    rows = run.serializer.render(run.split.train.head(n_rows)).sft_rows()
    window, memory = train(run, rows, args.warmup_steps, args.steps)
    evals = eval_rate(run, cfg.eval.batch_size)
    report(cfg, run, args, window, memory, device_before, evals)


if __name__ == "__main__":
    main()
