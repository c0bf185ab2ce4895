"""Restricted-label evaluation: the model may only answer with a valid label.

Every answer is `Y = <label>` and the template's end token (` Y = 1</s>` in the study's
layout, `Y = 1<|eot_id|>` in Llama-3's chat template). After the prompt, all answers share a token prefix
(`▁Y ▁= ▁`) and then differ. When every label's first differing token is unique (0, 1,
4, 5), one forward pass over prompt + true answer gives both the label distribution (the
logits at the first differing position, restricted to the label tokens) and the
teacher-forced answer loss. Otherwise (1 vs 12) each label's remaining tokens are scored
from the prompt's KV cache in a second pass and labels are ranked by sequence
log-probability. Batches are left-padded with explicit position ids, so predictions do
not depend on batch size or padding; only gathered log-probabilities are kept, never
full-vocabulary logits for the whole sequence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from faultllm.distributed import gather, shard
from faultllm.errors import FaultLLMError
from faultllm.metrics import classification_metrics
from faultllm.modeling import (
    ModelSpec,
    fit_embeddings,
    hardware_plan,
    load_base_model,
    load_trained,
    resolve_model_path,
)
from faultllm.prompts import Prompts, Serializer
from faultllm.rundir import SavedRun
from faultllm.schema import EvalConfig


@dataclass(frozen=True)
class AnswerSpace:
    labels: list
    shared: list[int]  # answer tokens common to every label (after the prompt)
    suffixes: list[list[int]]  # per label: the tokens after `shared`, EOS included

    @property
    def single_pass(self) -> bool:
        """One forward pass suffices when every label's first token is its own and every answer has the
        same length (rows stay aligned); otherwise the rest of each answer is scored from the KV cache."""
        firsts = [suffix[0] for suffix in self.suffixes]
        return len(set(firsts)) == len(firsts) and len({len(suffix) for suffix in self.suffixes}) == 1


def answer_space(tokenizer, prompts: Prompts) -> AnswerSpace:
    """Each label's answer tokens after a prompt (the first of `prompts`), through the end-of-turn token."""
    labels, probe_prompt = prompts.labels, prompts.texts[0]
    prompt_ids = tokenizer(probe_prompt)["input_ids"]
    answers = []
    for label in labels:
        ids = tokenizer(probe_prompt + prompts.completions[label])["input_ids"]
        if ids[: len(prompt_ids)] != prompt_ids:
            raise FaultLLMError(
                "the tokenizer merges the prompt's end with the answer; prompts must end on a token boundary"
            )
        answers.append(ids[len(prompt_ids) :])
    if len({tuple(a) for a in answers}) < len(answers):
        raise FaultLLMError(f"labels {labels} cannot be told apart after tokenization (identical answer tokens)")
    shared = 0
    while all(len(a) > shared + 1 and a[shared] == answers[0][shared] for a in answers):
        shared += 1
    return AnswerSpace(labels=list(labels), shared=answers[0][:shared], suffixes=[a[shared:] for a in answers])


@dataclass
class Scores:
    log_probs: np.ndarray  # (n, n_labels): restricted log-probability of each label
    loss: np.ndarray  # (n,): mean NLL per answer token of the true answer (as the SFT loss)

    def probabilities(self) -> np.ndarray:
        shifted = self.log_probs - self.log_probs.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        return exp / exp.sum(axis=1, keepdims=True)


def score(
    model, tokenizer, prompts: list[str], true_labels: list, space: AnswerSpace, batch_size: int = 16,
    progress: str | None = None,
) -> Scores:  # fmt: skip
    """Restricted label log-probabilities and true-answer loss for each prompt, batched.

    `progress`: a progress bar with that title. Under torchrun/accelerate the batches are shared out between the ranks and gathered: every
    rank gets every score, each batch computed once.
    """
    import torch

    device = next(model.parameters()).device
    label_index = {label: i for i, label in enumerate(space.labels)}
    encoded = tokenizer(prompts, add_special_tokens=True)["input_ids"]
    order = np.argsort([len(ids) for ids in encoded])  # similar lengths per batch: less padding
    batches = [order[start : start + batch_size] for start in range(0, len(prompts), batch_size)]
    scored = []
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for index in tqdm(shard(len(batches)), desc=progress, disable=progress is None, unit="batch"):
            rows = batches[index]
            truth = [label_index[true_labels[i]] for i in rows]
            scored.append(
                (rows, *_score_batch(model, [encoded[i] for i in rows], truth, space, tokenizer.pad_token_id, device))
            )
    model.train(was_training)
    log_probs, loss = np.zeros((len(prompts), len(space.labels))), np.zeros(len(prompts))
    for rows, batch_log_probs, batch_loss in gather(scored):
        log_probs[rows], loss[rows] = batch_log_probs, batch_loss
    return Scores(log_probs=log_probs, loss=loss)


