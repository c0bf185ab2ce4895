from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from faultllm.compare.metrics import classification_metrics
from faultllm.llm.decoding import parse_answer
from faultllm.llm.evaluation import evaluate_restricted
from faultllm.llm.scoring import answer_space, score
from faultllm.prompts.serialize import PromptFormat, Prompts, Serializer
from faultllm.prompts.templates import Llama2Layout
from faultllm.runtime.errors import FaultLLMError

FMT = PromptFormat(system="You are an expert.", name_features=False, decimals=2)
LAYOUT = Llama2Layout(end="</s>")  # the tiny model's EOS


def space_of(tokenizer, labels: list, prompt: str):
    """The answer space after `prompt`, in the study's layout."""
    return answer_space(tokenizer, Prompts([prompt], [], labels, {label: LAYOUT.completion(label) for label in labels}))


def _prompts(n: int, labels: list, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.uniform(size=(n, int(rng.integers(3, 6)))), columns=None)
    frame.columns = [f"f{i}" for i in range(frame.shape[1])]
    # rows of different lengths, so batches really are padded
    frame["label"] = labels[0]
    short = Serializer(["f0"], labels, FMT, LAYOUT).render(frame.iloc[:1])
    return Serializer(list(frame.columns[:-1]), labels, FMT, LAYOUT).render(frame).texts + short.texts


def brute_force_log_probs(model, tokenizer, prompt: str, labels: list) -> np.ndarray:
    """log p(whole answer: shared prefix, label tokens, end token) per label, one unpadded sequence at a time."""
    space = space_of(tokenizer, labels, prompt)
    prompt_ids = tokenizer(prompt)["input_ids"]
    out = []
    for suffix in space.suffixes:
        answer = space.shared + suffix
        with torch.no_grad():
            log_probs = torch.log_softmax(model(torch.tensor([prompt_ids + answer])).logits[0].float(), dim=-1)
        positions = range(len(prompt_ids) - 1, len(prompt_ids) - 1 + len(answer))
        out.append(sum(log_probs[p, t].item() for p, t in zip(positions, answer, strict=True)))
    return np.asarray(out)


