from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import MagicMock

import pytest
import torch

from faultllm.config.groups import ModelConfig
from faultllm.config.load import load_config
from faultllm.llm.build import load_base_model, peft_lora_config
from faultllm.llm.hardware import Gpu, detect_gpu, hardware_plan, quantization_config
from faultllm.llm.memory import GIB, Step, needs_checkpointing, step_memory
from faultllm.llm.shape import AdapterShape, ModelShape
from faultllm.llm.sources import resolve_model_path
from faultllm.llm.trainer import sft_config
from faultllm.runtime.errors import FaultLLMError
from tests.conftest import easy_overrides

AUTO = {"quantization": "auto", "attn_implementation": "auto", "optimizer": "auto", "gradient_checkpointing": "auto"}


H100 = Gpu("NVIDIA H100 80GB HBM3", 79.2, bf16=True)
T4 = Gpu("Tesla T4", 14.6, bf16=False)
LLAMA2_7B = ModelShape(
    n_params=6_738_415_616, n_lookup=0, hidden=4096, intermediate=11008, layers=32, vocab=32000, context=4096, linears=()
)  # fmt: skip
# LoRA r=64 with dropout on all seven projections: 7 x 64 rank outputs, the inputs of q, k, v, o, gate, up (h), down (i)
LLAMA2_7B_R64 = replace(
    LLAMA2_7B, adapters=AdapterShape(
        n_params=159_907_840, ranks=7 * 64, inputs=6 * 4096 + 11008, dropped=6 * 4096 + 11008, dropped_attention=3 * 4096
    ),
)  # fmt: skip


def test_cuda_path_asks_for_nf4_double_quant_bf16_flash_attention_and_fused_adamw(compose_cfg):
    cfg = compose_cfg("train")  # the default model: Llama-2-7b-chat
    plan = hardware_plan(cfg.model, gpu=H100, flash_attn_available=True)
    assert (plan.device, plan.quantization, plan.attn_implementation, plan.dtype) == (
        "cuda",
        "nf4",
        "flash_attention_2",
        "bfloat16",
    )
    assert plan.optimizer == "adamw_torch_fused"  # paged AdamW never frees its state: only on request
    assert plan.gradient_checkpointing is None and plan.gpu_memory_gib == 79.2  # decided from the memory estimate
    assert plan.gpu_name == "NVIDIA H100 80GB HBM3"  # the summary names the one GPU used
    bnb = quantization_config(plan)
    assert bnb.load_in_4bit and bnb.bnb_4bit_quant_type == "nf4" and bnb.bnb_4bit_use_double_quant
    assert bnb.bnb_4bit_compute_dtype == torch.bfloat16
    paged = hardware_plan(compose_cfg("train", ["model.optimizer=paged_adamw_32bit"]).model, gpu=H100)
    assert paged.optimizer == "paged_adamw_32bit"


def test_gpus_without_bf16_compute_in_fp16(compose_cfg):
    plan = hardware_plan(compose_cfg("train").model, gpu=T4, flash_attn_available=False)
    assert plan.dtype == "float16" and quantization_config(plan).bnb_4bit_compute_dtype == torch.float16
    trainer_cfg = compose_cfg("train").trainer
    args = sft_config(trainer_cfg, replace(plan, device="cpu"), 8, Path("x"), False, seed=0, progress=False)
    assert args.fp16 and not args.bf16


@pytest.mark.parametrize(
    ("capability", "attention", "dtype"),
    [((7, 0), "sdpa", "float16"), ((7, 5), "sdpa", "float16"), ((8, 0), "flash_attention_2", "bfloat16"),
     ((9, 0), "flash_attention_2", "bfloat16")],
)  # fmt: skip
def test_the_devices_capability_picks_attention_and_dtype_with_flash_attn_installed(
    compose_cfg, monkeypatch, capability, attention, dtype
):
    """FlashAttention-2's kernels and bf16 need compute capability 8+: a V100 (7.0) or T4 (7.5) with flash-attn
    installed runs SDPA and fp16 with the Trainer's loss scaler, in every place that takes the dtype."""
    from faultllm.llm import hardware

    cfg = compose_cfg("train")
    with monkeypatch.context() as cuda:
        cuda.setattr(torch.cuda, "is_available", lambda: True)
        cuda.setattr(torch.cuda, "current_device", lambda: 0)
        cuda.setattr(torch.cuda, "get_device_capability", lambda *device: capability)
        cuda.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(name="GPU", total_memory=2**34))
        cuda.setattr(hardware, "flash_attention_available", lambda: True)
        plan = hardware_plan(cfg.model)
        if capability < (8, 0):
            with pytest.raises(FaultLLMError, match=r"compute capability 8\.0 or newer"):
                hardware_plan(compose_cfg("train", ["model.attn_implementation=flash_attention_2"]).model)
    assert (plan.attn_implementation, plan.dtype) == (attention, dtype)
    assert quantization_config(plan).bnb_4bit_compute_dtype == getattr(torch, dtype)
    args = sft_config(cfg.trainer, replace(plan, device="cpu"), 8, Path("x"), False, seed=0, progress=False)
    assert (args.fp16, args.bf16) == (dtype == "float16", dtype == "bfloat16")  # fp16: a GradScaler


