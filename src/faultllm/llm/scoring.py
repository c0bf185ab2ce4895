"""Restricted-label evaluation: the model may only answer with a valid label.

Every answer is `Y = <label>` and the template's end token (` Y = 1</s>` in the study's
layout, `Y = 1<|eot_id|>` in Llama-3's chat template). Each label is scored by the
probability of its whole answer through the end token: log p(shared prefix) + log p(label
tokens) + log p(end | label). After the prompt, all answers share a token prefix (`▁Y ▁= ▁`)
and then branch; the branches form a prefix tree (1 and 12 share `1`, and `1` is also
followed by `</s>`). One forward pass scores everything: the prompt and shared prefix, then
each tree node once, appended after the prompt with a tree attention mask (a node sees the
prompt, its ancestors and itself, at the position it would have in its own answer). Nothing
is copied per label: the extra work is one token per tree node (21 for TEP's labels 0-20
under Llama-2's digit tokens, 4 for 0, 1, 4, 5), whatever the batch. Batches are left-padded
with explicit position ids, so scores do not depend on batch size or padding; only gathered
log-probabilities are kept, never full-vocabulary logits for the whole sequence.
"""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from faultllm.compare.metrics import classification_metrics
from faultllm.config.schema import EvalConfig
from faultllm.llm.modeling import ModelSpec, load_trained, load_untrained
from faultllm.prompts.serialize import Prompts, Serializer
from faultllm.run.saved import SavedRun
from faultllm.runtime.distributed import gather, shard
from faultllm.runtime.errors import FaultLLMError
from faultllm.runtime.progress import steps as progress_steps

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnswerTree:
    """The answers' distinct proper prefixes after the shared tokens (the inputs that still need a forward)."""

    tokens: list[int]  # each node's last token; a node's parent comes before it
    parents: list[int]  # index into `tokens`, -1 when the parent is the root (the last shared token)
    steps: list[list[tuple[int, int]]]  # per label: (node, token it predicts) for every answer token after `shared`

    @classmethod
    def of(cls, suffixes: list[list[int]]) -> AnswerTree:
        nodes: dict[tuple[int, ...], int] = {(): -1}
        tokens, parents, steps = [], [], []
        for suffix in suffixes:
            for depth in range(1, len(suffix)):  # the full answer (ending on the end token) is never an input
                prefix = tuple(suffix[:depth])
                if prefix not in nodes:
                    nodes[prefix] = len(tokens)
                    tokens.append(suffix[depth - 1])
                    parents.append(nodes[prefix[:-1]])
            steps.append([(nodes[tuple(suffix[:depth])], token) for depth, token in enumerate(suffix)])
        return cls(tokens, parents, steps)

    def depths(self) -> list[int]:
        """Each node's distance from the root: its position after the last shared token."""
        depths: list[int] = []
        for parent in self.parents:
            depths.append(1 if parent < 0 else depths[parent] + 1)
        return depths

    def ancestry(self) -> np.ndarray:
        """(nodes, nodes) bool: [i, j] when node j is node i or one of its ancestors."""
        seen = np.eye(len(self.tokens), dtype=bool)
        for node, parent in enumerate(self.parents):
            if parent >= 0:
                seen[node] |= seen[parent]
        return seen


@dataclass(frozen=True)
class AnswerSpace:
    labels: list
    shared: list[int]  # answer tokens common to every label (after the prompt)
    suffixes: list[list[int]]  # per label: the tokens after `shared`, EOS included
    tree: AnswerTree = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tree", AnswerTree.of(self.suffixes))


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


def _logsumexp(x: np.ndarray) -> np.ndarray:
    top = x.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(x - top).sum(axis=1, keepdims=True)))[:, 0]


@dataclass
class Scores:
    log_probs: np.ndarray  # (n, n_labels): log p(whole answer | prompt), shared prefix through end token
    loss: np.ndarray  # (n,): mean NLL per answer token of the true answer (as the SFT loss)

    def probabilities(self) -> np.ndarray:
        """Each label's whole-answer probability, normalised over the allowed labels (rows sum to 1)."""
        return np.exp(self.log_probs - _logsumexp(self.log_probs)[:, None])

    def valid_mass(self) -> np.ndarray:
        """(n,): the probability the model puts on the valid answers together, before normalising."""
        return np.exp(_logsumexp(self.log_probs))

    def class_nll(self, truth: np.ndarray) -> np.ndarray:
        """(n,): -log p(true label | the allowed labels); `truth` holds label indices."""
        return _logsumexp(self.log_probs) - self.log_probs[np.arange(len(truth)), truth]


