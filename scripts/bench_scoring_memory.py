"""Benchmark: peak memory of restricted scoring (CPU, Llama-2's 32,000-token vocabulary).

    python scripts/bench_scoring_memory.py            # both comparisons below
    python scripts/bench_scoring_memory.py lm_head    # logits for the answer positions only vs every position
    python scripts/bench_scoring_memory.py labels     # TEP's labels 0-20 vs [0, 1, 4]

lm_head: the tiny model's 2 x 128 body with Llama-2's vocabulary, so the logits dominate as
they do for a 7B model. The naive way puts every position through lm_head (batch x sequence
x vocabulary logits, in fp32 for the log-softmax); faultllm asks the model for the answer
positions only (`logits_to_keep`). Both must give the same scores.

labels: a body 512 wide and 8 layers deep, 16 bundled-TEP prompts of ~570 tokens, batch 16.
Under Llama-2's digit tokens (the tiny tokenizer splits digits the same way) 10-19 share their
first token with 1 and 20 with 2; scoring them once copied the prompts' KV cache per label
(21 copies). Now each distinct answer prefix is one extra token in the same forward pass, so
labels 0-20 should cost about what [0, 1, 4] does.

Each variant runs in a fresh process; memory is the growth of peak RSS while scoring (and the
peak RSS itself for `labels`, as the model's weights are the same in both).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

VARIANTS = {  # name: (body, prompt overrides, prompts, labels or None for the data's, naive lm_head)
    "naive": ("tiny", ["prompt.decimals=4", "prompt.name_features=true"], 32, None, True),
    "faultllm": ("tiny", ["prompt.decimals=4", "prompt.name_features=true"], 32, None, False),
    "labels 0-20": ("wide", ["prompt.decimals=4"], 16, list(range(21)), False),
    "labels 0, 1, 4": ("wide", ["prompt.decimals=4"], 16, [0, 1, 4], False),
}
BODIES = {
    "tiny": {"hidden_size": 128, "intermediate_size": 341, "num_hidden_layers": 2, "num_attention_heads": 4},
    "wide": {"hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 8, "num_attention_heads": 8},
}


def measure(name: str) -> dict:
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from faultllm.config.load import load_config
    from faultllm.data.splits import prepared_split
    from faultllm.llm.scoring import answer_space, score
    from faultllm.llm.sources import resolve_model_path
    from faultllm.llm.tokenizer import load_tokenizer
    from faultllm.prompts.serialize import Prompts, Serializer

    body, overrides, n_prompts, labels, naive = VARIANTS[name]
    cfg = load_config("train", ["model=tiny", *overrides])
    tokenizer = load_tokenizer(resolve_model_path(cfg.model, cfg.cache_dir))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32000, pad_token_id=tokenizer.pad_token_id, **BODIES[body])
    model = LlamaForCausalLM(config).eval()
    if naive:
        forward = model.forward
        model.forward = lambda *args, **kwargs: forward(*args, **(kwargs | {"logits_to_keep": 0}))
    split, _ = prepared_split(cfg.data, cfg.seed)
    rendered_labels = list(range(21)) if labels is not None else split.labels  # the same prompts for both sets
    serializer = Serializer.from_config(cfg.prompt, cfg.data.system_prompt, split.features, rendered_labels, tokenizer)
    prompts = serializer.render(split.test.head(n_prompts))
    labels, truth = (split.labels, prompts.truth) if labels is None else (labels, [labels[0]] * n_prompts)
    space = answer_space(tokenizer, Prompts(prompts.texts, [], labels, prompts.completions))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    scores = score(model, tokenizer, prompts.texts, truth, space, batch_size=16)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "peak_mib": (peak - before) / 1024,
        "total_mib": peak / 1024,
        "seconds": seconds,
        "tokens": float(np.mean([len(tokenizer(t)["input_ids"]) for t in prompts.texts])),
        "log_probs": scores.log_probs.round(4).tolist(),
    }


def run(name: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--variant", name], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare_lm_head() -> None:
    naive, ours = run("naive"), run("faultllm")
    assert naive["log_probs"] == ours["log_probs"], "both ways must give the same scores"
    print(f"32 prompts of ~{ours['tokens']:.0f} tokens, batch 16, vocabulary 32,000 (CPU), 2 x 128 body")
    print(f"every position through lm_head:   peak +{naive['peak_mib']:7.0f} MiB  {naive['seconds']:6.2f} s")
    print(f"answer positions only (faultllm): peak +{ours['peak_mib']:7.0f} MiB  {ours['seconds']:6.2f} s")
    print(
        f"memory {naive['peak_mib'] / max(ours['peak_mib'], 1):.0f}x smaller, {naive['seconds'] / ours['seconds']:.1f}x faster"
    )


def median_run(name: str, repeats: int = 3) -> dict:
    """The run with the median memory growth: RSS varies by tens of MiB between identical runs."""
    results = sorted((run(name) for _ in range(repeats)), key=lambda result: result["peak_mib"])
    return results[repeats // 2]


def compare_labels() -> None:
    many, few = median_run("labels 0-20"), median_run("labels 0, 1, 4")
    print(f"16 prompts of ~{many['tokens']:.0f} tokens, batch 16, vocabulary 32,000 (CPU), 8 x 512 body")
    for name, result in (("labels 0-20", many), ("labels 0, 1, 4", few)):
        print(
            f"{name:15s} peak +{result['peak_mib']:6.0f} MiB (peak RSS {result['total_mib']:6.0f} MiB)"
            f"  {result['seconds']:6.2f} s"
        )
    print(
        f"labels 0-20 / labels 0, 1, 4: {many['total_mib'] / few['total_mib']:.2f}x the peak RSS, "
        f"{many['peak_mib'] / max(few['peak_mib'], 1):.2f}x its growth (median of 3 fresh processes each)"
    )


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--variant":
        print(json.dumps(measure(sys.argv[2])))
        return
    chosen = sys.argv[1:] or ["lm_head", "labels"]
    for comparison in chosen:
        {"lm_head": compare_lm_head, "labels": compare_labels}[comparison]()


if __name__ == "__main__":
    main()
