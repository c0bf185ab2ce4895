"""The model's lifecycle: the base model loaded as the hardware plan says, LoRA adapters added for training,
taken out again for a reused base, and a trained adapter reloaded for evaluation.

Training and reloading for evaluation go through `load_base_model` + `prepare_base`, so both
run the model with the same dtypes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from faultllm.config.groups import LoraConfig, ModelConfig, PromptConfig
from faultllm.llm.hardware import HardwarePlan, hardware_plan, in_plan_precision, quantization_config
from faultllm.llm.sources import resolve_model_path
from faultllm.llm.tokenizer import fit_embeddings, load_tokenizer
from faultllm.runtime.distributed import local_rank, world_size
from faultllm.runtime.errors import FaultLLMError

log = logging.getLogger(__name__)


def peft_lora_config(lora: LoraConfig):
    """PEFT's LoraConfig from faultllm's lora slice."""
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        # "all-linear": every linear layer of every block (not lm_head), as in QLoRA; or a list of module names
        target_modules=lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


class BaseModelCache:
    """One loaded base model kept between builds in this process (the folds of an HPO worker, which owns
    it): every fold gets fresh adapters on the same frozen base instead of loading it again."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.model = None

    def get(self, path: str, plan: HardwarePlan):
        if self.key != (path, plan):
            self.clear()
            self.model, self.key = load_base_model(path, plan), (path, plan)
        return self.model

    def clear(self) -> None:
        self.key = self.model = None


@dataclass(frozen=True)
class ModelSpec:
    """What `build_for_training` needs: the base model, how to load it here, and the adapters to add."""

    path: str
    plan: HardwarePlan
    lora: LoraConfig
    base_cache: BaseModelCache | None = None  # keep the loaded base model for the next build (HPO folds)
    chat: bool = False  # prompt.template=chat: answers end with the chat template's end-of-turn token
    chat_template_file: str | None = None  # prompt.chat_template: a Jinja template replacing the tokenizer's

    @classmethod
    def from_config(cls, model_cfg: ModelConfig, lora: LoraConfig, cache_dir: str, prompt: PromptConfig) -> ModelSpec:
        path = resolve_model_path(model_cfg, cache_dir)
        return cls(
            path,
            hardware_plan(model_cfg),
            lora,
            chat=prompt.template == "chat",
            chat_template_file=prompt.chat_template,
        )

    def tokenizer(self):
        return load_tokenizer(self.path, self.chat, self.chat_template_file)

    def loading(self) -> str:
        """The log line that announces loading this model here."""
        return f"loading {Path(self.path).name} on {self.plan.device} ({self.plan.quantization} quantization)"


