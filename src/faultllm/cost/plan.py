"""`faultllm plan`: what a train or hpo run will cost, from its config, the model's tokenizer and config.json.

Every row the run would see is rendered and tokenized exactly as `train`/`hpo` do (`cost.cases`), so token
counts are exact; the work of each configuration follows the run's protocol (`cost.protocol`), FLOPs the
formulas of `faultllm.cost.flops` (4 N_base + 6 N_lora per trained token, 2 N per scored one), time a rate
(`cost.work`): the GPU's peak dense FLOP/s x `plan.mfu`, or the rates a `faultllm bench` run measured
(`plan.throughput_from`). Here the work is tallied and written as a `PlanRecord` (plan.json).
HPO's worst case: every trial at the costliest combination of the space's choices with every numeric
parameter at its high end, nothing pruned; its expected case: the choices equally likely, numeric
parameters at their prior mean, the share of the fold-epochs hpo.schedule trains (`schedule_share`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from faultllm.config.jobs import PlanJob
from faultllm.cost.cases import Case, Inputs, Rendered, gather_inputs, make_case, memory_estimate, space_values
from faultllm.cost.protocol import STUDY_NEW_TOKENS, RunWork, mean_run, ours, refit_run, studys, train_run, trial
from faultllm.cost.records import (
    Bounds,
    FoldRows,
    Hours,
    PlannedCase,
    PlannedData,
    PlannedModel,
    PlanRecord,
    Rows,
    ScoringBounds,
    StudyWork,
    Throughput,
    TokenStats,
)
from faultllm.cost.work import Rates, Work, mean_work
from faultllm.search.schedules import FOLD_NOISE, SPREAD, simulated_share
from faultllm.search.studies import make_pruner, schedule_pruner

SIMULATED_SEARCHES = 10

# ---------------------------------------------------------------- tallying the work


@dataclass(frozen=True)
class Tally:
    """A run's work split the way the plan reports it."""

    search: Work  # HPO's trials (nothing for train)
    run: RunWork  # train's run, or HPO's refit
    loads_per_worker: float = 0.0  # HPO with hpo.reuse_model: one base-model load per worker

    def total(self, workers: int = 1) -> Work:
        return self.search + self.run.total + Work(model_loads=self.loads_per_worker * workers)

    def hours(self, rates: Rates, workers: int) -> tuple[float, float]:
        """(GPU-hours, wall-clock hours) with `workers` processes sharing the trials, one GPU each."""
        search, run = rates.seconds(self.search), rates.seconds(self.run.total)
        load = rates.seconds(Work(model_loads=self.loads_per_worker))
        return (search + run + load * workers) / 3600, (search / workers + run + load) / 3600


@dataclass(frozen=True)
class Tallies:
    worst: Tally
    expected: Tally
    study: Tally  # the study's way, over the expected cases
    own: Case  # the job's own config
    worst_case: Case  # the costliest trial configuration (train: the job's own)
    cases: list[Case] = field(default_factory=list)  # HPO's expected cases


def plan_train(inputs: Inputs) -> Tallies:
    own = make_case(inputs, {})
    run = Tally(Work(), train_run(own, ours(inputs.cfg)))
    return Tallies(run, run, Tally(Work(), train_run(own, studys(inputs))), own, own)


def plan_hpo(inputs: Inputs) -> Tallies:
    """Worst: the costliest combination, every trial whole. Expected: the combinations' mean, times the share
    of the fold-epochs hpo.schedule trains (`schedule_share`). The study: the expected combinations, unpruned."""
    cfg, rates = inputs.cfg, inputs.rates
    worst_values, expected_values = space_values(cfg.hpo.space)
    worst = max(
        (make_case(inputs, values) for values in worst_values), key=lambda c: rates.seconds(trial(c, ours(cfg)))
    )
    cases = [make_case(inputs, values) for values in expected_values]
    kept, assumption = schedule_share(cfg)
    inputs.notes.append(assumption)
    n = cfg.hpo.n_trials
    reuse = 1.0 if cfg.hpo.reuse_model else 0.0
    return Tallies(
        worst=Tally(trial(worst, ours(cfg)).times(n), refit_run(worst, ours(cfg)), reuse),
        expected=Tally(
            mean_work([trial(case, ours(cfg)) for case in cases]).times(n * kept),
            mean_run([refit_run(case, ours(cfg)) for case in cases]),
            reuse,
        ),
        study=Tally(
            mean_work([trial(case, studys(inputs)) for case in cases]).times(n),
            mean_run([refit_run(case, studys(inputs)) for case in cases]),
        ),
        own=make_case(inputs, {}),
        worst_case=worst,
        cases=cases,
    )


def schedule_share(cfg: PlanJob) -> tuple[float, str]:
    """(the expected share of full's fold-epochs trained under hpo.schedule, the assumption behind it)."""
    hpo, epochs = cfg.hpo, cfg.trainer.epochs
    if hpo.schedule == "full":
        if hpo.pruner == "none":
            return 1.0, "hpo.schedule=full, hpo.pruner=none: every fold-epoch of every trial (the study's protocol)"
        pruned = cfg.plan.expected_pruned
        return 1.0 - pruned, (
            f"hpo.schedule=full: hpo.pruner={hpo.pruner} saves {pruned:.0%} of the fold-epochs (plan.expected_pruned)"
        )
    pruner = (lambda: schedule_pruner(hpo, epochs)) if hpo.schedule == "asha" else (lambda: make_pruner("none"))
    shares = [simulated_share(hpo, epochs, pruner(), seed) for seed in range(SIMULATED_SEARCHES)]
    unsaved = (
        " (hpo.pruner's savings within folds not counted)" if hpo.schedule == "race" and hpo.pruner != "none" else ""
    )
    return float(np.mean(shares)), (
        f"hpo.schedule={hpo.schedule}: expected {np.mean(shares):.0%} of full's fold-epochs{unsaved}: the mean of "
        f"{SIMULATED_SEARCHES} simulated searches of {hpo.n_trials} exchangeable trials (range {min(shares):.0%}-"
        f"{max(shares):.0%}; trials' objective spread {SPREAD:.0%}, fold noise {FOLD_NOISE:.0%}); worst case: "
        f"no trial stopped early"
    )  # fmt: skip