def score(
    model, tokenizer, prompts: list[str], true_labels: list, space: AnswerSpace, batch_size: int = 16,
    progress: str | None = None,
) -> Scores:  # fmt: skip
    """Whole-answer log-probabilities of every label and the true answer's loss for each prompt, batched.

    `progress`: a progress bar with that title (without one, lines only once it takes seconds). Under torchrun/accelerate the batches are shared out between the ranks and gathered: every
    rank gets every score, each batch computed once.
    """
    device = next(model.parameters()).device
    label_index = {label: i for i, label in enumerate(space.labels)}
    encoded = tokenizer(prompts, add_special_tokens=True)["input_ids"]
    order = np.argsort([len(ids) for ids in encoded])  # similar lengths per batch: less padding
    batches = [order[start : start + batch_size] for start in range(0, len(prompts), batch_size)]
    scored = []
    with inference(model), _attention_taking_masks(model) as attention, _head_in_fp32(model):
        title = f"{progress or f'scoring {len(prompts)} prompts'}: batch"
        for index in progress_steps(shard(len(batches)), title, bar=progress is not None, announce=False):
            rows = batches[index]
            batch = _Batch([encoded[i] for i in rows], [label_index[true_labels[i]] for i in rows], attention)
            scored.append((rows, *_score_batch(model, batch, space, tokenizer.pad_token_id, device)))
    log_probs, loss = np.zeros((len(prompts), len(space.labels))), np.zeros(len(prompts))
    for rows, batch_log_probs, batch_loss in gather(scored):
        log_probs[rows], loss[rows] = batch_log_probs, batch_loss
    return Scores(log_probs=log_probs, loss=loss)


@contextmanager
def inference(model):
    """Eval mode (no LoRA dropout) without autograd for one scoring or decoding pass, then the model's mode
    as it was: a Trainer leaves its model in train mode, and scoring between epochs must not change that."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


HEAD_CHUNK_ROWS = 16_384  # vocabulary rows cast to fp32 at a time: a bf16 head is never copied whole


@contextmanager
def _head_in_fp32(model):
    """The LM head's logits in fp32, outside autocast: under bf16 autocast they would be rounded to bf16
    (~0.05 nats on a 7B head) before the log-softmax that scores the labels. The head is fp32 already
    on the 4-bit path (k-bit preparation upcasts it); a bf16 head is cast in chunks of rows."""
    import torch

    head = model.get_output_embeddings()
    own_forward = head.__dict__.get("forward")

    def forward(hidden):
        with torch.autocast(hidden.device.type, enabled=False):
            hidden, bias = hidden.float(), None if head.bias is None else head.bias.float()
            chunks = [torch.nn.functional.linear(hidden, rows.float()) for rows in head.weight.split(HEAD_CHUNK_ROWS)]
            logits = torch.cat(chunks, dim=-1)
            return logits if bias is None else logits + bias

    head.forward = forward
    try:
        yield
    finally:
        if own_forward is None:
            del head.forward
        else:
            head.forward = own_forward


@contextmanager
def _attention_taking_masks(model):
    """Switches to SDPA while scoring when the model's attention (FlashAttention) takes no custom 4D mask."""
    current = model.config._attn_implementation
    if current in ("sdpa", "eager"):
        yield current
        return
    model.set_attn_implementation("sdpa")
    try:
        yield "sdpa"
    finally:
        model.set_attn_implementation(current)


@dataclass(frozen=True)
class _Batch:
    prompt_ids: list[list[int]]
    truth: list[int]  # label indices
    attention: str  # the attention implementation the mask is for


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