def load_base_model(path: str, plan: HardwarePlan):
    """The base model as the plan says, prepared the same way for training and for evaluation."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs = {
        "dtype": getattr(torch, plan.dtype),
        "quantization_config": quantization_config(plan),
        # each torchrun/accelerate rank on its own GPU; a single process sees only its first GPU
        "device_map": {"": local_rank() if world_size() > 1 else torch.cuda.current_device()}
        if plan.device == "cuda"
        else None,
    }
    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=plan.attn_implementation, **kwargs)
        except ImportError as err:  # a flash-attn build that imports but does not match this torch/CUDA
            if plan.attn_implementation != "flash_attention_2":
                raise
            log.warning("FlashAttention-2 failed to load (%s): attention runs on SDPA", str(err).splitlines()[0])
            model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa", **kwargs)
    except OSError as err:
        raise FaultLLMError(f"cannot load a model from {path!r}: {str(err).splitlines()[0]}") from err
    model.config.use_cache = False  # training; evaluation turns the cache on where it helps
    return prepare_base(in_plan_precision(model, plan), plan)


def attention_of(model) -> str:
    """The attention implementation the loaded model runs (SDPA after a FlashAttention-2 fallback)."""
    return str(model.config._attn_implementation)


def checkpointing_off(model) -> None:
    """Gradient checkpointing off: the Trainer only ever turns it on, and a reused base model (HPO folds)
    would keep it from an earlier fold that needed it."""
    if model.is_activation_checkpointing:
        model.activation_checkpointing_disable()


def prepare_base(model, plan: HardwarePlan):
    """4-bit: freeze, and upcast norms, embeddings and lm_head to fp32 (peft's k-bit preparation).

    Checkpointing is left to the trainer, which turns it on when `needs_checkpointing` says so.
    """
    if plan.quantization != "nf4":
        return model
    from peft import prepare_model_for_kbit_training

    keep_4bit_weights_unpacked(model)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def keep_4bit_weights_unpacked(model) -> None:
    """4-bit layers never switch to bitsandbytes' AVX512-BF16 CPU kernel. On a CPU that has it, bitsandbytes
    repacks a layer's weights at its first no-grad forward in eval mode; the repacking asserts
    out_features % 32 == 0 and an even in_features (the tiny model's intermediate_size=341 fails), the
    kernel computes in bf16 whatever the plan says, and a repacked layer passes no gradient to its input
    when training resumes (the next epoch, the next HPO fold). Kept off: every CPU dequantizes and
    multiplies in the plan's dtype, as training does; CUDA layers never take that path anyway."""
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False


def base_model(spec: ModelSpec):
    """A freshly loaded base model, or the one `spec.base_cache` holds."""
    if spec.base_cache is None:
        return load_base_model(spec.path, spec.plan)
    return spec.base_cache.get(spec.path, spec.plan)


def build_for_training(spec: ModelSpec, seed: int):
    """(peft model, tokenizer) ready for SFT: the base model with fresh LoRA adapters drawn from `seed`."""
    from peft import get_peft_model
    from transformers import set_seed

    tokenizer = spec.tokenizer()
    base = fit_embeddings(base_model(spec), tokenizer)
    set_seed(seed)  # right before LoRA's random init, which would otherwise depend on whatever ran earlier
    peft_model = get_peft_model(base, peft_lora_config(spec.lora))
    peft_model.base_forward = base.__dict__.get("forward")  # the forward before SFTTrainer patches it
    return peft_model, tokenizer


def release_adapters(peft_model) -> None:
    """Take the LoRA layers out of a reused base model, leaving it as it was loaded: also the forward that
    each SFTTrainer replaces with its fused-LM-head wrapper around the one it finds. Kept, these wrappers
    would nest one per fold until a forward overflowed the stack (RecursionError after ~1,000 HPO folds)."""
    base = peft_model.unload()
    if peft_model.base_forward is None:
        base.__dict__.pop("forward", None)  # back to the class's forward
    else:
        base.forward = peft_model.base_forward


def keep_adapters_in_fp32(model) -> None:
    """Trainable (LoRA) weights in fp32: TRL casts them to bf16 for quantized models, where bf16 rounds
    small updates away; peft reloads saved adapters in fp32 too, so evaluation matches training."""
    import torch

    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()


def load_untrained(spec: ModelSpec):
    """(base model, tokenizer) for a run that trains nothing (trainer.epochs=0), ready to score prompts."""
    tokenizer = spec.tokenizer()
    return fit_embeddings(base_model(spec), tokenizer).eval(), tokenizer


def load_trained(adapter: Path, base_path: str, plan: HardwarePlan):
    """(model with the run's adapter, tokenizer) for evaluation or explanation."""
    from peft import PeftModel

    if not (adapter / "adapter_config.json").exists():
        raise FaultLLMError(
            f"{adapter.parent}: no adapter found (expected {adapter}/adapter_config.json); was training finished?"
        )
    tokenizer = load_tokenizer(str(adapter))  # as trained: EOS, pad and template saved
    model = PeftModel.from_pretrained(fit_embeddings(load_base_model(base_path, plan), tokenizer), str(adapter))
    return model.eval(), tokenizer