# ---------------------------------------------------------------- plan.json


def make_plan(cfg: PlanJob) -> PlanRecord:
    """Rows, tokens, FLOPs, memory and hours of `cfg.job` run as `cfg` says, and the study's way."""
    inputs = gather_inputs(cfg)
    tallies = plan_train(inputs) if cfg.job == "train" else plan_hpo(inputs)
    workers = cfg.hpo.workers if cfg.job == "hpo" else 1
    own, worst_case = tallies.own.rendered, tallies.worst_case
    worst, expected = tallies.worst.total(), tallies.expected.total()
    hours = hours_of(tallies, inputs.rates, workers)
    study = study_work(tallies.study, inputs)
    bounds = lambda key: Bounds(getattr(worst, key), getattr(expected, key))  # noqa: E731
    return PlanRecord(
        job=cfg.job,
        model=PlannedModel(path=str(cfg.model.path or "tiny"), **inputs.sources, parameters=inputs.shape.n_params,
                           n_base=inputs.shape.n_base, n_lora=tallies.own.sizes.n_lora, context=inputs.shape.context),
        data=PlannedData(display_name=cfg.data.display_name, **inputs.data),
        rows=rows_of(own),
        prompt_format=cfg.prompt.format,
        prompt_tokens=stats(np.concatenate([own.train.prompt, own.test.prompt])),
        completion_tokens=stats(np.concatenate([own.train.completion, own.test.completion])),
        train_tokens=bounds("train_tokens"),
        scoring_tokens=ScoringBounds(worst.scoring_tokens, expected.scoring_tokens, scoring_parts(tallies.expected, cfg.job)),
        generated_tokens=bounds("generated_tokens"),
        model_loads=bounds("model_loads"),
        flops=bounds("flops"),
        memory_gib=memory_estimate(worst_case.cfg, inputs.gpu, inputs.shape, worst_case.rendered.train),
        throughput=throughput_of(cfg, inputs.rates),
        hours=hours,
        study=study,
        study_ratio=study.gpu_hours / hours[0].gpu_hours.expected,
        cases=cases_of(tallies),
        notes=inputs.notes,
    )  # fmt: skip


def stats(values: np.ndarray) -> TokenStats:
    return TokenStats(min=int(values.min()), mean=float(values.mean()), max=int(values.max()))


def rows_of(rendered: Rendered) -> Rows:
    folds = [FoldRows(len(train.prompt), len(val.prompt)) for train, val in rendered.folds]
    return Rows(train=len(rendered.train.prompt), test=len(rendered.test.prompt), folds=folds)


def throughput_of(cfg: PlanJob, rates: Rates) -> Throughput:
    return Throughput(source=rates.source, gpu=cfg.plan.gpu, train_tflops_per_s=rates.train_flops_per_s / 1e12,
                      scoring_tflops_per_s=rates.scoring_flops_per_s / 1e12,
                      decode_step_seconds=rates.decode_step_seconds, load_seconds=rates.load_seconds)  # fmt: skip


def study_work(tally: Tally, inputs: Inputs) -> StudyWork:
    work = tally.total()
    return StudyWork(
        train_tokens=work.train_tokens, scoring_tokens=work.scoring_tokens, generated_tokens=work.generated_tokens,
        model_loads=work.model_loads, flops=work.flops, gpu_hours=tally.hours(inputs.rates, 1)[0],
        pad_to=studys(inputs).pad_to, new_tokens=STUDY_NEW_TOKENS,
    )  # fmt: skip


def cases_of(tallies: Tallies) -> list[PlannedCase]:
    """The trial configurations the HPO plan averages (expected) or maximizes (worst) over."""
    cases = [("worst", tallies.worst_case)] + [("expected", case) for case in tallies.cases]
    return [
        PlannedCase(case=kind, values=case.values, n_lora=case.sizes.n_lora, gradient_checkpointing=case.sizes.checkpointing,
                    prompt_tokens_mean=float(np.concatenate([case.rendered.train.prompt, case.rendered.test.prompt]).mean()))
        for kind, case in cases
        if case.values
    ]  # fmt: skip


def hours_of(tallies: Tallies, rates: Rates, workers: int) -> list[Hours]:
    """GPU-hours and wall-clock hours, worst and expected, for 1 worker and for hpo.workers."""
    found = []
    for n in sorted({1, workers}):
        (worst_gpu, worst_wall), (expected_gpu, expected_wall) = (
            tallies.worst.hours(rates, n), tallies.expected.hours(rates, n))  # fmt: skip
        found.append(
            Hours(workers=n, gpu_hours=Bounds(worst_gpu, expected_gpu), wall_hours=Bounds(worst_wall, expected_wall))
        )
    return found


def scoring_parts(tally: Tally, job: str) -> dict[str, float]:
    """Where the (expected) scored tokens go: per-epoch scoring of the folds, of the run, its final scoring."""
    run = "refit" if job == "hpo" else "train"
    parts = {f"{run}_epochs": tally.run.fit.scoring_tokens, f"{run}_final": tally.run.final.scoring_tokens}
    return ({"fold_epochs": tally.search.scoring_tokens} if job == "hpo" else {}) | parts
