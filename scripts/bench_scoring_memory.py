"""Benchmark: peak memory of restricted scoring, logits for the answer positions only vs every position.

    python scripts/bench_scoring_memory.py            # 32k-vocabulary tiny Llama, ~900-token prompts, batch 16

The model has Llama-2's 32,000-token vocabulary on the tiny model's 2 x 128 body, so the
logits dominate as they do for a 7B model. The naive way puts every position through
lm_head (batch x sequence x vocabulary logits, in fp32 for the log-softmax); faultllm asks
the model for the last few positions only (`logits_to_keep`). Each variant runs in a fresh
process; memory is the growth of peak RSS while scoring.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time


def measure(naive: bool, n_prompts: int, batch_size: int) -> dict:
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from faultllm.config import compose
    from faultllm.evaluation import answer_space, score
    from faultllm.modeling import load_tokenizer, resolve_model_path
    from faultllm.prompts import Serializer
    from faultllm.splits import prepared_split

    cfg = compose("train", ["model=tiny", "prompt.decimals=4", "prompt.name_features=true"])
    tokenizer = load_tokenizer(resolve_model_path(cfg.model, cfg.cache_dir))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32000, hidden_size=128, intermediate_size=341, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    if naive:
        forward = model.forward
        model.forward = lambda *args, **kwargs: forward(*args, **(kwargs | {"logits_to_keep": 0}))
    split, _ = prepared_split(cfg.data, cfg.seed)
    prompts = Serializer.from_config(cfg.prompt, cfg.data, split.features, split.labels, tokenizer).render(
        split.test.head(n_prompts)
    )
    space = answer_space(tokenizer, prompts)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    scores = score(model, tokenizer, prompts.texts, prompts.truth, space, batch_size=batch_size)
    seconds = time.perf_counter() - start
    return {
        "peak_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024,
        "seconds": seconds,
        "tokens": float(np.mean([len(tokenizer(t)["input_ids"]) for t in prompts.texts])),
        "log_probs": scores.log_probs.round(4).tolist(),
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--variant":
        print(json.dumps(measure(sys.argv[2] == "naive", n_prompts=32, batch_size=16)))
        return
    results = {}
    for variant in ("naive", "faultllm"):
        out = subprocess.run(
            [sys.executable, __file__, "--variant", variant], capture_output=True, text=True, check=True
        )
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    naive, ours = results["naive"], results["faultllm"]
    assert naive["log_probs"] == ours["log_probs"], "both ways must give the same scores"
    print(f"32 prompts of ~{ours['tokens']:.0f} tokens, batch 16, vocabulary 32,000 (CPU)")
    print(f"every position through lm_head:   peak +{naive['peak_mib']:7.0f} MiB  {naive['seconds']:6.2f} s")
    print(f"answer positions only (faultllm): peak +{ours['peak_mib']:7.0f} MiB  {ours['seconds']:6.2f} s")
    print(
        f"memory {naive['peak_mib'] / max(ours['peak_mib'], 1):.0f}x smaller, {naive['seconds'] / ours['seconds']:.1f}x faster"
    )


if __name__ == "__main__":
    main()