def softmax(log_probs: np.ndarray) -> np.ndarray:
    exp = np.exp(log_probs - log_probs.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


@pytest.mark.slow  # loads the tiny model
@pytest.mark.parametrize(
    "labels", [[0, 1, 4, 5], [1, 12], [1, 12, 2, 20], [0, 4, 11], ["normal", "valve stuck"]]
)  # fmt: skip
def test_every_label_set_is_scored_by_the_whole_answer_through_its_end_token(tiny_model, labels):
    """Single-token labels (0, 1, 4, 5) included: p(end | label) counts, so prob_* means the same for any labels."""
    model, tokenizer = tiny_model
    texts = _prompts(6, labels, seed=1)
    truth = [labels[i % len(labels)] for i in range(len(texts))]
    space = space_of(tokenizer, labels, texts[0])
    scores = score(model, tokenizer, texts, truth, space, batch_size=4)
    brute = np.stack([brute_force_log_probs(model, tokenizer, text, labels) for text in texts])
    np.testing.assert_allclose(scores.probabilities(), softmax(brute), atol=1e-5)
    np.testing.assert_allclose(scores.log_probs, brute, atol=1e-4)  # unnormalised: summed over the answer
    lengths = [len(space.shared) + len(space.suffixes[labels.index(label)]) for label in truth]
    true_log_probs = brute[np.arange(len(texts)), [labels.index(label) for label in truth]]
    np.testing.assert_allclose(scores.loss, -true_log_probs / lengths, atol=1e-5)


@pytest.mark.slow  # loads the tiny model
def test_restricted_metrics_hold_class_loss_and_valid_mass(tiny_model):
    model, tokenizer = tiny_model
    labels = [1, 12]
    texts = _prompts(5, labels, seed=5)
    truth = [1, 12, 12, 1, 12, 1]
    prompts = Prompts(texts, truth, labels, {label: LAYOUT.completion(label) for label in labels})
    metrics, predictions = evaluate_restricted(model, tokenizer, prompts, answer_space(tokenizer, prompts), 4)
    brute = np.stack([brute_force_log_probs(model, tokenizer, text, labels) for text in texts])
    true_index = [labels.index(label) for label in truth]
    normalised = softmax(brute)[np.arange(len(texts)), true_index]
    assert metrics["class_loss"] == pytest.approx(-np.log(normalised).mean(), abs=1e-5)
    assert metrics["valid_mass"] == pytest.approx(np.exp(brute).sum(axis=1).mean(), rel=1e-4)
    assert 0 < metrics["valid_mass"] < 1 and metrics["loss"] == pytest.approx(predictions["loss"].mean())
    np.testing.assert_allclose(predictions[["prob_1", "prob_12"]].sum(axis=1), 1.0, atol=1e-6)


class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of the tensors alive at once among those made inside the block (weights excluded): exact and
    deterministic on any machine, unlike RSS."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.live = {key: entry for key, entry in self.live.items() if not entry[0].expired()}
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                self.live.setdefault(storage._cdata, (StorageWeakRef(storage), storage.nbytes()))
        self.peak = max(self.peak, sum(size for _, size in self.live.values()))
        return out


def _long_prompts(n: int, labels: list) -> list[str]:
    """n prompts of ~300 tokens (40 features), as TEP's are long."""
    rng = np.random.default_rng(7)
    frame = pd.DataFrame(rng.uniform(size=(n, 40)), columns=[f"f{i}" for i in range(40)])
    frame["label"] = labels[0]
    return Serializer(list(frame.columns[:-1]), labels, FMT, LAYOUT).render(frame).texts


@pytest.mark.slow  # loads the tiny model
def test_labels_sharing_first_tokens_cost_no_more_memory_than_single_token_labels(tiny_model):
    """TEP's 21 classes under Llama-2's digit tokens: 10-19 share `1` with 1, 20 shares `2` with 2. Scoring them
    must not copy the prompt's KV cache per label (21x the memory, ~250 GiB for Llama-2-7B at batch 16)."""
    model, tokenizer = tiny_model
    many, few = list(range(21)), [0, 1, 4]
    texts = _long_prompts(16, many)  # the same prompts for both label sets
    spaces = {len(labels): space_of(tokenizer, labels, texts[0]) for labels in (many, few)}
    assert spaces[21].suffixes[12][0] == spaces[21].suffixes[1][0] and len(spaces[21].suffixes[12]) == 3
    peaks, scores = {}, {}
    for n, space in spaces.items():
        with LiveTensorBytes() as memory:
            scores[n] = score(model, tokenizer, texts, [0] * len(texts), space, batch_size=16)
        peaks[n] = memory.peak
    assert peaks[21] <= 1.5 * peaks[3], peaks  # before: 8.5x (284 vs 33 MiB)
    brute = np.stack([brute_force_log_probs(model, tokenizer, text, many) for text in texts[:4]])
    np.testing.assert_allclose(scores[21].probabilities()[:4], softmax(brute), atol=1e-5)


@pytest.mark.slow  # loads the tiny model
def test_flash_attention_is_swapped_for_sdpa_while_scoring(tiny_model):
    """FlashAttention takes no custom 4D mask: scoring runs on SDPA and gives the model back as it was."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    def refuses_masks(*args, **kwargs):
        raise AssertionError("a 4D mask reached an attention that cannot take one")

    model, tokenizer = tiny_model
    AttentionInterface.register("refuses_masks", refuses_masks)
    AttentionMaskInterface.register("refuses_masks", sdpa_mask)
    labels = [1, 12, 2]
    texts = _prompts(3, labels, seed=6)
    space = space_of(tokenizer, labels, texts[0])
    expected = score(model, tokenizer, texts, [1, 1, 1, 1], space)
    original = model.config._attn_implementation
    model.set_attn_implementation("refuses_masks")
    try:
        swapped = score(model, tokenizer, texts, [1, 1, 1, 1], space)
        assert model.config._attn_implementation == "refuses_masks"
    finally:
        model.set_attn_implementation(original)
    np.testing.assert_allclose(swapped.log_probs, expected.log_probs, atol=1e-6)


@pytest.mark.slow  # loads the tiny model
def test_predictions_do_not_depend_on_batch_size_or_padding(tiny_model):
    model, tokenizer = tiny_model
    for labels in ([0, 1, 4, 5], [1, 12, 2, 20]):
        texts = _prompts(9, labels, seed=2)
        space = space_of(tokenizer, labels, texts[0])
        truth = [labels[i % len(labels)] for i in range(len(texts))]
        one = score(model, tokenizer, texts, truth, space, batch_size=1)
        many = score(model, tokenizer, texts, truth, space, batch_size=8)
        np.testing.assert_allclose(one.log_probs, many.log_probs, atol=1e-4)
        np.testing.assert_allclose(one.loss, many.loss, atol=1e-5)
        assert (one.probabilities().argmax(1) == many.probabilities().argmax(1)).all()


def _fresh_base(tiny_cache, dtype: str = "float32"):
    """(the tiny base model, freshly loaded under a plan of `dtype`, tokenizer): tests that change the model."""
    from dataclasses import replace

    from faultllm.config.load import load_config
    from faultllm.llm.build import load_base_model
    from faultllm.llm.hardware import hardware_plan
    from faultllm.llm.sources import resolve_model_path
    from faultllm.llm.tokenizer import load_tokenizer

    cfg = load_config("train", [f"cache_dir={tiny_cache}", "model=tiny", "progress=false"])
    path = resolve_model_path(cfg.model, cfg.cache_dir)
    return load_base_model(path, replace(hardware_plan(cfg.model), dtype=dtype)), load_tokenizer(path)


@pytest.mark.slow  # loads the tiny model
def test_decoding_runs_without_lora_dropout_and_gives_the_model_back_in_its_mode(tiny_cache):
    """A Trainer leaves its model in train mode: greedy decoding after training (train's final evaluation, HPO's
    refit, bench, explain's probes) must not draw LoRA dropout, or the answers change from call to call."""
    from peft import get_peft_model

    from faultllm.config.groups import LoraConfig
    from faultllm.llm.build import peft_lora_config
    from faultllm.llm.decoding import generate_answers

    base, tokenizer = _fresh_base(tiny_cache)
    model = get_peft_model(base, peft_lora_config(LoraConfig(r=8, alpha=16, dropout=0.5)))
    torch.manual_seed(0)
    with torch.no_grad():  # adapters that matter, as after training (fresh ones are zero)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    texts = _prompts(7, [0, 1, 4, 5], seed=3)
    expected = generate_answers(model.eval(), tokenizer, texts, max_new_tokens=5, batch_size=4)
    model.train()
    for _ in range(2):  # before: 8 of 8 answers changed between two calls
        assert generate_answers(model, tokenizer, texts, max_new_tokens=5, batch_size=4) == expected
    assert all(module.training for module in model.modules())  # training goes on as it was


@pytest.mark.slow  # loads the tiny model
def test_label_scores_take_the_lm_head_in_fp32_under_bf16_autocast(tiny_cache):
    """On CUDA the base model runs under bf16 autocast (`in_plan_precision`), which would round the head's
    logits to bf16 before the log-softmax: scores must equal those of an exact head on the same hidden states.
    Forced here on the CPU: a bf16 plan's autocast over fp32 weights."""
    from faultllm.llm.hardware import HardwarePlan, in_plan_precision

    base, tokenizer = _fresh_base(tiny_cache)
    model = in_plan_precision(base.eval(), HardwarePlan("cpu", "none", "sdpa", "bfloat16", "adamw_torch", False))
    labels = [0, 1, 4, 5]
    texts = _prompts(7, labels, seed=3)
    truth = [labels[i % len(labels)] for i in range(len(texts))]
    space = space_of(tokenizer, labels, texts[0])
    scored = score(model, tokenizer, texts, truth, space, batch_size=4)

    def exact_head(head, inputs, output):  # a hook: it replaces the output whatever the head's forward did
        return torch.nn.functional.linear(inputs[0].double(), head.weight.double()).float()

    hook = model.get_output_embeddings().register_forward_hook(exact_head)
    try:
        exact = score(model, tokenizer, texts, truth, space, batch_size=4)
    finally:
        hook.remove()
    np.testing.assert_allclose(scored.log_probs, exact.log_probs, atol=1e-4)  # before: 0.027 off
    np.testing.assert_allclose(scored.loss, exact.loss, atol=1e-5)  # before: 0.005 off
    assert "forward" not in model.get_output_embeddings().__dict__  # the head as it was


@pytest.mark.slow  # loads the tiny model
def test_labels_that_tokenize_identically_are_rejected(tiny_model):
    _, tokenizer = tiny_model
    with pytest.raises(FaultLLMError, match="cannot be told apart"):
        space_of(tokenizer, ["ä", "ö"], _prompts(1, [0, 1])[0])  # both unknown: <unk>


def test_parse_answer_and_metrics():
    assert parse_answer("Y = 4</s>", [0, 1, 4, 5]) == 4
    assert parse_answer(" Y = 12", [1, 12]) == 12
    assert parse_answer("Y = 1 0 0 0", [0, 1]) == 1
    assert parse_answer("I think", [0, 1]) is None and parse_answer("Y = 7", [0, 1]) is None
    metrics = classification_metrics([0, 0, 1, 1], [0, None, 1, 0], [0, 1])
    assert metrics["accuracy"] == 0.5 and metrics["confusion_matrix"] == [[1, 0], [1, 1]]
    assert metrics["per_class_recall"] == {"0": 0.5, "1": 0.5}


def test_metrics_are_over_the_classes_present():
    metrics = classification_metrics([1, 4, 1], [1, 4, 1], [0, 1, 4, 5])
    assert metrics["accuracy"] == 1.0 and metrics["macro_f1"] == 1.0  # not 0.5 from absent classes 0 and 5
    assert metrics["classes_scored"] == ["1", "4"] and metrics["per_class_recall"] == {"1": 1.0, "4": 1.0}
    assert len(metrics["confusion_matrix"]) == 4
    wrong = classification_metrics([1, 1], [5, 1], [0, 1, 4, 5])  # a predicted class counts though absent in truth
    assert wrong["classes_scored"] == ["1", "5"] and wrong["macro_f1"] == pytest.approx((2 / 3 + 0) / 2)
