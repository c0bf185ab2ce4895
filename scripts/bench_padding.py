"""Benchmark: training tokens/s with dynamic padding vs padding every example to a fixed length.

    python scripts/bench_padding.py                 # tiny model, bundled TEP, CPU, one epoch each
    python scripts/bench_padding.py --max-length 1024 model=llama2_7b_chat trainer.batch_size=4

"Tokens" are real (non-pad) tokens, so both ways do the same useful work; the naive way
(as in the study, and notebooks that set a max length and pad to it) also computes on the
padding: "tokens computed per real token" is that overhead (1.00 = no padding at all).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory


def tokens_per_second(cfg, pad_to: int | None) -> tuple[float, int, float]:
    """(real tokens/s, real tokens, computed tokens per real token) over one epoch."""
    from faultllm.cost.bench import bench_trainer, setup

    run = setup(cfg)
    rows = run.serializer.render(run.split.train).sft_rows()
    with TemporaryDirectory() as tmp:
        trainer = bench_trainer(run, rows, Path(tmp))
        if pad_to is not None:
            trainer.data_collator.pad_to_multiple_of = pad_to  # every batch padded to exactly pad_to
        real_tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"]) * cfg.trainer.epochs
        computed = sum(batch["input_ids"].numel() for batch in trainer.get_train_dataloader()) * cfg.trainer.epochs
        start = time.perf_counter()
        trainer.train()
        return real_tokens / (time.perf_counter() - start), real_tokens, computed / real_tokens


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-length", type=int, default=512, help="the fixed length of the naive way")
    args, overrides = parser.parse_known_args()
    from faultllm.config.load import load_config

    cfg = load_config(
        "train", ["model=tiny", "trainer.epochs=1", "trainer.eval_each_epoch=false", "progress=false", *overrides]
    )
    dynamic, n_tokens, dynamic_overhead = tokens_per_second(cfg, None)
    fixed, _, fixed_overhead = tokens_per_second(cfg, args.max_length)
    print(f"{n_tokens} real tokens per epoch, batch {cfg.trainer.batch_size}, prompt decimals {cfg.prompt.decimals}")
    print(f"{'':<26} {'real tokens/s':>14} {'speed':>6} {'tokens computed per real token':>32}")
    print(f"{'padded to ' + str(args.max_length):<26} {fixed:14.0f} {'1.0x':>6} {fixed_overhead:32.2f}")
    print(f"{'dynamic padding':<26} {dynamic:14.0f} {dynamic / fixed:5.1f}x {dynamic_overhead:32.2f}")


if __name__ == "__main__":
    sys.exit(main())
