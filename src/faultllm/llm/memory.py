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

from faultllm.config.groups import LoraConfig
from faultllm.llm.hardware import HardwarePlan
from faultllm.llm.shape import ModelShape, kv_hidden

GIB = 2**30
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4 bits, an 8-bit absmax per 64 weights, an fp32 one per 256 of those
HEAD_TILE = (4096, 32768)  # TRL's fused LM head: positions x words projected at once (chunked_logprob.py)
HEAD_PER_POSITION = 8 + 4 + 4 + 1  # int64 target, fp32 log-normaliser and entropy, the label mask
ATTENTION_INPUTS = ("q_proj", "k_proj", "v_proj")  # the projections reading the attention norm's output
FREE_FRACTION = 0.85  # checkpointing goes on when a step without it needs more than this much of the GPU


@dataclass(frozen=True)
class ModelDims:
    """What the memory of a step depends on: the base model's shape and, per layer, its LoRA adapters."""

    n_params: int  # the base model's parameters (4-bit ones at their unpacked size), adapters not included
    hidden: int
    intermediate: int
    layers: int
    vocab: int
    kv_hidden: int = 0  # the k and v projections' width (grouped-query attention); 0: hidden
    n_lora: int = 0  # the adapters' (trainable) parameters
    lora_ranks: int = 0  # per layer: the adapters' ranks summed (B's rank-r input is kept)
    lora_inputs: int = 0  # per layer: the adapters' input features summed (A's input is kept)
    lora_dropped: int = 0  # per layer: the input features of adapters with dropout (each keeps its own mask)
    lora_dropped_attention: int = 0  # of those, the q, k and v projections'

    @classmethod
    def of(cls, model) -> ModelDims:
        """A loaded (peft) model's dimensions: what `train` decides checkpointing from."""
        config = model.config.get_text_config()
        n_params = sum(p.numel() * (2 if p.__class__.__name__ == "Params4bit" else 1) for p in model.parameters())
        n_lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
        adapted = {name: m for name, m in model.named_modules() if hasattr(m, "lora_A") and hasattr(m, "in_features")}
        dropped = {name: m.in_features for name, m in adapted.items() if _has_dropout(m)}
        attention = [size for name, size in dropped.items() if name.endswith(ATTENTION_INPUTS)]
        layers = config.num_hidden_layers
        return cls(
            n_params=n_params - n_lora, hidden=config.hidden_size, intermediate=config.intermediate_size,
            layers=layers, vocab=config.vocab_size, kv_hidden=kv_hidden(config), n_lora=n_lora,
            lora_ranks=sum(sum(m.r.values()) for m in adapted.values()) // layers,
            lora_inputs=sum(m.in_features * len(m.r) for m in adapted.values()) // layers,
            lora_dropped=sum(dropped.values()) // layers,
            lora_dropped_attention=sum(attention) // layers,
        )  # fmt: skip

    @classmethod
    def from_shape(cls, shape: ModelShape, lora: LoraConfig) -> ModelDims:
        """The same dimensions from config.json alone and the lora config: what `faultllm plan` counts with."""
        adapted = shape.adapted(lora.target_modules)
        inputs = sum(n_in for _, n_in, _ in adapted) // shape.layers
        attention = sum(n_in for name, n_in, _ in adapted if name.endswith(ATTENTION_INPUTS)) // shape.layers
        dropout = lora.dropout > 0
        return cls(
            n_params=shape.n_params, hidden=shape.hidden, intermediate=shape.intermediate, layers=shape.layers,
            vocab=shape.vocab, kv_hidden=shape.kv_hidden, n_lora=shape.n_lora(lora.r, lora.target_modules),
            lora_ranks=lora.r * len(adapted) // shape.layers, lora_inputs=inputs,
            lora_dropped=inputs if dropout else 0, lora_dropped_attention=attention if dropout else 0,
        )  # fmt: skip


def _has_dropout(adapted) -> bool:
    return any(getattr(dropout, "p", 0) > 0 for dropout in adapted.lora_dropout.values())


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