def _left_pad(sequences: list[list[int]], pad_id: int, device):
    import torch

    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq) :] = torch.tensor(seq)
        mask[row, width - len(seq) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


def _score_batch(model, prompt_ids, truth, space: AnswerSpace, pad_id: int, device):
    import torch

    n_shared = len(space.shared)
    if space.single_pass:
        # prompt + shared + true label token: the logits before the label token score every
        # label; the ones after it score EOS for the loss. Equal suffix length keeps rows aligned.
        tails = [space.shared + space.suffixes[t][:-1] for t in truth]
        targets = [space.shared + space.suffixes[t] for t in truth]
    else:
        tails = [space.shared] * len(truth)
        targets = [space.shared + [space.suffixes[t][0]] for t in truth]  # the rest comes from pass two
    ids, mask, positions = _left_pad([p + t for p, t in zip(prompt_ids, tails, strict=True)], pad_id, device)
    n_target = len(targets[0])
    # logits at position j predict token j+1: the last n_target positions predict the targets, and
    # only those go through lm_head (not batch x sequence x vocabulary)
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        use_cache=not space.single_pass,
        logits_to_keep=n_target,
    )
    step_log_probs = torch.log_softmax(out.logits[:, -n_target:, :].float(), dim=-1)
    target_ids = torch.tensor(targets, device=device)
    target_lp = step_log_probs.gather(-1, target_ids.unsqueeze(-1)).squeeze(-1)  # (B, n_target)
    first_label_tokens = torch.tensor([s[0] for s in space.suffixes], device=device)
    label_lp = step_log_probs[:, n_shared, :][:, first_label_tokens]  # (B, n_labels)

    if space.single_pass:
        nll = -target_lp.sum(-1) / n_target
        return label_lp.cpu().numpy(), nll.cpu().numpy()

    rest_lp = _score_continuations(model, out.past_key_values, mask, positions, space, device)  # (B, n_labels)
    label_lp = label_lp + rest_lp
    truth_t = torch.tensor(truth, device=device)
    total_true = target_lp[:, :n_shared].sum(-1) + label_lp.gather(1, truth_t[:, None]).squeeze(1)
    n_tokens = torch.tensor([n_shared + len(space.suffixes[t]) for t in truth], device=device)
    return label_lp.cpu().numpy(), (-total_true / n_tokens).cpu().numpy()


def _score_continuations(model, cache, mask, positions, space: AnswerSpace, device):
    """log p(suffix[1:] | prompt, shared, suffix[0]) for every label, reusing the prompt's KV cache."""
    import torch

    batch, n_labels = mask.shape[0], len(space.labels)
    width = max(len(s) for s in space.suffixes) - 1  # inputs: suffix[:-1]; targets: suffix[1:]
    inputs = torch.full((n_labels, width), 0, dtype=torch.long)
    targets = torch.full((n_labels, width), 0, dtype=torch.long)
    valid = torch.zeros((n_labels, width), dtype=torch.bool)
    for k, suffix in enumerate(space.suffixes):
        inputs[k, : len(suffix) - 1] = torch.tensor(suffix[:-1])
        targets[k, : len(suffix) - 1] = torch.tensor(suffix[1:])
        valid[k, : len(suffix) - 1] = True
    if width == 0:
        return torch.zeros((batch, n_labels), device=device)
    cache.batch_repeat_interleave(n_labels)
    rep = lambda t: t.repeat_interleave(n_labels, dim=0)  # noqa: E731
    inputs, targets, valid = (t.to(device).repeat(batch, 1) for t in (inputs, targets, valid))
    full_mask = torch.cat([rep(mask), valid.long()], dim=1)
    cont_positions = rep(positions[:, -1:]) + 1 + torch.arange(width, device=device)
    out = model(
        input_ids=inputs, attention_mask=full_mask, position_ids=cont_positions, past_key_values=cache, use_cache=True
    )
    lp = torch.log_softmax(out.logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (lp * valid).sum(-1).view(batch, n_labels)


# ---------------------------------------------------------------- the study's protocol: generate and parse

_ANSWER = re.compile(r"Y\s*=\s*")
_END = re.compile(r"\s|</s>|$|[.,;]")


def parse_answer(text: str, labels: list):
    """The label in `Y = k` (labels may hold spaces: the longest that fits wins), or None when invalid."""
    match = _ANSWER.search(text)
    if not match:
        return None
    rest = text[match.end() :].strip()
    for label in sorted(labels, key=lambda label: -len(str(label))):
        name = str(label)
        if rest.startswith(name) and _END.match(rest, len(name)):
            return label
    return None


def generate_answers(model, tokenizer, prompts: list[str], max_new_tokens: int = 5, batch_size: int = 1) -> list[str]:
    """Greedy decoding, left padded; the study used batch 1 and 5 new tokens."""
    import torch

    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    texts = []
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True).to(device)
            out = model.generate(
                **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,  # the answer's end: the template's end of turn, not the base's EOS
            )  # fmt: skip
            texts += tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return texts


