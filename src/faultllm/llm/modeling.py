"""The one place that turns a config into a tokenizer and a (quantized, LoRA-wrapped) causal LM.

`hardware_plan` is a pure function of the config and what the machine has (`Gpu`), so every
CUDA choice (4-bit NF4 + double quantization, bf16 or fp16 compute, FlashAttention-2, fused
AdamW, gradient checkpointing from a memory estimate) is unit-tested without a GPU.
Training and reloading for evaluation go through `load_base_model` + `prepare_base`, so both
run the model with the same dtypes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from faultllm.config.groups import LoraConfig, ModelConfig, PromptConfig
from faultllm.llm.tiny import ensure_tiny_model, stand_in_tokenizer
from faultllm.prompts.templates import end_of_turn, use_chat_template
from faultllm.runtime.distributed import local_rank, world_size
from faultllm.runtime.errors import FaultLLMError
from faultllm.runtime.paths import PACKAGE_DIR

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gib: float
    bf16: bool  # compute capability 8+ (Ampere and newer): bf16 and FlashAttention-2; T4 and V100: fp16 on SDPA


def detect_gpu() -> Gpu | None:
    """The first visible CUDA device, or None."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    # compute capability 8+ (Ampere): is_bf16_supported() also says yes where bf16 is only emulated (T4, V100)
    bf16 = torch.cuda.get_device_capability()[0] >= 8
    return Gpu(name=props.name, memory_gib=props.total_memory / 2**30, bf16=bf16)


def flash_attention_available() -> bool:
    """transformers' own check: flash-attn installed and importable with this torch, not just present on disk."""
    from transformers.utils import is_flash_attn_2_available

    return bool(is_flash_attn_2_available())


@dataclass(frozen=True)
class HardwarePlan:
    device: str  # "cuda" | "cpu"
    quantization: str  # "nf4" | "none"
    attn_implementation: str  # "flash_attention_2" | "sdpa" | "eager"
    dtype: str  # "bfloat16" | "float16" | "float32"
    optimizer: str  # a transformers `optim` name
    gradient_checkpointing: bool | None  # None: decided per run from the estimated memory need (`needs_checkpointing`)
    gpu_memory_gib: float | None = None
    gpu_name: str | None = None  # the one GPU this process uses


DETECT = "detect"


def hardware_plan(
    model_cfg: ModelConfig, gpu: Gpu | str | None = DETECT, flash_attn_available: bool | None = None
) -> HardwarePlan:
    """The machine's plan for this model config; `gpu` is detected unless given (None: no CUDA)."""
    if gpu == DETECT:
        gpu = detect_gpu()
    cuda = gpu is not None
    if flash_attn_available is None:  # not asked on a GPU older than Ampere, which never runs it
        flash_attn_available = cuda and gpu.bf16 and flash_attention_available()
    quantization = model_cfg.quantization
    if quantization == "auto":
        quantization = "nf4" if cuda else "none"
    optimizer = model_cfg.optimizer
    if optimizer == "auto":  # fused AdamW; bitsandbytes' paged optimizers never free their state (ask for them by name)
        optimizer = "adamw_torch_fused" if cuda else "adamw_torch"
    checkpointing = model_cfg.gradient_checkpointing
    if checkpointing == "auto":
        checkpointing = None if cuda else False
    return HardwarePlan(
        device="cuda" if cuda else "cpu",
        quantization=quantization,
        attn_implementation=_attention(model_cfg.attn_implementation, gpu, flash_attn_available),
        dtype=("bfloat16" if gpu.bf16 else "float16") if cuda else "float32",
        optimizer=optimizer,
        gradient_checkpointing=checkpointing if checkpointing is None else bool(checkpointing),
        gpu_memory_gib=gpu.memory_gib if cuda else None,
        gpu_name=gpu.name if cuda else None,
    )


