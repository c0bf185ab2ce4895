"""Benchmark: restricted-label scoring (batched) vs the study's protocol (greedy 5 tokens, batch 1).

    python scripts/bench_evaluator.py                       # tiny model, bundled TEP, CPU
    python scripts/bench_evaluator.py model=llama2_7b_chat  # on a GPU box (any train overrides)

Same model, same prompts, one process; prints examples/s and the ratio against the naive
way. The model is the base model with a fresh LoRA adapter (speed does not depend on training).
"""

from __future__ import annotations

import sys
import time

from omegaconf import OmegaConf


def main(overrides: list[str]) -> None:
    from faultllm.config.load import load_config
    from faultllm.cost.bench import setup
    from faultllm.llm.decoding import generate_answers
    from faultllm.llm.scoring import answer_space, score

    cfg = load_config("train", ["model=tiny", "data.test_size=64", *overrides])
    run = setup(cfg)
    model, tokenizer = run.model.eval(), run.tokenizer
    test = run.serializer.render(run.split.test)
    texts, truth = test.texts, test.truth
    space = answer_space(tokenizer, test)

    def timed(fn) -> float:
        fn(texts[:4])  # warm-up
        start = time.perf_counter()
        fn(texts)
        return len(texts) / (time.perf_counter() - start)

    rates = {
        "study: generate 5 tokens, batch 1": timed(lambda t: generate_answers(model, tokenizer, t, 5, batch_size=1)),
        "generate 5 tokens, batch 16": timed(lambda t: generate_answers(model, tokenizer, t, 5, batch_size=16)),
        "restricted scoring, batch 1": timed(
            lambda t: score(model, tokenizer, t, truth[: len(t)], space, batch_size=1)
        ),
        "restricted scoring, batch 16": timed(
            lambda t: score(model, tokenizer, t, truth[: len(t)], space, batch_size=16)
        ),
    }
    naive = rates["study: generate 5 tokens, batch 1"]
    print(f"model {cfg.model.path or 'tiny'} on {run.spec.plan.device}, {len(texts)} prompts, labels {test.labels}")
    for name, rate in rates.items():
        print(f"{name:<36} {rate:8.1f} examples/s   {rate / naive:5.1f}x")
    print(OmegaConf.to_yaml({"config": {"decimals": cfg.prompt.decimals, "device": run.spec.plan.device}}).strip())


if __name__ == "__main__":
    main(sys.argv[1:])
