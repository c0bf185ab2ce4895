"""GPU benchmark for the configured model: training tokens/s, peak GPU memory, MFU, evaluation examples/s.

    python scripts/bench_gpu.py                                   # Llama-2-7b-chat, 4-bit NF4, bundled TEP
    python scripts/bench_gpu.py model=llama2_13b_chat trainer.batch_size=4 --peak-tflops 989

Trains one epoch on `--rows` training rows (the same code path as `faultllm train`) and
scores the test rows with the restricted evaluator. MFU counts 6 N FLOPs per real (non-pad)
token, N = the base model's parameter count; the peak is looked up from the GPU's name
(dense bf16) unless --peak-tflops is given.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 125.0,
    "L4": 121.0,
    "A6000": 155.0,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--peak-tflops", type=float, default=None)
    args, overrides = parser.parse_known_args()

    import torch

    from _bench import setup, sft_trainer
    from faultllm.config import compose
    from faultllm.evaluation import answer_space, score

    if not torch.cuda.is_available():
        sys.exit("bench_gpu.py needs a CUDA GPU; see scripts/bench_padding.py and bench_evaluator.py for CPU")
    cfg = compose("train", ["trainer.epochs=1", "trainer.eval_each_epoch=false", "progress=false", *overrides])
    run = setup(cfg)
    model, tokenizer, plan = run.model, run.tokenizer, run.spec.plan
    _, n_params = model.get_nb_trainable_parameters()  # counts 4-bit weights at their unpacked size
    rows = run.serializer.render(run.split.train.head(args.rows)).sft_rows()

    torch.cuda.reset_peak_memory_stats()
    with TemporaryDirectory() as tmp:
        trainer = sft_trainer(run, rows, Path(tmp))
        real_tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
        torch.cuda.synchronize()
        start = time.perf_counter()
        trainer.train()
        torch.cuda.synchronize()
        train_seconds = time.perf_counter() - start
    peak_train_gib = torch.cuda.max_memory_allocated() / 2**30

    tokenizer.padding_side = "left"
    test = run.serializer.render(run.split.test)
    texts, truth = test.texts, test.truth
    space = answer_space(tokenizer, test.labels, texts[0])
    score(model, tokenizer, texts[:8], truth[:8], space, cfg.eval.batch_size)  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    score(model, tokenizer, texts, truth, space, cfg.eval.batch_size)
    torch.cuda.synchronize()
    eval_rate = len(texts) / (time.perf_counter() - start)

    tokens_per_second = real_tokens / train_seconds
    name = torch.cuda.get_device_name()
    peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    mfu = 6 * n_params * tokens_per_second / (peak * 1e12) if peak else None
    print(
        f"GPU {name}; model {cfg.model.path} ({plan.quantization}, {plan.attn_implementation}), {n_params / 1e9:.2f} B params"
    )
    print(f"training: {tokens_per_second:,.0f} tokens/s over {real_tokens:,} tokens, batch {cfg.trainer.batch_size}")
    print(f"peak GPU memory (training): {peak_train_gib:.1f} GiB")
    print(f"MFU (6N FLOPs/token, peak {peak} TFLOP/s): {mfu:.1%}" if mfu is not None else "MFU: pass --peak-tflops")
    print(f"evaluation (restricted, batch {cfg.eval.batch_size}): {eval_rate:.1f} examples/s")


if __name__ == "__main__":
    main()