# ---------------------------------------------------------------- one split's metrics and predictions


@dataclass
class TrainedLLM:
    """A fine-tuned model with its tokenizer and the serializer it was trained with."""

    model: object
    tokenizer: object
    serializer: Serializer

    @classmethod
    def from_run(cls, run: SavedRun) -> TrainedLLM:
        """The run's adapter on its base model, loaded as this machine's hardware plan says; the base model
        alone for a run that trained nothing (trainer.epochs=0). In-context examples come from the run's
        own training rows."""
        cfg = run.cfg
        if cfg.trainer.epochs == 0:
            spec = ModelSpec.from_config(cfg.model, cfg.lora, cfg.cache_dir, cfg.prompt)
            tokenizer = spec.tokenizer(padding_side="left")  # as the run prepared it: the same config
            model = fit_embeddings(load_base_model(spec.path, spec.plan), tokenizer).eval()
        else:
            base_path = resolve_model_path(cfg.model, cfg.cache_dir)
            model, tokenizer = load_trained(run.run_dir / "adapter", base_path, hardware_plan(cfg.model))
        features, labels = run.prompt_features(), run.split.labels
        serializer = Serializer.from_config(
            cfg.prompt, cfg.data.system_prompt, features, labels, tokenizer, cfg.seed, run.split.train
        )
        return cls(model, tokenizer, serializer)


def evaluate_restricted(model, tokenizer, prompts: Prompts, space: AnswerSpace, batch_size: int):
    """(metrics incl. the mean answer loss, predictions with per-label probabilities) by restricted scoring."""
    scores = score(model, tokenizer, prompts.texts, prompts.truth, space, batch_size=batch_size)
    probabilities = scores.probabilities()
    predicted = [space.labels[i] for i in probabilities.argmax(axis=1)]
    predictions = _predictions(prompts, predicted)
    for i, label in enumerate(space.labels):
        predictions[f"prob_{label}"] = probabilities[:, i]
    predictions["loss"] = scores.loss
    metrics = classification_metrics(prompts.truth, predicted, space.labels) | {"loss": float(scores.loss.mean())}
    return metrics, predictions


def evaluate_generated(model, tokenizer, prompts: Prompts, labels: list, max_new_tokens: int, batch_size: int):
    """The study's protocol: greedy decoding, parse `Y = k`; an unparseable answer counts as wrong."""
    texts = generate_answers(model, tokenizer, prompts.texts, max_new_tokens, batch_size)
    predicted = [parse_answer(text, labels) for text in texts]
    predictions = _predictions(prompts, predicted)
    predictions["output"] = texts
    invalid = sum(p is None for p in predicted)
    return classification_metrics(prompts.truth, predicted, labels) | {"invalid_outputs": invalid}, predictions


def evaluate_prompts(
    model, tokenizer, prompts: Prompts, space: AnswerSpace, eval_cfg: EvalConfig
) -> tuple[dict, pd.DataFrame]:
    """Metrics and a predictions table for one split, by `eval.mode` (restricted or generate)."""
    if eval_cfg.mode == "generate":
        return evaluate_generated(
            model, tokenizer, prompts, space.labels, eval_cfg.max_new_tokens, eval_cfg.generate_batch_size
        )
    return evaluate_restricted(model, tokenizer, prompts, space, eval_cfg.batch_size)


def _predictions(prompts: Prompts, predicted: list) -> pd.DataFrame:
    return pd.DataFrame({"row": np.arange(len(prompts.truth)), "label": prompts.truth, "predicted": predicted})
