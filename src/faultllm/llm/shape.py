"""A model's shape: what its cost and memory depend on, from its config.json alone (built on the meta device) or
from a loaded peft model; and its parameter counts."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from faultllm.config.groups import LoraConfig
from faultllm.runtime.errors import FaultLLMError

ATTENTION_INPUTS = ("q_proj", "k_proj", "v_proj")  # the projections reading the attention norm's output


def param_counts(model) -> tuple[int, int]:
    """(N_base, N_lora) of a peft model; 4-bit weights at their unpacked size, untied input embedding left out."""
    n_lora, total = model.get_nb_trainable_parameters()
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    tied = output is not None and output.weight is embedding
    return total - n_lora - (0 if tied or embedding.requires_grad else embedding.numel()), n_lora


@dataclass(frozen=True)
class AdapterShape:
    """A model's LoRA adapters: their parameters and, per layer, what they save for backward."""

    n_params: int = 0  # the adapters' (trainable) parameters
    ranks: int = 0  # per layer: the adapters' ranks summed (B's rank-r input is kept)
    inputs: int = 0  # per layer: the adapters' input features summed (A's input is kept)
    dropped: int = 0  # per layer: the input features of adapters with dropout (each keeps its own mask)
    dropped_attention: int = 0  # of those, the q, k and v projections'

    @classmethod
    def of(cls, model, layers: int) -> AdapterShape:
        """The adapters of a loaded peft model."""
        adapted = {name: m for name, m in model.named_modules() if hasattr(m, "lora_A") and hasattr(m, "in_features")}
        dropped = {name: m.in_features for name, m in adapted.items() if _has_dropout(m)}
        attention = [size for name, size in dropped.items() if name.endswith(ATTENTION_INPUTS)]
        return cls(
            n_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
            ranks=sum(sum(m.r.values()) for m in adapted.values()) // layers,
            inputs=sum(m.in_features * len(m.r) for m in adapted.values()) // layers,
            dropped=sum(dropped.values()) // layers,
            dropped_attention=sum(attention) // layers,
        )


def _has_dropout(adapted) -> bool:
    return any(getattr(dropout, "p", 0) > 0 for dropout in adapted.lora_dropout.values())


@dataclass(frozen=True)
class ModelShape:
    """What the cost and the memory of a model depend on: the base model's dimensions and its LoRA adapters."""

    n_params: (
        int  # the base model's parameters, tied ones once, 4-bit ones at their unpacked size; adapters not included
    )
    n_lookup: int  # the input embedding when it is not tied to the head: a lookup, no FLOPs
    hidden: int
    intermediate: int
    layers: int
    vocab: int
    context: int  # max_position_embeddings
    linears: tuple[tuple[str, int, int], ...]  # (module name, in, out) of every linear layer but the output head
    kv_hidden: int = 0  # the k and v projections' width (grouped-query attention); 0: hidden
    adapters: AdapterShape = field(default_factory=AdapterShape)  # none until `with_lora` (or a loaded peft model)

    @classmethod
    def of(cls, model) -> ModelShape:
        """A loaded peft model's shape with its adapters: what `train` decides checkpointing from."""
        config = model.config.get_text_config()
        adapters = AdapterShape.of(model, config.num_hidden_layers)
        n_params = sum(p.numel() * (2 if p.__class__.__name__ == "Params4bit" else 1) for p in model.parameters())
        return _shape_of(model.get_base_model(), config, n_params - adapters.n_params, adapters)

    @property
    def n_base(self) -> int:
        return self.n_params - self.n_lookup

    def adapted(self, target_modules: str | list) -> list[tuple[str, int, int]]:
        """The linear layers LoRA adapts (all-linear: every one but the head, as peft)."""
        if isinstance(target_modules, str) and target_modules != "all-linear":
            target_modules = [target_modules]
        return [
            (name, n_in, n_out)
            for name, n_in, n_out in self.linears
            if target_modules == "all-linear" or any(name == t or name.endswith(f".{t}") for t in target_modules)
        ]

    def n_lora(self, r: int, target_modules: str | list) -> int:
        """LoRA parameters of rank r on the targeted linear layers."""
        return int(r * sum(n_in + n_out for _, n_in, n_out in self.adapted(target_modules)))

    def with_lora(self, lora: LoraConfig) -> ModelShape:
        """This shape with the adapters the lora config adds: what `faultllm plan` counts with."""
        adapted = self.adapted(lora.target_modules)
        inputs = sum(n_in for _, n_in, _ in adapted) // self.layers
        attention = sum(n_in for name, n_in, _ in adapted if name.endswith(ATTENTION_INPUTS)) // self.layers
        dropout = lora.dropout > 0
        adapters = AdapterShape(
            n_params=self.n_lora(lora.r, lora.target_modules),
            ranks=lora.r * len(adapted) // self.layers,
            inputs=inputs,
            dropped=inputs if dropout else 0,
            dropped_attention=attention if dropout else 0,
        )
        return replace(self, adapters=adapters)


def model_shape(config_dir: str | Path, layers: int | None = None) -> ModelShape:
    """The shape of the architecture config.json describes (its first `layers` layers if given, as
    model.init=random builds it), without adapters: the model is built on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(config_dir))
    except (OSError, ValueError) as err:
        raise FaultLLMError(f"cannot read a model config.json in {config_dir}: {str(err).splitlines()[0]}") from err
    if layers is not None:
        config.get_text_config().num_hidden_layers = layers
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return _shape_of(model, config.get_text_config(), sum(p.numel() for p in model.parameters()), AdapterShape())


def _shape_of(model, text_config, n_params: int, adapters: AdapterShape) -> ModelShape:
    """The shape of a (base) model with `n_params` parameters; a peft model's adapted layers count as the base
    layers they wrap."""
    import torch

    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is not None and head.weight is embedding.weight
    linears = tuple(
        (name.removesuffix(".base_layer"), module.in_features, module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not head and ".lora_" not in name
    )
    return ModelShape(
        n_params=n_params,
        n_lookup=0 if tied else embedding.weight.numel(),
        hidden=text_config.hidden_size,
        intermediate=text_config.intermediate_size,
        layers=text_config.num_hidden_layers,
        vocab=text_config.vocab_size,
        context=int(getattr(text_config, "max_position_embeddings", 0) or 0),
        linears=linears,
        kv_hidden=kv_hidden(text_config),
        adapters=adapters,
    )


def kv_hidden(config) -> int:
    """The k and v projections' width: fewer heads than the queries' under grouped-query attention."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return (getattr(config, "num_key_value_heads", None) or heads) * head_dim