def _attention(requested: str, gpu: Gpu | None, flash_attn_available: bool) -> str:
    """FlashAttention-2 where it runs: an Ampere or newer GPU (its kernels need compute capability 8+; on a
    T4 or V100 they fail at the first forward) with flash-attn installed; else SDPA."""
    usable = gpu is not None and gpu.bf16 and flash_attn_available
    if requested == "auto":
        if gpu is not None and gpu.bf16 and not flash_attn_available:
            log.warning("FlashAttention-2 is not installed for this torch/CUDA: attention runs on SDPA")
        return "flash_attention_2" if usable else "sdpa"
    if requested == "flash_attention_2" and gpu is not None and not gpu.bf16:
        raise FaultLLMError(
            f"model.attn_implementation=flash_attention_2 needs compute capability 8.0 or newer (Ampere); "
            f"{gpu.name} is older: use model.attn_implementation=sdpa"
        )
    if requested == "flash_attention_2" and not usable:
        raise FaultLLMError(
            "model.attn_implementation=flash_attention_2 needs CUDA and a flash-attn build matching torch "
            "(see docs/gpu.md); or use model.attn_implementation=sdpa"
        )
    return requested


def quantization_config(plan: HardwarePlan):
    """4-bit NF4 with double quantization; compute in bf16 on GPU (fp32 on CPU, where bf16 matmuls are slow)."""
    if plan.quantization != "nf4":
        return None
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=getattr(torch, plan.dtype),
    )


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


def resolve_model_path(model_cfg: ModelConfig, cache_dir: str) -> str:
    """The base model to load: a hub id, a local directory, the tiny model (shipped or built on first use),
    or with model.init=random a checkpoint of random weights built from the model's config.json."""
    if model_cfg.init == "random":
        return str(random_model(model_cfg, cache_dir))
    if model_cfg.build == "tiny":
        return str(ensure_tiny_model(model_cfg, cache_dir))
    path = str(model_cfg.path)
    local = _local_dir(path)
    if local is not None:
        return str(local)
    check_hub_access(path)
    return path


def _local_dir(path: str) -> Path | None:
    """The directory `model.path` names, None for a hub id; a local-looking path that is no directory is an error."""
    looks_local = path.startswith((".", "/", "~")) or Path(path).expanduser().exists()
    if looks_local and not Path(path).expanduser().is_dir():
        raise FaultLLMError(f"model.path={path}: no such model directory")
    return Path(path).expanduser() if looks_local else None


def check_hub_access(repo_id: str, filename: str = "config.json") -> None:
    """A hub model whose `filename` is not in the local cache needs the hub: fail in seconds with what to do
    instead of transformers' minute of retries (the token, if any, is never shown)."""
    from huggingface_hub import auth_check, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if isinstance(try_to_load_from_cache(repo_id, filename), str):
        return
    hint = "use model=tiny, or a local model directory: model.path=DIR"
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise FaultLLMError(f"model.path={repo_id}: not in the local cache and HF_HUB_OFFLINE is set; {hint}")
    try:
        auth_check(repo_id)  # raises for a gated or private model this token cannot read
    except GatedRepoError as err:
        raise FaultLLMError(
            f"model.path={repo_id}: a gated model; accept its licence on huggingface.co, then "
            "`huggingface-cli login` (or set HF_TOKEN)"
        ) from err
    except RepositoryNotFoundError as err:
        raise FaultLLMError(f"model.path={repo_id}: no such model on the hub (or no access to it); {hint}") from err
    except Exception as err:  # connection refused, DNS, proxy, timeout: httpx/requests errors alike
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FaultLLMError(
            f"model.path={repo_id}: not cached and the hub cannot be reached ({reason}); {hint}"
        ) from err


# ---------------------------------------------------------------- a model without its weights

# config.json of every hub model in configs/model/ (a few hundred bytes each), by hub id
SHIPPED_CONFIGS = PACKAGE_DIR / "assets" / "model_configs"


@dataclass(frozen=True)
class ModelFiles:
    """Where a model's config.json and tokenizer come from, its weights untouched."""

    config_dir: str  # holds config.json
    tokenizer: str  # a directory or a hub id (from the hub cache, or downloaded: a few MB)