def _score_batch(model, batch: _Batch, space: AnswerSpace, pad_id: int, device):
    """(log p(whole answer) per label, mean NLL per token of the true answer) for one batch, in one forward."""
    import torch

    tree, n_shared = space.tree, len(space.shared)
    n_keep = n_shared + 1 + len(tree.tokens)
    ids, pad_mask, positions = _left_pad([p + space.shared for p in batch.prompt_ids], pad_id, device)
    _check_window(model, ids.shape[1] + len(tree.tokens))
    tree_ids = torch.tensor(tree.tokens, dtype=torch.long, device=device).expand(ids.shape[0], -1)
    depths = torch.tensor(tree.depths(), dtype=torch.long, device=device)
    # the last n_shared + 1 prompt positions predict the shared tokens and the first label token;
    # each tree node's position predicts the token after it. Only those go through lm_head.
    out = model(
        input_ids=torch.cat([ids, tree_ids], dim=1),
        attention_mask=_tree_mask(pad_mask, tree, batch.attention, model.get_input_embeddings().weight.dtype),
        position_ids=torch.cat([positions, positions[:, -1:] + depths], dim=1),
        use_cache=False,
        logits_to_keep=n_keep,
    )
    step_log_probs = torch.log_softmax(out.logits[:, -n_keep:].float(), dim=-1)
    shared_ids = torch.tensor(space.shared, dtype=torch.long, device=device)
    shared_lp = step_log_probs[:, torch.arange(n_shared, device=device), shared_ids].sum(-1)  # (B,)
    where, token, valid = _step_index(tree, n_shared, device)
    label_lp = (step_log_probs[:, where, token] * valid).sum(-1)  # (B, n_labels)
    log_probs = shared_lp[:, None] + label_lp
    truth = torch.tensor(batch.truth, device=device)
    n_tokens = torch.tensor([n_shared + len(space.suffixes[t]) for t in batch.truth], device=device)
    loss = -log_probs.gather(1, truth[:, None]).squeeze(1) / n_tokens
    return log_probs.cpu().numpy(), loss.cpu().numpy()


def _step_index(tree: AnswerTree, n_shared: int, device):
    """(n_labels, longest) kept-logit position, token and validity of every label's answer tokens after `shared`."""
    import torch

    width = max(len(steps) for steps in tree.steps)
    where = torch.zeros((len(tree.steps), width), dtype=torch.long)
    token = torch.zeros((len(tree.steps), width), dtype=torch.long)
    for label, steps in enumerate(tree.steps):
        # kept logits: n_shared for the shared tokens, then the root (the last shared token), then the nodes
        where[label, : len(steps)] = torch.tensor([n_shared + 1 + node for node, _ in steps])
        token[label, : len(steps)] = torch.tensor([t for _, t in steps])
    valid = torch.arange(width)[None, :] < torch.tensor([len(steps) for steps in tree.steps])[:, None]
    return where.to(device), token.to(device), valid.to(device)


def _tree_mask(pad_mask, tree: AnswerTree, attention: str, dtype):
    """(B, 1, W + T, W + T) attention mask: causal over the left-padded prompt, and each of the T tree nodes
    sees the prompt, its ancestors and itself. Boolean for SDPA (True: attend); additive for eager attention."""
    import torch

    batch, width, n_nodes = pad_mask.shape[0], pad_mask.shape[1], len(tree.tokens)
    keys = pad_mask.bool()[:, None, :]  # (B, 1, W)
    size = width + n_nodes
    mask = torch.zeros((batch, size, size), dtype=torch.bool, device=pad_mask.device)
    mask[:, :width, :width] = torch.ones((width, width), dtype=torch.bool, device=pad_mask.device).tril() & keys
    mask[:, width:, :width] = keys
    mask[:, width:, width:] = torch.from_numpy(tree.ancestry()).to(pad_mask.device)
    mask |= torch.eye(size, dtype=torch.bool, device=pad_mask.device)  # a pad row sees itself: no empty row (NaN)
    if attention == "eager":
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    return mask[:, None]


def _check_window(model, width: int) -> None:
    """The tree mask is given to every layer: a sliding-window layer would see beyond its window."""
    window = getattr(model.config, "sliding_window", None)
    layer_types = getattr(model.config, "layer_types", None) or ["sliding_attention"]
    if window and width > window and any(kind != "full_attention" for kind in layer_types):
        raise FaultLLMError(
            f"prompts of {width} tokens exceed the model's sliding attention window ({window}): restricted "
            "scoring cannot mask them; shorten the prompts (prompt.decimals, fewer features) or use eval.mode=generate"
        )


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