def base_weight_bytes(dims: ModelDims, size: Bytes) -> float:
    if not size.quantized:
        return dims.n_params * size.compute
    unquantized = 2 * dims.vocab * dims.hidden + (2 * dims.layers + 1) * dims.hidden  # embeddings, head, norms
    return (dims.n_params - unquantized) * NF4_BYTES + unquantized * 4


def layer_bytes(dims: ModelDims, size: Bytes) -> tuple[int, int]:
    """(base, adapters) bytes one layer saves per token."""
    attention = 2 * dims.hidden + 2 * (dims.kv_hidden or dims.hidden)  # q, k, v, output
    base = size.stream * (2 * dims.hidden + 3 * dims.intermediate) + size.compute * attention + 2 * 4  # + 1/rms
    lora = size.mask * dims.lora_dropped + size.compute * (dims.lora_inputs + dims.lora_ranks)
    return base, lora


def head_bytes(dims: ModelDims, size: Bytes, positions: int) -> tuple[float, float]:
    """(saved, backward's buffers) of TRL's fused LM head over `positions` positions: the hidden rows it keeps,
    then fp32 gradients of them, a tile of logits and, where the head is fp32 (k-bit preparation) under
    autocast, a cast copy of the tile's rows of the head's weight."""
    saved = positions * (size.stream * dims.hidden + HEAD_PER_POSITION)
    words = min(dims.vocab, HEAD_TILE[1])
    tile = min(positions, HEAD_TILE[0]) * words * size.compute
    weight_copy = words * dims.hidden * size.compute if size.quantized and size.compute < 4 else 0
    return saved, positions * dims.hidden * 4 + tile + weight_copy


def step_memory(dims: ModelDims, step: Step, plan: HardwarePlan, checkpointing: bool) -> StepMemory:
    """The peak of one training step on `plan`'s hardware, term by term (see the module docstring)."""
    size = Bytes.of(plan)
    base, lora = layer_bytes(dims, size)
    head_saved, head_backward = head_bytes(dims, size, step.head_tokens)
    casts = dims.n_lora * size.compute if size.compute < 4 else 0  # autocast's copies of the adapters' weights
    final_norm = size.stream * dims.hidden + 4
    if checkpointing:  # each layer keeps its input; backward recomputes one layer at a time, casts included
        kept, kept_lora = size.stream * dims.hidden * dims.layers, 0.0
        backward = max(head_backward, (base + lora) * step.tokens + casts / dims.layers)
    else:  # the first layer's attention input needs no gradient: its norm and q, k, v masks save nothing
        kept = base * dims.layers - (size.stream * dims.hidden + 4)
        kept_lora = (lora * dims.layers - size.mask * dims.lora_dropped_attention) * step.tokens + casts
        backward = head_backward
    return StepMemory(
        base_weights=base_weight_bytes(dims, size),
        lora_weights=4.0 * dims.n_lora,
        lora_gradients=4.0 * dims.n_lora,
        lora_optimizer=8.0 * dims.n_lora,
        activations=float((kept + final_norm) * step.tokens),
        lora_activations=float(kept_lora),
        head=float(head_saved),
        backward=float(backward),
    )


def needs_checkpointing(plan: HardwarePlan, dims: ModelDims, step: Step) -> bool:
    """The plan's choice, or (auto on CUDA) on only when a step without it would not fit in 85% of the GPU."""
    if plan.gradient_checkpointing is not None:
        return plan.gradient_checkpointing
    return step_memory(dims, step, plan, checkpointing=False).total > FREE_FRACTION * (plan.gpu_memory_gib or 0.0) * GIB


def longest_row(tokenizer, rows: list[dict]) -> tuple[int, int]:
    """(longest prompt, longest completion) in tokens of prompt/completion rows, tokenized as TRL does:
    the prompt, then prompt and completion together (prompts end on a token boundary)."""
    prompts = tokenizer([row["prompt"] for row in rows])["input_ids"]
    whole = tokenizer([row["prompt"] + row["completion"] for row in rows])["input_ids"]
    return max(map(len, prompts)), max(len(ids) - len(prompt) for prompt, ids in zip(prompts, whole, strict=True))