def model_files(model_cfg: ModelConfig, cache_dir: str) -> ModelFiles:
    """config.json from the tiny model, model.path's directory, the hub cache, the copy faultllm ships or the
    hub, in that order; the tokenizer from the same place (the hub: only when it can be reached)."""
    if model_cfg.build == "tiny":
        directory = str(ensure_tiny_model(model_cfg, cache_dir))
        return ModelFiles(directory, directory)
    path = str(model_cfg.path)
    local = _local_dir(path)
    if local is not None:
        if not (local / "config.json").exists():
            raise FaultLLMError(f"model.path={path}: no config.json there")
        return ModelFiles(str(local), str(local))
    return ModelFiles(str(hub_config_dir(path)), path)


def hub_config_dir(repo_id: str) -> Path:
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "config.json")
    if isinstance(cached, str):
        return Path(cached).parent
    if (SHIPPED_CONFIGS / repo_id / "config.json").exists():
        return SHIPPED_CONFIGS / repo_id
    check_hub_access(repo_id)
    return Path(hf_hub_download(repo_id, "config.json")).parent


def check_tokenizer(files: ModelFiles) -> None:
    """Fails in one line when the tokenizer is on the hub only and the hub cannot be reached."""
    if not Path(files.tokenizer).is_dir():
        check_hub_access(files.tokenizer, "tokenizer_config.json")


def random_model(model_cfg: ModelConfig, cache_dir: str) -> Path:
    """A checkpoint of the model's architecture with random weights, from its config.json and tokenizer alone
    (model.init=random): built once and cached, then loaded the usual way (4-bit on CUDA), so a benchmark
    measures the real model's speed and memory with no weight download. Never a result. With model.layers
    only the first that many layers: the real shapes, small enough for a CPU smoke run."""
    files = model_files(model_cfg, cache_dir)
    tokenizer = random_model_tokenizer(files)
    config_text = (Path(files.config_dir) / "config.json").read_text()
    key = hashlib.sha1(f"{config_text}|{tokenizer}|{model_cfg.layers}".encode()).hexdigest()[:10]
    target = Path(cache_dir).expanduser() / f"random-{Path(files.tokenizer).name}-{key}"
    if not (target / "config.json").exists():
        partial = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        log.info("model.init=random: building %s from its config.json alone (once; cached in %s)", files.tokenizer, target)
        _save_random(files.config_dir, tokenizer, model_cfg.layers, partial)
        partial.rename(target)  # atomic: concurrent builders never see half a checkpoint
    return target


# next to a shipped config.json: the special tokens (with their ids) and chat template of the model's tokenizer
STAND_IN = "tokenizer_stand_in.json"


def random_model_tokenizer(files: ModelFiles) -> str:
    """The tokenizer model.init=random saves with the weights: a local model's own, the hub's when cached, else
    the stand-in shipped for the model (`stand_in_tokenizer`: no network, no licence), else the hub's."""
    if Path(files.tokenizer).is_dir():
        return files.tokenizer
    from huggingface_hub import try_to_load_from_cache

    stand_in = SHIPPED_CONFIGS / files.tokenizer / STAND_IN
    if isinstance(try_to_load_from_cache(files.tokenizer, "tokenizer_config.json"), str) or not stand_in.exists():
        check_tokenizer(files)
        return files.tokenizer
    log.info("model.init=random: %s's tokenizer is not cached; a stand-in of its vocabulary is used", files.tokenizer)
    return str(stand_in)


def _save_random(config_dir: str, tokenizer_source: str, layers: int | None, target: Path) -> None:
    """Seeded random weights in bf16 (half the disk of fp32; the load casts them as the plan says)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(config_dir)
    if layers is not None:
        config.get_text_config().num_hidden_layers = layers
    tokenizer = _random_tokenizer(tokenizer_source, config.get_text_config().vocab_size)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # initializing 7B on a GPU takes seconds
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    del model


def _random_tokenizer(source: str, vocab_size: int):
    from transformers import AutoTokenizer

    if source.endswith(STAND_IN):
        return stand_in_tokenizer(vocab_size, **json.loads(Path(source).read_text()))
    try:
        return AutoTokenizer.from_pretrained(source)
    except OSError as err:
        raise FaultLLMError(f"cannot load a tokenizer from {source!r}: {str(err).splitlines()[0]}") from err


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
        return cls(path, hardware_plan(model_cfg), lora, chat=prompt.template == "chat", chat_template_file=prompt.chat_template)

    def tokenizer(self, padding_side: str = "left"):
        return load_tokenizer(self.path, padding_side, self.chat, self.chat_template_file)


PAD_NAMES = ("<pad>", "<|pad|>", "[PAD]", "<|finetune_right_pad_id|>", "<|endoftext|>")


def load_tokenizer(path: str, padding_side: str = "left", chat: bool = False, chat_template_file: str | None = None):
    """The tokenizer as faultllm trains with it: with `chat`, EOS is the chat template's end-of-turn token
    (what ends an answer); the pad token is never EOS (else EOS is masked as padding and never learned)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as err:
        raise FaultLLMError(f"cannot load a tokenizer from {path!r}: {str(err).splitlines()[0]}") from err
    if chat:
        use_chat_template(tokenizer, path, chat_template_file)
        tokenizer.eos_token = end_of_turn(tokenizer)
    choose_pad_token(tokenizer)
    tokenizer.padding_side = padding_side
    return tokenizer