def test_checkpointing_is_decided_from_the_estimated_memory_need():
    plan = hardware_plan(ModelConfig(**AUTO), gpu=H100, flash_attn_available=True)
    study, batch16 = Step(1000, 5), Step(16_000, 80)
    # the study's batch 1 at ~1000 tokens fits an 80 GB GPU: no recompute
    assert step_memory(LLAMA2_7B_R64, study, plan, checkpointing=False).total / GIB < 20
    assert not needs_checkpointing(plan, LLAMA2_7B_R64, study)
    # batch 16 x 1000 tokens does not (~150 GiB with the fp32 residual stream); checkpointing brings it near 20 GiB
    assert needs_checkpointing(plan, LLAMA2_7B_R64, batch16)
    assert step_memory(LLAMA2_7B_R64, batch16, plan, checkpointing=True).total / GIB < 22
    assert needs_checkpointing(replace(plan, gpu_memory_gib=14.6), LLAMA2_7B_R64, Step(2000, 10))  # a T4
    assert not needs_checkpointing(replace(plan, gradient_checkpointing=False), LLAMA2_7B_R64, batch16)


def test_falls_back_to_sdpa_without_flash_attn_and_to_full_precision_on_cpu(compose_cfg):
    cfg = compose_cfg("train")
    assert hardware_plan(cfg.model, gpu=H100, flash_attn_available=False).attn_implementation == "sdpa"
    cpu = hardware_plan(cfg.model, gpu=None)
    assert (cpu.quantization, cpu.attn_implementation, cpu.dtype, cpu.optimizer, cpu.gradient_checkpointing) == (
        "none",
        "sdpa",
        "float32",
        "adamw_torch",
        False,
    )
    assert quantization_config(cpu) is None
    forced = hardware_plan(compose_cfg("train", ["model.quantization=nf4"]).model, gpu=None)
    assert forced.quantization == "nf4" and quantization_config(forced).bnb_4bit_compute_dtype == torch.float32
    with pytest.raises(FaultLLMError, match="needs CUDA and a flash-attn build"):
        hardware_plan(compose_cfg("train", ["model.attn_implementation=flash_attention_2"]).model, gpu=None)


def test_a_flash_attn_build_that_fails_to_import_falls_back_to_sdpa(monkeypatch, caplog):
    from transformers import AutoModelForCausalLM

    from faultllm.llm import build

    calls = []

    def from_pretrained(path, attn_implementation, **kwargs):
        calls.append(attn_implementation)
        if attn_implementation == "flash_attention_2":
            raise ImportError("flash_attn_2_cuda.so: undefined symbol: _ZN3c10")
        return MagicMock()

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", from_pretrained)
    monkeypatch.setattr(build, "quantization_config", lambda plan: None)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    plan = hardware_plan(ModelConfig(**AUTO | {"quantization": "none"}), gpu=H100, flash_attn_available=True)
    with caplog.at_level("WARNING"):
        load_base_model("some/model", plan)
    assert calls == ["flash_attention_2", "sdpa"] and "attention runs on SDPA" in caplog.text


def test_the_first_visible_gpu_is_described_from_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda i: SimpleNamespace(name="Tesla T4", total_memory=15 * 2**30)
    )
    assert detect_gpu() == Gpu("Tesla T4", 15.0, bf16=False)  # is_bf16_supported() would say True (emulated)


