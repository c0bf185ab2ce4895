"""scripts/bench_gpu.py's pure parts (FLOP counts, peak lookup, the timed window), on CPU."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_gpu.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_model_flops_count_a_frozen_base_at_4n_and_lora_at_6n(bench):
    assert bench.model_flops_per_token(1_000, 10) == 4 * 1_000 + 6 * 10


def test_hardware_flops_add_a_second_forward_only_with_checkpointing(bench):
    assert bench.hardware_flops_per_token(1_000, 10, checkpointing=False) == 4_060
    assert bench.hardware_flops_per_token(1_000, 10, checkpointing=True) == 4_060 + 2 * 1_010


def test_utilization(bench):
    # 7e9-parameter frozen base, 1,000 tokens/s on a 989.4 TFLOP/s GPU
    assert bench.utilization(4 * 7e9, 1_000, 989.4) == pytest.approx(28e12 / 989.4e12)


def test_peak_tflops_matches_exact_names_only(bench):
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert bench.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bench.peak_tflops("NVIDIA H100 NVL") != bench.peak_tflops("NVIDIA H100 80GB HBM3")
    assert bench.peak_tflops("NVIDIA L4") == 121.0
    assert bench.peak_tflops("NVIDIA L40") is None  # not L4, not L40S
    assert bench.peak_tflops("NVIDIA H100") is None  # no guessing which H100
    assert bench.peak_tflops("Some Future GPU") is None
    assert bench.peak_tflops("Some Future GPU", override=500.0) == 500.0
    assert bench.peak_tflops("NVIDIA H100 PCIe", override=700.0) == 700.0


def test_timed_window_counts_only_steps_after_warmup(bench):
    synced: list[int] = []
    window = bench.TimedWindow(warmup=2, steps=3, sync=lambda: synced.append(1), sample=lambda: 7)
    for step in range(1, 6):
        state = SimpleNamespace(global_step=step, num_input_tokens_seen=100 * step + step**2)
        window.on_step_end(None, state, None)
    tokens, seconds = window.tokens_and_seconds()
    assert tokens == (500 + 25) - (200 + 4)  # steps 3, 4 and 5
    assert seconds >= 0
    assert len(synced) == 2  # at the two bounds only
    assert window.device_peak == 7


def test_timed_window_says_when_training_stopped_early(bench):
    window = bench.TimedWindow(warmup=2, steps=3, sync=lambda: None, sample=lambda: 0)
    window.on_step_end(None, SimpleNamespace(global_step=2, num_input_tokens_seen=10), None)
    with pytest.raises(RuntimeError, match="before step 5"):
        window.tokens_and_seconds()


@pytest.mark.parametrize("tied", [False, True])
def test_param_counts_split_base_and_lora(bench, tied):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        tie_word_embeddings=tied,
    )  # fmt: skip
    base = LlamaForCausalLM(config)
    everything = sum(p.numel() for p in base.parameters())  # tied weights counted once
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    n_base, n_lora = bench.param_counts(model)
    assert n_lora == 2 * (2 * 16 + 2 * 16)  # q and v: A (2 x 16) + B (16 x 2)
    embedding = 0 if tied else 32 * 16  # an untied input embedding is a lookup: no FLOPs
    assert n_base == everything - embedding