def choose_pad_token(tokenizer) -> None:
    """Its own pad token if that is not EOS; else unk (Llama-2's usual choice); else a reserved special
    token the vocabulary has; else a new `<|pad|>` (the model's embeddings then grow: `fit_embeddings`)."""
    if tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return
    if tokenizer.unk_token is not None and tokenizer.unk_token_id != tokenizer.eos_token_id:
        tokenizer.pad_token = tokenizer.unk_token
        return
    added = [token for token in tokenizer.get_added_vocab() if token != tokenizer.eos_token]
    named = [token for token in PAD_NAMES if token in added]
    reserved = sorted((token for token in added if "reserved" in token), key=tokenizer.convert_tokens_to_ids)
    if named or reserved:
        tokenizer.pad_token = (named or reserved)[0]
    else:
        tokenizer.add_special_tokens({"pad_token": "<|pad|>"})


def fit_embeddings(model, tokenizer):
    """Grow the embeddings to the tokenizer when faultllm added a pad token. The new rows are the mean of
    the existing ones, in training and on reload alike, so a reloaded adapter sees the very same model
    (the pad row's input is masked; its output row only joins the softmax's normaliser)."""
    import torch

    old_rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) <= old_rows:
        return model
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        for layer in {model.get_input_embeddings(), model.get_output_embeddings()} - {None}:
            layer.weight[old_rows:] = layer.weight[:old_rows].float().mean(dim=0).to(layer.weight.dtype)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


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


def autocast(plan: HardwarePlan):
    """The plan's mixed precision as accelerate trains under it: autocast to bf16/fp16 (nothing in fp32)."""
    import contextlib

    import torch

    if plan.dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(plan.device, dtype=getattr(torch, plan.dtype))


def in_plan_precision(model, plan: HardwarePlan):
    """Every forward of the base model under the plan's autocast: scoring and generation during training and
    after reloading alike. Accelerate autocasts only the trained peft model's forward (not generation's
    calls, not a model reloaded for `evaluate`), which would score in another precision than training."""
    import functools

    forward = model.forward
    if plan.dtype == "float32" or getattr(forward, "in_plan_precision", False):
        return model

    @functools.wraps(forward)
    def forward_under_autocast(*args, **kwargs):
        with autocast(plan):
            return forward(*args, **kwargs)

    forward_under_autocast.in_plan_precision = True
    model.forward = forward_under_autocast
    return model


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

    tokenizer = spec.tokenizer(padding_side="right")
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
    tokenizer = spec.tokenizer(padding_side="left")
    return fit_embeddings(base_model(spec), tokenizer).eval(), tokenizer


def load_trained(adapter: Path, base_path: str, plan: HardwarePlan):
    """(model with the run's adapter, tokenizer) for evaluation or explanation."""
    from peft import PeftModel

    if not (adapter / "adapter_config.json").exists():
        raise FaultLLMError(
            f"{adapter.parent}: no adapter found (expected {adapter}/adapter_config.json); was training finished?"
        )
    tokenizer = load_tokenizer(str(adapter), padding_side="left")  # as trained: EOS, pad and template saved
    model = PeftModel.from_pretrained(fit_embeddings(load_base_model(base_path, plan), tokenizer), str(adapter))
    return model.eval(), tokenizer
