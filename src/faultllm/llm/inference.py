"""One pass of a model over batches of prompts, as restricted scoring and decoding run it: in eval mode
without autograd, the batches shared out between the ranks under torchrun/accelerate and gathered."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import TypeVar

from faultllm.runtime.distributed import gather, shard
from faultllm.runtime.progress import steps as progress_steps

Batch = TypeVar("Batch")
Result = TypeVar("Result")


@contextmanager
def inference(model):
    """Eval mode (no LoRA dropout) without autograd for one scoring or decoding pass, then the model's mode
    as it was: a Trainer leaves its model in train mode, and scoring between epochs must not change that."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def over_batches(
    model, batches: Sequence[Batch], run: Callable[[Batch], Result], title: str, bar: bool
) -> list[Result]:
    """`run(batch)` for every batch under `inference`, counted as `title` (a progress bar with `bar`; without
    one, lines only once it takes seconds). Under torchrun/accelerate each rank runs its share of the batches
    and every rank gets every result, in batch order: each batch is computed once."""
    done = []
    with inference(model):
        for index in progress_steps(shard(len(batches)), f"{title}: batch", bar=bar, announce=False):
            done.append((index, run(batches[index])))
    return [result for _, result in sorted(gather(done), key=lambda pair: pair[0])]
