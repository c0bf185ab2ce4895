"""The work of a protocol: how a run turns a configuration's rows into work, faultllm's way or the study's.

- training: every real token of every training row, each epoch, each fold, each trial (no padding
  with batch 1; rows of a larger batch pad to the longest of their batch, which is not counted);
- scoring: after every epoch the training and test rows (train, refit) by restricted scoring; an HPO fold
  scores its validation rows after every epoch and its training rows after its last one; at the end of
  train and of the refit, train and test rows by `eval.mode`;
- model loads: one per run; HPO with hpo.reuse_model one per worker (without it one per fold) + the refit's.
The study's way: every training sequence padded to the model's context (`plan.study_pad_to`), every
evaluated row decoded greedily at batch 1 for 5 tokens (an HPO fold's training rows after every epoch too),
no pruning, a model load per fold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from faultllm.config.jobs import PlanJob
from faultllm.cost.cases import Case, Inputs, Sizes
from faultllm.cost.flops import hardware_flops_per_token, model_flops_per_token, scoring_flops_per_token
from faultllm.cost.tokens import RowTokens
from faultllm.cost.work import Work, mean_work

STUDY_NEW_TOKENS = 5  # the study decoded 5 tokens per evaluated row, one row at a time


@dataclass(frozen=True)
class Protocol:
    """How a run turns rows into work: faultllm's way, or the study's."""

    pad_to: int | None = None  # every training sequence padded to this length (the study); None: real tokens
    decode: tuple[int, int] | None = None  # every evaluation decodes (new tokens, batch) (the study)
    load_per_fold: bool = False
    fold_train_each_epoch: bool = False  # an HPO fold scores its training rows after every epoch (the study)


def ours(cfg: PlanJob) -> Protocol:
    return Protocol(load_per_fold=not cfg.hpo.reuse_model)


def studys(inputs: Inputs) -> Protocol:
    return Protocol(pad_to=inputs.cfg.plan.study_pad_to or inputs.shape.context, decode=(STUDY_NEW_TOKENS, 1),
                    load_per_fold=True, fold_train_each_epoch=True)  # fmt: skip


def training(rows: RowTokens, epochs: int, sizes: Sizes, protocol: Protocol) -> Work:
    per_row = np.full(len(rows.prompt), protocol.pad_to) if protocol.pad_to else rows.trained
    tokens = float(per_row.sum()) * epochs
    return Work(
        train_tokens=tokens,
        train_flops=tokens * model_flops_per_token(sizes.n_base, sizes.n_lora),
        train_hardware_flops=tokens * hardware_flops_per_token(sizes.n_base, sizes.n_lora, sizes.checkpointing),
    )


def evaluation(rows: RowTokens, sizes: Sizes, decode: tuple[int, int] | None) -> Work:
    """One pass over `rows`: restricted scoring (decode None), or greedy decoding of (new tokens, batch)."""
    per_token = scoring_flops_per_token(sizes.n_base, sizes.n_lora)
    if decode is None:
        tokens = float(rows.scored.sum())
        return Work(scoring_tokens=tokens, scoring_flops=tokens * per_token)
    new_tokens, batch = decode
    prompts, generated = float(rows.prompt.sum()), float(len(rows.prompt) * new_tokens)
    return Work(
        scoring_tokens=prompts,
        generated_tokens=generated,
        decode_steps=math.ceil(len(rows.prompt) / batch) * new_tokens,
        scoring_flops=prompts * per_token,
        decode_flops=generated * per_token,
    )


def fit(
    train: RowTokens, evals: list[RowTokens], epochs: int, each_epoch: bool, sizes: Sizes, protocol: Protocol
) -> Work:
    """`training.fit`: epochs over `train`, and (trainer.eval_each_epoch) every eval set scored after each epoch."""
    work = training(train, epochs, sizes, protocol)
    for rows in evals if each_epoch else []:
        work = work + evaluation(rows, sizes, protocol.decode).times(epochs)
    return work


@dataclass(frozen=True)
class RunWork:
    """`faultllm train`'s work (and HPO's refit): training with per-epoch scoring and a load, then the final scoring."""

    fit: Work
    final: Work

    @property
    def total(self) -> Work:
        return self.fit + self.final


def mean_run(runs: list[RunWork]) -> RunWork:
    return RunWork(mean_work([run.fit for run in runs]), mean_work([run.final for run in runs]))


def final_decode(cfg: PlanJob) -> tuple[int, int] | None:
    return (cfg.eval.max_new_tokens, cfg.eval.generate_batch_size) if cfg.eval.mode == "generate" else None


def train_run(case: Case, protocol: Protocol) -> RunWork:
    """One load, fit on train scoring train and test after every epoch, then train and test by `eval.mode`."""
    cfg, sets = case.cfg, case.rendered
    work = fit(
        sets.train, [sets.train, sets.test], cfg.trainer.epochs, cfg.trainer.eval_each_epoch, case.sizes, protocol
    )
    decode = protocol.decode or final_decode(cfg)
    final = evaluation(sets.train, case.sizes, decode) + evaluation(sets.test, case.sizes, decode)
    return RunWork(work + Work(model_loads=1), final)


def refit_run(case: Case, protocol: Protocol) -> RunWork:
    return train_run(case, protocol) if case.cfg.hpo.refit else RunWork(Work(), Work())


def trial(case: Case, protocol: Protocol) -> Work:
    """One HPO trial: every fold fitted on its training part, scoring its validation part each epoch and its
    training part after the last epoch (each epoch under the study's protocol)."""
    cfg = case.cfg
    work = Work(model_loads=len(case.rendered.folds) if protocol.load_per_fold else 0)
    for fold_train, fold_val in case.rendered.folds:
        each_epoch = [fold_train, fold_val] if protocol.fold_train_each_epoch else [fold_val]
        work = work + fit(fold_train, each_epoch, cfg.trainer.epochs, cfg.trainer.eval_each_epoch, case.sizes, protocol)
        if cfg.trainer.eval_each_epoch and not protocol.fold_train_each_epoch:
            work = work + evaluation(fold_train, case.sizes, protocol.decode)
    return work
