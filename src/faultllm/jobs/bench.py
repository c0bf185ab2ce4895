"""`faultllm bench` (configs/bench.yaml): a few timed training steps, scoring batches and batch-1 decoding of a
train config on this machine. Writes bench.json (read by `faultllm plan plan.throughput_from=DIR`)."""

from __future__ import annotations

from pathlib import Path

from faultllm.compare.tables import print_summary
from faultllm.config.jobs import BenchJob
from faultllm.cost.bench import run_bench
from faultllm.cost.records import BenchRecord
from faultllm.run.directory import start_run
from faultllm.run.kind import RunKind


def run(cfg: BenchJob, run_dir: Path) -> BenchRecord:
    run_dir = start_run(cfg, run_dir, RunKind.BENCH)
    record = run_bench(cfg, cfg.bench)
    record.write(run_dir / BenchRecord.FILE)
    _print_summary(record, run_dir)
    return record


def _print_summary(record: BenchRecord, run_dir: Path) -> None:
    hardware = record.hardware
    utilization = (
        f"MFU {record.mfu:.1%}, HFU {record.hfu:.1%} (peak {record.peak_tflops:g} TFLOP/s)"
        if record.mfu is not None
        else "no peak FLOP/s for this device (bench.peak_tflops=N on a GPU)"
    )
    print_summary(
        f"bench: {record.model} ({record.init} weights) on {record.device}",
        {
            "load / quantization / attention": f"{record.load_seconds:.1f} s / {hardware['quantization']} / "
            f"{hardware['attn_implementation']}",
            "parameters": f"base {record.n_base / 1e9:.3g} B, LoRA {record.n_lora / 1e6:.3g} M",
            "training": f"{record.tokens_per_second:,.0f} tokens/s, {record.step_seconds:.3f} s/step "
            f"(batch {record.batch_size} x {record.grad_accum}, {record.steps} steps timed; "
            f"checkpointing {'on' if hardware['gradient_checkpointing'] else 'off'})",
            "utilization": utilization,
            "scoring (restricted)": f"{record.scoring_tokens_per_second:,.0f} tokens/s, "
            f"{record.scoring_rows_per_second:.1f} rows/s",
            "decoding at batch 1": f"{record.decode_step_seconds * 1e3:.1f} ms per token",
            "peak memory": f"{record.peak_memory_gib:.2f} GiB",
            "data": record.data_note or "as configured",
            "written to": str(run_dir / BenchRecord.FILE),
        },
    )
