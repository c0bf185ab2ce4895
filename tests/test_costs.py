"""faultllm.cost.flops, faultllm.llm.shape, faultllm.data.standins and the pure parts of faultllm.cost.bench: FLOP counts, the GPU table, model shapes from config.json
alone, the timed window, the stand-in data (scripts/bench_gpu.py and `faultllm bench` use them)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from faultllm.config.choices import GPU_NAMES
from faultllm.config.load import load_config
from faultllm.cost import flops
from faultllm.cost.bench import TimedWindow
from faultllm.data import standins
from faultllm.data.datasets import load
from faultllm.llm import shape as shapes
from faultllm.llm.sources import SHIPPED_CONFIGS
from faultllm.llm.tiny import SHIPPED
from faultllm.runtime.errors import FaultLLMError

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_gpu.py"


def test_model_flops_count_a_frozen_base_at_4n_and_lora_at_6n():
    assert flops.model_flops_per_token(1_000, 10) == 4 * 1_000 + 6 * 10
    assert flops.scoring_flops_per_token(1_000, 10) == 2 * 1_010


def test_hardware_flops_add_a_second_forward_only_with_checkpointing():
    assert flops.hardware_flops_per_token(1_000, 10, checkpointing=False) == 4_060
    assert flops.hardware_flops_per_token(1_000, 10, checkpointing=True) == 4_060 + 2 * 1_010


def test_utilization():
    # 7e9-parameter frozen base, 1,000 tokens/s on a 989.4 TFLOP/s GPU
    assert flops.utilization(4 * 7e9, 1_000, 989.4) == pytest.approx(28e12 / 989.4e12)


def test_peak_tflops_matches_exact_names_only():
    assert flops.peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert flops.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert flops.peak_tflops("NVIDIA H100 NVL") != flops.peak_tflops("NVIDIA H100 80GB HBM3")
    assert flops.peak_tflops("NVIDIA L4") == 121.0
    assert flops.peak_tflops("NVIDIA L40") is None  # not L4, not L40S
    assert flops.peak_tflops("NVIDIA H100") is None  # no guessing which H100
    assert flops.peak_tflops("Some Future GPU") is None
    assert flops.peak_tflops("Some Future GPU", override=500.0) == 500.0
    assert flops.peak_tflops("NVIDIA H100 PCIe", override=700.0) == 700.0


def test_every_plannable_gpu_has_a_peak_by_its_exact_name():
    assert tuple(flops.GPUS) == GPU_NAMES  # plan.gpu's choices
    assert {name: flops.PEAK_TFLOPS[gpu.name] for name, gpu in flops.GPUS.items()} == {
        "h100": 989.4, "h200": 989.4, "a100": 312.0, "l40s": 362.05, "a10": 125.0, "t4": 65.0,
    }  # fmt: skip
    assert not flops.GPUS["t4"].bf16 and flops.GPUS["h200"].memory_gib > 2 * flops.GPUS["h100"].memory_gib * 0.8


def test_timed_window_counts_only_steps_after_warmup():
    synced: list[int] = []
    window = TimedWindow(warmup=2, steps=3, sync=lambda: synced.append(1), sample=lambda: 7)
    for step in range(1, 6):
        state = SimpleNamespace(global_step=step, num_input_tokens_seen=100 * step + step**2)
        window.on_step_end(None, state, None)
    tokens, seconds = window.tokens_and_seconds()
    assert tokens == (500 + 25) - (200 + 4)  # steps 3, 4 and 5
    assert seconds >= 0
    assert len(synced) == 2  # at the two bounds only
    assert window.device_peak == 7


def test_timed_window_says_when_training_stopped_early():
    window = TimedWindow(warmup=2, steps=3, sync=lambda: None, sample=lambda: 0)
    window.on_step_end(None, SimpleNamespace(global_step=2, num_input_tokens_seen=10), None)
    with pytest.raises(RuntimeError, match="before step 5"):
        window.tokens_and_seconds()


@pytest.mark.parametrize("tied", [False, True])
def test_param_counts_split_base_and_lora(tied):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        tie_word_embeddings=tied,
    )  # fmt: skip
    base = LlamaForCausalLM(config)
    everything = sum(p.numel() for p in base.parameters())  # tied weights counted once
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    n_base, n_lora = shapes.param_counts(model)
    assert n_lora == 2 * (2 * 16 + 2 * 16)  # q and v: A (2 x 16) + B (16 x 2)
    embedding = 0 if tied else 32 * 16  # an untied input embedding is a lookup: no FLOPs
    assert n_base == everything - embedding


def test_the_tiny_models_shape_by_hand(tmp_path):
    """hidden 128, MLP 341, 2 layers, 4 heads of 32, vocabulary 380, untied head: from config.json alone."""
    shutil.copy(SHIPPED / "config.json", tmp_path / "config.json")
    shape = shapes.model_shape(tmp_path)
    per_layer = 4 * 128 * 128 + 3 * 128 * 341 + 2 * 128  # q, k, v, o; gate, up, down; two norms
    assert shape.n_base == 2 * per_layer + 128 + 380 * 128  # + final norm + lm_head = 442,240
    assert shape.n_params == shape.n_base + 380 * 128  # + the input embedding, a lookup
    assert (shape.hidden, shape.intermediate, shape.layers, shape.vocab, shape.context) == (128, 341, 2, 380, 2048)
    # LoRA r on every linear layer but the head: r (in + out) each
    assert shape.n_lora(16, "all-linear") == 16 * 2 * (4 * (128 + 128) + 2 * (128 + 341) + (341 + 128)) == 77_792
    assert shape.n_lora(8, ["q_proj", "v_proj"]) == 8 * 2 * 2 * (128 + 128)


def test_the_shape_agrees_with_peft_on_the_tiny_model(tiny_model):
    from peft import get_peft_model

    from faultllm.config.groups import LoraConfig
    from faultllm.llm.build import peft_lora_config

    shape = shapes.model_shape(SHIPPED)
    for lora in (LoraConfig(r=16), LoraConfig(r=4, target_modules=["q_proj", "down_proj"])):
        model = get_peft_model(type(tiny_model[0])(tiny_model[0].config), peft_lora_config(lora))
        assert shapes.param_counts(model) == (shape.n_base, shape.n_lora(lora.r, lora.target_modules))


@pytest.mark.parametrize(
    ("model", "billions", "vocab"),
    [("llama2_7b_chat", 6.738, 32000), ("llama2_13b_chat", 13.016, 32000), ("llama3_8b_instruct", 8.030, 128256),
     ("mistral_7b_instruct", 7.248, 32768), ("qwen2_5_7b_instruct", 7.616, 152064)],
)  # fmt: skip
def test_every_hub_model_ships_its_config_json_with_the_published_size(model, billions, vocab):
    config = SHIPPED_CONFIGS / load_config("train", [f"model={model}"]).model.path / "config.json"
    assert config.exists() and config.stat().st_size < 2_000
    shape = shapes.model_shape(config.parent)
    assert shape.n_params / 1e9 == pytest.approx(billions, abs=0.001) and shape.vocab == vocab


def test_stand_in_data_for_the_protocols_without_their_files(tmp_path):
    tep = load_config("train", ["experiment=tep_paper"]).data
    same, note = standins.stand_in_data(load_config("train").data, str(tmp_path))
    assert note is None and same.path == load_config("train").data.path  # data.path given: used as is
    stand_in, note = standins.stand_in_data(tep, str(tmp_path))
    assert stand_in.path == str(standins.TEP_STAND_IN) and "bundled simulation" in note
    hst, note = standins.stand_in_data(load_config("train", ["experiment=hst_paper"]).data, str(tmp_path))
    raw = load(hst)
    assert "synthetic HST-shaped" in note and raw.pool.shape == (2000, 47) and len(raw.features) == 46
    assert standins.synthetic_hst(str(tmp_path)) == Path(hst.path)  # cached, same content
    with pytest.raises(FaultLLMError, match=r"data\.path is not set"):
        standins.stand_in_data(load_config("train", ["data=csv"]).data, str(tmp_path))


def test_bench_gpu_script_imports_and_needs_cuda():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert callable(module.main) and callable(module.report)
