"""The one memory model of a training step, for `faultllm plan` and for `train`'s checkpointing decision.

A step's peak is what stays (the frozen base, the LoRA adapters with their gradients and AdamW moments),
what the forward saves for backward (the base model's activations and the adapters'), and the largest
buffer backward adds on top: TRL's fused LM head, or with gradient checkpointing one recomputed layer.
Every term is counted per token from the model's dimensions; docs/memory_model.md gives the formula and
scripts/check_memory_model.py checks it against the bytes a CPU step really saves and holds.

What each token saves per layer, as the installed stack runs (bitsandbytes' 4-bit matmul saves only its
weight; peft's LoRA saves the dropout mask, A's input in the compute dtype and B's rank-r input):
- the base: the two RMSNorms' inputs and the MLP's gate, SiLU and up outputs in the stream dtype (fp32
  under k-bit preparation, whose fp32 embeddings and norms start the stream and whose 4-bit layers return
  their input's dtype); attention's q, k, v and output in the compute dtype (autocast casts them);
- each adapter: its input's dropout mask (CUDA: one byte; CPU: an fp32 noise tensor, as peft converts the
  input to the adapters' fp32 there), A's input and B's input in the compute dtype.
Without checkpointing the embeddings' output needs no gradient, so the first layer's attention norm and
its q, k, v dropout masks are not saved; with it (non-reentrant, input gradients on) every layer keeps only
its input. TRL's SFT loss never builds the (tokens x vocab) logits: its fused head saves the projected
positions' hidden rows and projects them in tiles of at most 4,096 positions x 32,768 words.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from faultllm.llm.hardware import HardwarePlan
from faultllm.llm.shape import ModelShape

GIB = 2**30
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4 bits, an 8-bit absmax per 64 weights, an fp32 one per 256 of those
HEAD_TILE = (4096, 32768)  # TRL's fused LM head: positions x words projected at once (chunked_logprob.py)
HEAD_PER_POSITION = 8 + 4 + 4 + 1  # int64 target, fp32 log-normaliser and entropy, the label mask
FREE_FRACTION = 0.85  # checkpointing goes on when a step without it needs more than this much of the GPU


@dataclass(frozen=True)
class Step:
    """The tokens of one training step: a batch of the longest rows, and the positions the LM head projects."""

    tokens: int  # batch x (longest prompt + longest completion)
    head_tokens: int  # CUDA (Triton): the completions' positions only; elsewhere every position but the last

    @classmethod
    def of(cls, plan: HardwarePlan, batch_size: int, prompt_tokens: int, completion_tokens: int) -> Step:
        row = prompt_tokens + completion_tokens
        head = completion_tokens if plan.device == "cuda" else row - 1
        return cls(batch_size * row, batch_size * head)


@dataclass(frozen=True)
class Bytes:
    """How a step's datatypes store a value: the residual stream, the compute dtype, a dropout mask."""

    quantized: bool
    stream: int
    compute: int
    mask: int

    @classmethod
    def of(cls, plan: HardwarePlan) -> Bytes:
        quantized = plan.quantization == "nf4"
        compute = 4 if plan.dtype == "float32" else 2
        return cls(quantized, 4 if quantized else compute, compute, 1 if plan.device == "cuda" else 4)


@dataclass(frozen=True)
class StepMemory:
    """A training step's peak, term by term, in bytes."""

    base_weights: float  # the frozen base: 4-bit NF4 layers, fp32 embeddings, head and norms (k-bit preparation)
    lora_weights: float  # the adapters in fp32
    lora_gradients: float
    lora_optimizer: float  # AdamW's two fp32 moments
    activations: float  # what the base model's layers and final norm save for backward
    lora_activations: float  # what the adapters save: dropout masks, A's and B's inputs, their weights' casts
    head: float  # what TRL's fused LM head saves: the projected positions' hidden rows
    backward: float  # the largest buffer backward adds: the fused head's tiles and gradients, or a recomputed layer

    @property
    def total(self) -> float:
        return sum(asdict(self).values())

    @property
    def lora(self) -> float:
        """Every LoRA term: the adapters, their gradients and moments, and what they save for backward."""
        return self.lora_weights + self.lora_gradients + self.lora_optimizer + self.lora_activations

    def gib(self) -> dict[str, float]:
        return {key: value / GIB for key, value in asdict(self).items()} | {"total": self.total / GIB}