def generate_answers(
    model, tokenizer, prompts: list[str], max_new_tokens: int = 5, batch_size: int = 1, progress: str | None = None
) -> list[str]:
    """Greedy decoding in eval mode (no LoRA dropout), left padded; the study used batch 1 and 5 new tokens.
    Under torchrun/accelerate the batches are shared out between the ranks and gathered, as in `score`: every
    rank gets every answer. `progress` as for `score`."""
    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    starts = range(0, len(prompts), batch_size)
    decoded = []  # (first row, the batch's answers)
    title = f"{progress or f'generating for {len(prompts)} prompts'}: batch"
    with inference(model):
        for index in progress_steps(shard(len(starts)), title, bar=progress is not None, announce=False):
            start = starts[index]
            batch = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True).to(device)
            out = model.generate(
                **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,  # the answer's end: the template's end of turn, not the base's EOS
            )  # fmt: skip
            answers = out[:, batch["input_ids"].shape[1] :]
            decoded.append((start, tokenizer.batch_decode(answers, skip_special_tokens=True)))
    return [text for _, texts in sorted(gather(decoded)) for text in texts]


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
        spec = ModelSpec.from_config(cfg.model, cfg.lora, cfg.cache_dir, cfg.prompt)
        adapter = "" if run.untrained else f" with the adapter of {run.run_dir}"
        log.info(f"loading {Path(spec.path).name} on {spec.plan.device} ({spec.plan.quantization} quantization){adapter}")
        if run.untrained:  # the tokenizer as the run prepared it: the same config
            model, tokenizer = load_untrained(spec)
        else:
            model, tokenizer = load_trained(run.run_dir / "adapter", spec.path, spec.plan)
        features, labels = run.prompt_features(), run.split.labels
        serializer = Serializer.from_config(
            cfg.prompt, cfg.data.system_prompt, features, labels, tokenizer, cfg.seed, run.split.train
        )
        return cls(model, tokenizer, serializer)


def evaluate_restricted(
    model, tokenizer, prompts: Prompts, space: AnswerSpace, batch_size: int, progress: str | None = None
):  # fmt: skip
    """(metrics, predictions with per-label probabilities) by restricted scoring.

    Besides the classification metrics: `loss`, the true answer's mean NLL per token (the SFT loss);
    `class_loss`, the mean -log p(true label | allowed labels); `valid_mass`, the mean probability the
    model puts on the valid answers together (1 when it never answers anything else)."""
    scores = score(model, tokenizer, prompts.texts, prompts.truth, space, batch_size, progress)
    probabilities = scores.probabilities()
    predicted = [space.labels[i] for i in probabilities.argmax(axis=1)]
    predictions = _predictions(prompts, predicted)
    for i, label in enumerate(space.labels):
        predictions[f"prob_{label}"] = probabilities[:, i]
    predictions["loss"] = scores.loss
    truth = np.array([space.labels.index(label) for label in prompts.truth], dtype=int)
    losses = {
        "loss": float(scores.loss.mean()),
        "class_loss": float(scores.class_nll(truth).mean()),
        "valid_mass": float(scores.valid_mass().mean()),
    }
    return classification_metrics(prompts.truth, predicted, space.labels) | losses, predictions


def evaluate_generated(
    model, tokenizer, prompts: Prompts, labels: list, max_new_tokens: int, batch_size: int, progress: str | None = None
):  # fmt: skip
    """The study's protocol: greedy decoding, parse `Y = k`; an unparseable answer counts as wrong."""
    texts = generate_answers(model, tokenizer, prompts.texts, max_new_tokens, batch_size, progress)
    predicted = [parse_answer(text, labels) for text in texts]
    predictions = _predictions(prompts, predicted)
    predictions["output"] = texts
    invalid = sum(p is None for p in predicted)
    return classification_metrics(prompts.truth, predicted, labels) | {"invalid_outputs": invalid}, predictions


def evaluate_prompts(
    model, tokenizer, prompts: Prompts, space: AnswerSpace, eval_cfg: EvalConfig, progress: str | None = None
) -> tuple[dict, pd.DataFrame]:
    """Metrics and a predictions table for one split, by `eval.mode` (restricted or generate); `progress`: the
    bar's title (`score`)."""
    if eval_cfg.mode == "generate":
        return evaluate_generated(
            model, tokenizer, prompts, space.labels, eval_cfg.max_new_tokens, eval_cfg.generate_batch_size, progress
        )
    return evaluate_restricted(model, tokenizer, prompts, space, eval_cfg.batch_size, progress)


def _predictions(prompts: Prompts, predicted: list) -> pd.DataFrame:
    return pd.DataFrame({"row": np.arange(len(prompts.truth)), "label": prompts.truth, "predicted": predicted})