def test_lora_r8_on_llama2_7b_has_19_988_480_trainable_parameters(compose_cfg):
    from peft import get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    llama2_7b = LlamaConfig(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, vocab_size=32000
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(llama2_7b)
    peft_model = get_peft_model(model, peft_lora_config(compose_cfg("train", ["lora.r=8"]).lora))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    # r * (in + out) over q, k, v, o (4096 -> 4096) and gate, up, down (4096 <-> 11008), 32 blocks
    assert trainable == 32 * 8 * (4 * (4096 + 4096) + 3 * (4096 + 11008)) == 19_988_480
    shape = ModelShape.of(peft_model)  # what the memory estimate counts per layer
    assert (shape.layers, shape.adapters.ranks, shape.adapters.dropped) == (32, 7 * 8, 6 * 4096 + 11008)


def test_missing_local_model_path_is_a_clear_error(compose_cfg, tmp_path):
    with pytest.raises(FaultLLMError, match="no such model directory"):
        cfg = compose_cfg("train", [f"model.path={tmp_path / 'nope'}"])
        resolve_model_path(cfg.model, cfg.cache_dir)


def test_lora_dropout_of_one_is_refused(compose_cfg):
    with pytest.raises(FaultLLMError, match=r"lora.dropout=1.0: expected < 1"):
        compose_cfg("train", ["lora.dropout=1.0"])
    assert compose_cfg("hpo").hpo.space["lora_dropout"].high < 1


def _step_peak_bytes(model, optimizer, ids) -> int:
    """Peak of the bytes torch holds on the CPU during one training step, above what it held before."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model(input_ids=ids, labels=ids, fused_lm_head=True).loss.backward()  # TRL's SFT loss
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):  # allocations and frees, in order
        live += event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


@pytest.mark.slow
@pytest.mark.parametrize(("hidden", "checkpointing"), [(128, False), (192, False), (256, False), (192, True)])
def test_the_memory_estimate_is_within_a_quarter_of_a_measured_cpu_peak(compose_cfg, hidden, checkpointing):
    """A small Llama with LoRA on every projection (dropout 0.1), fp32 on CPU: weights, the Adam moments
    of the first step and the second step's measured peak against `memory.step_memory`."""
    from peft import get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=1000, hidden_size=hidden, intermediate_size=hidden * 8 // 3, num_hidden_layers=2,
        num_attention_heads=hidden // 64, tie_word_embeddings=False, attn_implementation="sdpa",
    )  # fmt: skip
    base = LlamaForCausalLM(config)
    add_fused_lm_head(base, outputs=("log_probs", "entropy", "is_top1"))  # as SFTTrainer does
    model = get_peft_model(base, peft_lora_config(compose_cfg("train", ["lora.r=8"]).lora))
    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    ids = torch.randint(0, 1000, (2, 256))
    _step_peak_bytes(model, optimizer, ids)  # the first step creates the optimizer's moments
    n_trainable = sum(p.numel() for p in trainable)
    held = sum(p.numel() * p.element_size() for p in model.parameters()) + 2 * 4 * n_trainable
    measured = (held + _step_peak_bytes(model, optimizer, ids)) / 2**30
    plan = hardware_plan(ModelConfig(**AUTO), gpu=None)  # fp32 on the CPU
    estimate = step_memory(ModelShape.of(model), Step.of(plan, 2, 256 - 5, 5), plan, checkpointing).total / GIB
    assert estimate == pytest.approx(measured, rel=0.25)


def test_the_recorded_plan_names_the_attention_the_model_runs():
    from faultllm.llm.trainer import plan_for_run

    fixed = ModelConfig(**AUTO | {"gradient_checkpointing": False})
    plan = hardware_plan(fixed, gpu=H100, flash_attn_available=True)
    fell_back = SimpleNamespace(config=SimpleNamespace(_attn_implementation="sdpa"))  # FlashAttention-2 failed to load
    assert plan.attn_implementation == "flash_attention_2"
    assert plan_for_run(plan, fell_back, None, None, None).attn_implementation == "sdpa"  # what metrics.json records


def test_two_tiny_model_builds_racing_end_with_one_good_directory(compose_cfg, monkeypatch, tmp_path):
    from faultllm.llm import tiny

    model_cfg = compose_cfg("train", ["model=tiny", "model.warmup_steps=3"]).model  # not the shipped spec
    builds = []

    def build(spec, target: Path) -> None:
        builds.append(target)
        if len(builds) == 1:  # another builder (an HPO worker, a torchrun rank) finishes first
            tiny.ensure_tiny_model(model_cfg, str(tmp_path))
        target.mkdir(exist_ok=True)
        (target / "config.json").write_text("{}")

    monkeypatch.setattr(tiny, "build_tiny_model", build)
    built = tiny.ensure_tiny_model(model_cfg, str(tmp_path))
    assert len(builds) == 2 and builds[0] != builds[1]  # each builder its own temporary directory
    assert [path.name for path in tmp_path.iterdir()] == [built.name] and (built / "config.json").exists()
    assert tiny.ensure_tiny_model(model_cfg, str(tmp_path)) == built and len(builds) == 2  # built once: reused


def _easy_prompts(cfg, spec):
    from faultllm.data.splits import prepared_split
    from faultllm.prompts.serialize import Serializer

    split, _ = prepared_split(cfg.data, cfg.seed)
    serializer = Serializer.from_config(
        cfg.prompt, cfg.data.system_prompt, split.features, split.labels, spec.tokenizer()
    )
    return serializer.render(split.train)


