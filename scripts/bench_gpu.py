"""GPU benchmark for the configured model: training tokens/s, MFU and HFU, peak memory, scoring and decoding.

    python scripts/bench_gpu.py                                   # Llama-2-7b-chat, 4-bit NF4, bundled TEP
    python scripts/bench_gpu.py model.init=random                 # random weights: no download, offline too
    python scripts/bench_gpu.py model=llama2_13b_chat model.init=random trainer.batch_size=4 --peak-tflops 989.4
    python scripts/bench_gpu.py --warmup-steps 5 --steps 50

The measurement of `faultllm bench` (faultllm/cost/bench.py: `run_bench`; FLOPs per token in
faultllm/cost/flops.py: 4 N_base + 6 N_lora for a frozen base, + 2 N with gradient checkpointing for HFU),
printed in detail: memory as torch allocated, torch reserved and device-wide used; evaluation rates.
`faultllm bench` takes the same overrides and writes bench.json for `faultllm plan`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from typing import TYPE_CHECKING

from faultllm.runtime.distributed import pin_first_gpu

if TYPE_CHECKING:
    from faultllm.cost.records import BenchRecord

pin_first_gpu()  # one GPU, before transformers (bitsandbytes asks CUDA on import): a benchmark of one device


def parse_args() -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup-steps", type=int, default=5, help="optimizer steps run before the clock starts")
    parser.add_argument("--steps", type=int, default=50, help="optimizer steps timed")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak; overrides the table")
    args, overrides = parser.parse_known_args()
    if args.warmup_steps < 1 or args.steps < 1:
        parser.error("--warmup-steps and --steps must be at least 1")
    return args, overrides


def report(record: BenchRecord, device_before: float) -> None:
    hardware, memory = record.hardware, record.memory_gib
    checkpointing = "on" if hardware["gradient_checkpointing"] else "off"
    print(f"GPU {record.device}; model {record.model} ({record.init} weights, {hardware['quantization']}, "
          f"{hardware['attn_implementation']}, gradient checkpointing {checkpointing}); loaded in {record.load_seconds:.1f} s")  # fmt: skip
    print(f"parameters: frozen base {record.n_base / 1e9:.2f} B (4-bit counted unpacked, input embedding excluded), "
          f"LoRA {record.n_lora / 1e6:.1f} M")  # fmt: skip
    per_step = record.batch_size * record.grad_accum
    print(f"training: {record.tokens_per_second:,.0f} tokens/s over {record.steps} steps after "
          f"{record.warmup_steps} warm-up steps ({record.train_tokens:,} real tokens, "
          f"{record.step_seconds:.3f} s/step; {per_step} rows/step)")  # fmt: skip
    if record.mfu is None:
        print(f"MFU/HFU: no peak for {record.device!r} (names match exactly); pass --peak-tflops (dense bf16)")
    else:
        print(f"MFU {record.mfu:.1%} ({record.model_flops_per_token / 1e9:.1f} GFLOP/token), HFU {record.hfu:.1%} "
              f"({record.hardware_flops_per_token / 1e9:.1f} GFLOP/token executed); peak {record.peak_tflops:g} "
              "TFLOP/s; attention scores not counted")  # fmt: skip
    print(f"peak memory (training): torch allocated {memory['allocated']:.1f} GiB, torch reserved {memory['reserved']:.1f} "
          f"GiB, device used {memory['device']:.1f} GiB (CUDA context, bitsandbytes paged state, other processes; "
          f"{device_before:.1f} GiB before loading)")  # fmt: skip
    print(f"scoring (restricted): {record.scoring_rows_per_second:.1f} rows/s, "
          f"{record.scoring_tokens_per_second:,.0f} tokens/s; decoding at batch 1: "
          f"{record.decode_step_seconds * 1e3:.1f} ms/token")  # fmt: skip


def main() -> None:
    args, overrides = parse_args()
    import torch

    from faultllm.config.load import load_config
    from faultllm.cost.bench import device_used_bytes, run_bench

    if not torch.cuda.is_available():
        sys.exit("bench_gpu.py needs a CUDA GPU; `faultllm bench model=tiny` measures a CPU")
    cfg = load_config("bench", ["progress=false", *overrides])  # train's keys; model.init=random allowed
    device_before = device_used_bytes() / 2**30
    bench = replace(cfg.bench, warmup_steps=args.warmup_steps, steps=args.steps, peak_tflops=args.peak_tflops)
    report(run_bench(cfg, bench), device_before)


if __name__ == "__main__":
    main()
