"""Checks faultllm's memory model (src/faultllm/llm/memory.py) against one real training step on the CPU.

A random Llama body built from a LlamaConfig (no download) is loaded the way `faultllm train` loads a model
on a GPU: 4-bit NF4 with double quantization through bitsandbytes (which trains on the CPU too), k-bit
preparation, LoRA on every linear layer with dropout, adapters in fp32, TRL's fused LM head, bf16 autocast,
AdamW. Measured, for each case:
- saved: the bytes autograd saves for backward in one forward (torch.autograd.graph.saved_tensors_hooks;
  distinct storages, parameters left out), against step_memory's activations + lora_activations + head;
- state: the parameters (4-bit ones with their quantization constants), gradients and AdamW moments that
  exist after one optimizer step, against base_weights + lora_weights + lora_gradients + lora_optimizer.
What the CPU cannot show is taken from the model as it stands for CUDA (docs/memory_model.md): a dropout
mask is one byte there (an fp32 noise tensor here), and TRL's head projects only the completion positions.

    python scripts/check_memory_model.py [--hidden 1024 --layers 4 --vocab 32000 --batch 4]
"""

from __future__ import annotations

import argparse
import json
import tempfile

import torch

from faultllm.config.groups import LoraConfig
from faultllm.llm.build import keep_adapters_in_fp32, load_base_model, peft_lora_config
from faultllm.llm.hardware import HardwarePlan
from faultllm.llm.memory import Step, step_memory
from faultllm.llm.shape import ModelShape

COMPLETION = 5  # answer tokens and EOS: the positions the loss covers

# faultllm's CUDA plan, on the CPU: NF4 weights, bf16 autocast
CPU_PLAN = HardwarePlan("cpu", "nf4", "sdpa", "bfloat16", "adamw_torch", gradient_checkpointing=False)


def random_llama(directory: str, hidden: int, layers: int, vocab: int, kv_heads: int) -> str:
    """A random-weight Llama checkpoint of this shape in bf16 (what `model.init=random` writes)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 8 // 3 // 32 * 32, num_hidden_layers=layers,
        num_attention_heads=hidden // 64, num_key_value_heads=kv_heads, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(directory)
    return directory


def trained_model(path: str, r: int, checkpointing: bool):
    """The base as `faultllm train` loads it (4-bit, k-bit prepared), LoRA adapters in fp32, TRL's fused head."""
    from peft import get_peft_model
    from trl.trainer.utils import add_fused_lm_head

    base = load_base_model(path, CPU_PLAN)
    add_fused_lm_head(base, outputs=("log_probs", "entropy", "is_top1"))  # as SFTTrainer does
    model = get_peft_model(base, peft_lora_config(LoraConfig(r=r, alpha=16, dropout=0.1)))
    keep_adapters_in_fp32(model)
    if checkpointing:  # as the Trainer turns it on: non-reentrant, input gradients on
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model.train()


def storages(tensors) -> dict[int, int]:
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors if t is not None}


def quant_constants(param) -> list[torch.Tensor]:
    state = getattr(param, "quant_state", None)
    if state is None:
        return []
    nested = [state.state2.absmax, state.state2.code] if state.nested else []
    return [state.absmax, state.code, state.offset if state.nested else None, *nested]


def forward_loss(model, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """TRL's SFT loss (the fused head's mean log-probability of the completion), under accelerate's autocast."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, fused_lm_head=True)
    return -out.log_probs.sum() / out.label_mask.sum()


def measure(model, ids: torch.Tensor, labels: torch.Tensor) -> dict[str, int]:
    """Bytes saved for backward by one forward, then the state one AdamW step leaves."""
    weights = storages(model.parameters())
    saved: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = forward_loss(model, ids, labels)
    loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    optimizer.step()
    frozen = [p for p in model.parameters() if not p.requires_grad]
    moments = [t for state in optimizer.state.values() for t in state.values()]
    return {
        "saved": sum(saved.values()),
        "base_weights": sum(storages(frozen + [c for p in frozen for c in quant_constants(p)]).values()),
        "lora_state": sum(storages(trainable + [p.grad for p in trainable] + moments).values()),
    }


def check(path: str, r: int, seq_len: int, batch: int, checkpointing: bool) -> dict:
    """One case: the model's prediction and the measured bytes."""
    model = trained_model(path, r, checkpointing)
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq_len))
    labels = torch.full_like(ids, -100)
    labels[:, -COMPLETION:] = ids[:, -COMPLETION:]
    measured = measure(model, ids, labels)
    step = Step.of(CPU_PLAN, batch, seq_len - COMPLETION, COMPLETION)
    need = step_memory(ModelShape.of(model), step, CPU_PLAN, checkpointing)
    predicted = {
        "saved": need.activations + need.lora_activations + need.head,
        "base_weights": need.base_weights,
        "lora_state": need.lora_weights + need.lora_gradients + need.lora_optimizer,
    }
    case = {"r": r, "seq_len": seq_len, "batch": batch, "checkpointing": checkpointing}
    return case | {key: {"predicted": predicted[key], "measured": measured[key]} for key in measured}


def table(rows: list[dict]) -> str:
    lines = ["| r | seq | ckpt | term | predicted MiB | measured MiB | ratio |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        for term in ("saved", "base_weights", "lora_state"):
            predicted, measured = row[term]["predicted"], row[term]["measured"]
            lines.append(f"| {row['r']} | {row['seq_len']} | {'on' if row['checkpointing'] else 'off'} | {term} | "
                         f"{predicted / 2**20:.2f} | {measured / 2**20:.2f} | {predicted / measured:.3f} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        path = random_llama(directory, args.hidden, args.layers, args.vocab, args.kv_heads)
        rows = [
            check(path, r, seq_len, args.batch, checkpointing)
            for r in args.ranks
            for seq_len in args.seq_lens
            for checkpointing in (False, True)
        ]
    print(table(rows))
    if args.json:
        with open(args.json, "w") as file:
            json.dump(rows, file, indent=1)


if __name__ == "__main__":
    main()