@pytest.mark.slow
def test_checkpointing_one_fold_needed_is_off_for_the_next_fold_on_the_reused_base(
    tiny_cache, easy_csv, tmp_path, monkeypatch
):
    from faultllm.llm import build, trainer
    from faultllm.llm.build import ModelSpec

    overrides = ["data.train_size=8", "trainer.epochs=1", "trainer.batch_size=4", "trainer.eval_each_epoch=false"]
    cfg = load_config("train", [*easy_overrides(tiny_cache, easy_csv), *overrides])
    spec = ModelSpec.from_config(cfg.model, cfg.lora, cfg.cache_dir, cfg.prompt)
    cache = build.BaseModelCache()
    spec = replace(spec, base_cache=cache, plan=replace(spec.plan, gradient_checkpointing=None))  # auto, per fold
    prompts = _easy_prompts(cfg, spec)
    needed = []
    for fold, need in enumerate((True, False)):  # the first fold's batch does not fit, the second's does
        monkeypatch.setattr(trainer, "needs_checkpointing", lambda *args, need=need: need)
        result = trainer.fit(
            spec, prompts, {}, cfg.trainer, tmp_path / str(fold), seed=cfg.seed, eval_batch_size=cfg.eval.batch_size,
            progress=cfg.progress, checkpoints=False,
        )  # fmt: skip
        needed.append((result.plan.gradient_checkpointing, cache.model.is_activation_checkpointing))
    cache.clear()
    assert needed == [(True, True), (False, False)]


@pytest.mark.slow
def test_evaluate_reproduces_training_time_metrics_under_the_plans_autocast(
    tiny_cache, easy_csv, tmp_path, monkeypatch
):
    """On CUDA accelerate trains (and the epochs' scoring runs) under bf16 autocast; `evaluate` on the reloaded
    adapter must score the same way. Forced here on the CPU: a bf16 plan, bf16 weights under bf16 autocast."""
    from faultllm.jobs.evaluate import run as evaluate
    from faultllm.jobs.train import run as train
    from faultllm.llm import build

    cpu_plan = build.hardware_plan

    def bf16_plan(*args, **kwargs):
        return replace(cpu_plan(*args, **kwargs), dtype="bfloat16")

    monkeypatch.setattr(build, "hardware_plan", bf16_plan)  # reloading goes through ModelSpec too
    overrides = [*easy_overrides(tiny_cache, easy_csv), "data.train_size=32", "data.test_size=16", "trainer.epochs=1"]
    metrics = train(load_config("train", overrides), tmp_path / "run")
    assert metrics["hardware"]["dtype"] == "bfloat16"
    assert metrics["epochs"][-1]["test_loss"] == pytest.approx(metrics["test"]["loss"], rel=1e-6)
    reloaded = evaluate(load_config("evaluate", [f"run_dir={tmp_path / 'run'}"]), tmp_path / "eval")
    assert reloaded["accuracy"] == metrics["test"]["accuracy"]
    assert reloaded["loss"] == pytest.approx(metrics["test"]["loss"], rel=1e-6)


def test_4bit_scoring_never_takes_bitsandbytes_avx512_bf16_cpu_path(tiny_cache, monkeypatch):
    """On a CPU with AVX512-BF16 bitsandbytes repacks 4-bit weights at the first eval-mode forward, which
    asserts out_features % 32 == 0 and an even in_features: the tiny model's MLP (341) crashed scoring.
    The path is forced here on any CPU; faultllm's layers keep the plain fp32 dequantize-and-matmul."""
    import bitsandbytes as bnb

    from faultllm.llm.tokenizer import load_tokenizer

    monkeypatch.setattr(bnb.nn.modules, "has_avx512bf16", lambda: True)  # what Linear4bit asks when built
    cfg = load_config("train", [f"cache_dir={tiny_cache}", "model=tiny", "model.quantization=nf4"])
    path = resolve_model_path(cfg.model, cfg.cache_dir)
    plan = hardware_plan(cfg.model, gpu=None)
    model, tokenizer = load_base_model(path, plan).eval(), load_tokenizer(path)
    four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    refused = [m for m in four_bit if m.out_features % 32 or m.in_features % 2]
    assert len(refused) == 2 * 3  # gate, up (341 out) and down (341 in) of both blocks: shapes the kernel refuses
    batch = tokenizer(["[INST] a = 1.0 [/INST] Y = 1", "[INST] a = 0.2 [/INST]"], return_tensors="pt", padding=True)
    with torch.no_grad():
        scored = model(**batch).logits
    model.train()  # as training computes the same rows (no dropout in the tiny model)
    assert scored.dtype == torch.float32 and scored.equal(model(**batch).logits.detach())
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in four_bit)
