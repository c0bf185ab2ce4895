"""A model's shape from its config.json alone (built on the meta device), and its parameter counts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from faultllm.runtime.errors import FaultLLMError


def param_counts(model) -> tuple[int, int]:
    """(N_base, N_lora) of a peft model; 4-bit weights at their unpacked size, untied input embedding left out."""
    n_lora, total = model.get_nb_trainable_parameters()
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    tied = output is not None and output.weight is embedding
    return total - n_lora - (0 if tied or embedding.requires_grad else embedding.numel()), n_lora



@dataclass(frozen=True)
class ModelShape:
    """What the cost of a model depends on, read from its config.json (built on the meta device: no weights)."""

    n_params: int  # every parameter, tied ones once
    n_lookup: int  # the input embedding when it is not tied to the head: a lookup, no FLOPs
    hidden: int
    intermediate: int
    layers: int
    vocab: int
    context: int  # max_position_embeddings
    linears: tuple[tuple[str, int, int], ...]  # (module name, in, out) of every linear layer but the output head
    kv_hidden: int = 0  # the k and v projections' width (grouped-query attention); 0: hidden

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


def model_shape(config_dir: str | Path, layers: int | None = None) -> ModelShape:
    """The shape of the architecture config.json describes (its first `layers` layers if given, as
    model.init=random builds it): the model is built on the meta device."""
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
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is not None and head.weight is embedding.weight
    linears = tuple(
        (name, module.in_features, module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not head
    )
    text = config.get_text_config()
    return ModelShape(
        n_params=sum(p.numel() for p in model.parameters()),
        n_lookup=0 if tied else embedding.weight.numel(),
        hidden=text.hidden_size,
        intermediate=text.intermediate_size,
        layers=text.num_hidden_layers,
        vocab=text.vocab_size,
        context=int(getattr(text, "max_position_embeddings", 0) or 0),
        linears=linears,
        kv_hidden=kv_hidden(text),
    )


def kv_hidden(config) -> int:
    """The k and v projections' width: fewer heads than the queries' under grouped-query attention."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return (getattr(config, "num_key_value_heads", None) or heads) * head_dim