def base_weight_bytes(shape: ModelShape, size: Bytes) -> float:
    if not size.quantized:
        return shape.n_params * size.compute
    unquantized = 2 * shape.vocab * shape.hidden + (2 * shape.layers + 1) * shape.hidden  # embeddings, head, norms
    return (shape.n_params - unquantized) * NF4_BYTES + unquantized * 4


def layer_bytes(shape: ModelShape, size: Bytes) -> tuple[int, int]:
    """(base, adapters) bytes one layer saves per token."""
    attention = 2 * shape.hidden + 2 * (shape.kv_hidden or shape.hidden)  # q, k, v, output
    base = size.stream * (2 * shape.hidden + 3 * shape.intermediate) + size.compute * attention + 2 * 4  # + 1/rms
    adapters = shape.adapters
    lora = size.mask * adapters.dropped + size.compute * (adapters.inputs + adapters.ranks)
    return base, lora


def head_bytes(shape: ModelShape, size: Bytes, positions: int) -> tuple[float, float]:
    """(saved, backward's buffers) of TRL's fused LM head over `positions` positions: the hidden rows it keeps,
    then fp32 gradients of them, a tile of logits and, where the head is fp32 (k-bit preparation) under
    autocast, a cast copy of the tile's rows of the head's weight."""
    saved = positions * (size.stream * shape.hidden + HEAD_PER_POSITION)
    words = min(shape.vocab, HEAD_TILE[1])
    tile = min(positions, HEAD_TILE[0]) * words * size.compute
    weight_copy = words * shape.hidden * size.compute if size.quantized and size.compute < 4 else 0
    return saved, positions * shape.hidden * 4 + tile + weight_copy


def step_memory(shape: ModelShape, step: Step, plan: HardwarePlan, checkpointing: bool) -> StepMemory:
    """The peak of one training step on `plan`'s hardware, term by term (see the module docstring)."""
    size = Bytes.of(plan)
    base, lora = layer_bytes(shape, size)
    head_saved, head_backward = head_bytes(shape, size, step.head_tokens)
    n_lora = shape.adapters.n_params
    casts = n_lora * size.compute if size.compute < 4 else 0  # autocast's copies of the adapters' weights
    final_norm = size.stream * shape.hidden + 4
    if checkpointing:  # each layer keeps its input; backward recomputes one layer at a time, casts included
        kept, kept_lora = size.stream * shape.hidden * shape.layers, 0.0
        backward = max(head_backward, (base + lora) * step.tokens + casts / shape.layers)
    else:  # the first layer's attention input needs no gradient: its norm and q, k, v masks save nothing
        kept = base * shape.layers - (size.stream * shape.hidden + 4)
        kept_lora = (lora * shape.layers - size.mask * shape.adapters.dropped_attention) * step.tokens + casts
        backward = head_backward
    return StepMemory(
        base_weights=base_weight_bytes(shape, size),
        lora_weights=4.0 * n_lora,
        lora_gradients=4.0 * n_lora,
        lora_optimizer=8.0 * n_lora,
        activations=float((kept + final_norm) * step.tokens),
        lora_activations=float(kept_lora),
        head=float(head_saved),
        backward=float(backward),
    )


def needs_checkpointing(plan: HardwarePlan, shape: ModelShape, step: Step) -> bool:
    """The plan's choice, or (auto on CUDA) on only when a step without it would not fit in 85% of the GPU."""
    if plan.gradient_checkpointing is not None:
        return plan.gradient_checkpointing
    return (
        step_memory(shape, step, plan, checkpointing=False).total > FREE_FRACTION * (plan.gpu_memory_gib or 0.0) * GIB
    )


def longest_row(tokenizer, rows: list[dict]) -> tuple[int, int]:
    """(longest prompt, longest completion) in tokens of prompt/completion rows, tokenized as TRL does:
    the prompt, then prompt and completion together (prompts end on a token boundary)."""
    prompts = tokenizer([row["prompt"] for row in rows])["input_ids"]
    whole = tokenizer([row["prompt"] + row["completion"] for row in rows])["input_ids"]
    return max(map(len, prompts)), max(len(ids) - len(prompt) for prompt, ids in zip(prompts, whole, strict=True))
