"""`faultllm plan`: what a train or hpo run will cost, from its config, the model's tokenizer and config.json.

Every row the run would see is rendered and tokenized exactly as `train`/`hpo` do (the same split,
folds, per-fold scaling, prompt template), so token counts are exact; FLOPs follow by the formulas of
`faultllm.cost.flops` (4 N_base + 6 N_lora per trained token, 2 N per scored one), time by a rate: the GPU's
peak dense FLOP/s x `plan.mfu`, or the rates a `faultllm bench` run measured (`plan.throughput_from`).

The work of a run, as faultllm does it:
- training: every real token of every training row, each epoch, each fold, each trial (no padding
  with batch 1; rows of a larger batch pad to the longest of their batch, which is not counted);
- scoring: after every epoch the training rows and the validation (HPO fold) or test rows (train, refit)
  by restricted scoring; at the end of train and of the refit, train and test rows by `eval.mode`;
- model loads: one per run; HPO with hpo.reuse_model one per worker (without it one per fold) + the refit's.
HPO's worst case: every trial at the costliest combination of the space's choices with every numeric
parameter at its high end, nothing pruned; its expected case: the choices equally likely, numeric
parameters at their prior mean, the share of the fold-epochs hpo.schedule trains (`schedule_share`).
The study's way: every training sequence padded to the model's context (`plan.study_pad_to`), every
evaluated row decoded greedily at batch 1 for 5 tokens, no pruning, a model load per fold.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import astuple, dataclass, field
from pathlib import Path

import numpy as np

from faultllm.config.load import with_values
from faultllm.config.schema import PlanJob, SearchParam
from faultllm.cost.flops import GPUS, GpuSpec, hardware_flops_per_token, model_flops_per_token, scoring_flops_per_token
from faultllm.cost.tokens import RowTokens, row_tokens
from faultllm.data.splits import Split, cv_folds, fold_splits, make_split, scale_split
from faultllm.data.standins import stand_in_data
from faultllm.llm.memory import GIB, Step, needs_checkpointing, step_memory
from faultllm.llm.modeling import Gpu, check_tokenizer, hardware_plan, load_tokenizer, model_files
from faultllm.llm.scoring import answer_space
from faultllm.llm.shape import ModelShape, model_shape
from faultllm.llm.tiny import SHIPPED
from faultllm.prompts.serialize import Serializer
from faultllm.run.directory import read_json
from faultllm.runtime.errors import FaultLLMError
from faultllm.search.hpo import search_features
from faultllm.search.schedules import FOLD_NOISE, SPREAD, simulated_share
from faultllm.search.studies import make_pruner, schedule_pruner

STUDY_NEW_TOKENS = 5  # the study decoded 5 tokens per evaluated row, one row at a time


# ---------------------------------------------------------------- work and the rate it is done at


@dataclass(frozen=True)
class Work:
    """Amounts of work that add up: tokens through training and scoring, decoding steps, model loads, FLOPs."""

    train_tokens: float = 0.0
    scoring_tokens: float = 0.0  # forward-only tokens (prompts of decoded rows included)
    generated_tokens: float = 0.0
    decode_steps: float = 0.0  # sequential decoding steps (one token for every row of a batch)
    model_loads: float = 0.0
    train_flops: float = 0.0  # model FLOPs: 4 N_base + 6 N_lora per token
    train_hardware_flops: float = 0.0  # + the recomputed forward under gradient checkpointing
    scoring_flops: float = 0.0  # 2 N per scored token
    decode_flops: float = 0.0  # 2 N per generated token

    def __add__(self, other: Work) -> Work:
        return Work(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))

    def times(self, k: float) -> Work:
        return Work(*(a * k for a in astuple(self)))

    @property
    def flops(self) -> float:
        return self.train_flops + self.scoring_flops + self.decode_flops


@dataclass(frozen=True)
class Rates:
    """How fast work is done on the planned GPU."""

    train_flops_per_s: float  # hardware FLOPs per second while training
    scoring_flops_per_s: float
    decode_step_seconds: float
    load_seconds: float
    source: str

    def seconds(self, work: Work) -> float:
        return (
            work.train_hardware_flops / self.train_flops_per_s
            + work.scoring_flops / self.scoring_flops_per_s
            + work.decode_steps * self.decode_step_seconds
            + work.model_loads * self.load_seconds
        )


def assumed_rates(gpu: GpuSpec, mfu: float, shape: ModelShape, quantized: bool, load_seconds: float | None) -> Rates:
    """peak x mfu for training and scoring; a decoding step at batch 1 reads every weight once, so it takes at
    least the weights' bytes over the memory bandwidth (a lower bound: bitsandbytes' 4-bit decoding is slower)."""
    flops = gpu.peak_tflops * 1e12 * mfu
    weight_bytes = shape.n_base * (0.55 if quantized else 2.0)
    decode = max(scoring_flops_per_token(shape.n_base, 0) / flops, weight_bytes / (gpu.bandwidth_tb_s * 1e12))
    load = default_load_seconds(shape) if load_seconds is None else load_seconds
    return Rates(flops, flops, decode, load, f"{gpu.device_name}: {gpu.peak_tflops:g} TFLOP/s peak x MFU {mfu:g}")


def default_load_seconds(shape: ModelShape) -> float:
    """Reading a 16-bit checkpoint (2 bytes per parameter) and quantizing it at 1 GB/s."""
    return shape.n_params * 2.0 / 1e9


def measured_rates(path: str, shape: ModelShape, load_seconds: float | None) -> tuple[Rates, dict]:
    """The FLOP/s a `faultllm bench` run achieved (its tokens/s x its FLOPs per token), and its decoding and
    load times scaled by model size when it measured another model."""
    file = Path(path).expanduser()
    file = file / "bench.json" if file.is_dir() else file
    if not file.exists():
        raise FaultLLMError(f"plan.throughput_from={path}: no bench.json there; run `faultllm bench ...` first")
    record = read_json(file)
    scale = shape.n_base / record["n_base"]
    rates = Rates(
        train_flops_per_s=record["tokens_per_second"] * record["hardware_flops_per_token"],
        scoring_flops_per_s=record["scoring_tokens_per_second"] * record["scoring_flops_per_token"],
        decode_step_seconds=record["decode_step_seconds"] * scale,
        load_seconds=record["load_seconds"] * scale if load_seconds is None else load_seconds,
        source=f"measured by faultllm bench ({file}) on {record['device']} with {record['model']}",
    )
    return rates, record


# ---------------------------------------------------------------- the rows a run sees, tokenized


@dataclass(frozen=True)
class Rendered:
    """One configuration's rows as the run renders them: the training split (train/test) and each fold."""

    train: RowTokens
    test: RowTokens
    folds: list[tuple[RowTokens, RowTokens]] = field(default_factory=list)  # (fold train, fold validation)


def tokens_of(serializer: Serializer, tokenizer, frame, own_rows: bool = False) -> RowTokens:
    prompts = serializer.render(frame, own_rows=own_rows)
    return row_tokens(tokenizer, prompts, answer_space(tokenizer, prompts))


def _rendered(serializer: Serializer, tokenizer, train, test) -> tuple[RowTokens, RowTokens]:
    """Training and held-out rows, with in-context examples (prompt.shots) drawn from the training rows."""
    serializer = serializer.shots_from(train)
    return tokens_of(serializer, tokenizer, train, own_rows=True), tokens_of(serializer, tokenizer, test)


def render_split(cfg: PlanJob, split: Split, raw: Split, features: list[str], tokenizer, folds: list) -> Rendered:
    """`split` (scaled as the run scales it) and, for folds, `raw`'s folds scaled per fold as HPO does."""
    serializer = Serializer.from_config(cfg.prompt, cfg.data.system_prompt, features, split.labels, tokenizer, cfg.seed)
    fold_sets = [
        _rendered(serializer, tokenizer, fold.train, fold.test)
        for fold in fold_splits(raw, folds, cfg.data.normalize, cfg.data.scale_range)
    ]
    return Rendered(*_rendered(serializer, tokenizer, split.train, split.test), fold_sets)


# ---------------------------------------------------------------- the work of a protocol


@dataclass(frozen=True)
class Protocol:
    """How a run turns rows into work: faultllm's way, or the study's."""

    pad_to: int | None = None  # every training sequence padded to this length (the study); None: real tokens
    decode: tuple[int, int] | None = None  # every evaluation decodes (new tokens, batch) (the study)
    load_per_fold: bool = False


@dataclass(frozen=True)
class Sizes:
    """The model's parameters in a case: the frozen base and the LoRA adapters of the case's rank."""

    n_base: float
    n_lora: float
    checkpointing: bool


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


def fit(train: RowTokens, evals: list[RowTokens], epochs: int, each_epoch: bool, sizes: Sizes, protocol: Protocol) -> Work:
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


def train_run(case: Case, protocol: Protocol) -> RunWork:
    """One load, fit on train scoring train and test after every epoch, then train and test by `eval.mode`."""
    cfg, sets = case.cfg, case.rendered
    work = fit(sets.train, [sets.train, sets.test], cfg.trainer.epochs, cfg.trainer.eval_each_epoch, case.sizes, protocol)
    decode = protocol.decode or final_decode(cfg)
    final = evaluation(sets.train, case.sizes, decode) + evaluation(sets.test, case.sizes, decode)
    return RunWork(work + Work(model_loads=1), final)


def refit_run(case: Case, protocol: Protocol) -> RunWork:
    return train_run(case, protocol) if case.cfg.hpo.refit else RunWork(Work(), Work())


def final_decode(cfg: PlanJob) -> tuple[int, int] | None:
    return (cfg.eval.max_new_tokens, cfg.eval.generate_batch_size) if cfg.eval.mode == "generate" else None


def trial(case: Case, protocol: Protocol) -> Work:
    """One HPO trial: every fold fitted on its training part, scoring it and its validation part each epoch."""
    cfg = case.cfg
    work = Work(model_loads=len(case.rendered.folds) if protocol.load_per_fold else 0)
    for fold_train, fold_val in case.rendered.folds:
        work = work + fit(fold_train, [fold_train, fold_val], cfg.trainer.epochs, cfg.trainer.eval_each_epoch, case.sizes, protocol)
    return work


# ---------------------------------------------------------------- trial configurations of a search space


@dataclass(frozen=True)
class Case:
    """A configuration a run may take (the job's own, or an HPO trial's), its rendered rows and its model sizes."""

    values: dict  # the trial's parameters (config key -> value); {} for the job's own config
    cfg: PlanJob
    rendered: Rendered
    sizes: Sizes


def prior_mean(spec: SearchParam) -> float:
    """The mean of a numeric parameter under the sampler's prior: uniform, or log-uniform with `log`."""
    low, high = float(spec.low), float(spec.high)
    value = (high - low) / math.log(high / low) if spec.log else (low + high) / 2
    return round(value) if spec.type == "int" else value


def space_values(space: dict[str, SearchParam]) -> tuple[list[dict], list[dict]]:
    """(worst, expected) trial values, one per combination of the categorical choices: numeric parameters at
    their high end (worst) or at their prior mean (expected)."""
    choices = {spec.key: spec.choices for spec in space.values() if spec.type == "categorical"}
    numeric = [spec for spec in space.values() if spec.type != "categorical"]
    high = {spec.key: int(spec.high) if spec.type == "int" else float(spec.high) for spec in numeric}
    mean = {spec.key: prior_mean(spec) for spec in numeric}
    combos = [dict(zip(choices, combo, strict=True)) for combo in itertools.product(*choices.values())]
    return [combo | high for combo in combos], [combo | mean for combo in combos]


def rendering_key(values: dict) -> tuple:
    """The values that change the prompts (prompt.*, data.*): cases sharing them share their rendering."""
    return tuple(sorted((k, str(v)) for k, v in values.items() if k.startswith(("prompt.", "data."))))


# ---------------------------------------------------------------- memory on the planned GPU


def memory(cfg: PlanJob, gpu: GpuSpec, shape: ModelShape, train: RowTokens) -> dict:
    """`memory.step_memory` for a batch of the longest training rows, term by term, and whether checkpointing
    would be on: decided by `memory.needs_checkpointing` as `faultllm train` decides it on that GPU."""
    plan = hardware_plan(cfg.model, Gpu(gpu.device_name, gpu.memory_gib, gpu.bf16), flash_attn_available=True)
    shape = shape.with_lora(cfg.lora)
    step = Step.of(plan, cfg.trainer.batch_size, int(train.prompt.max()), int(train.completion.max()))
    checkpointing = needs_checkpointing(plan, shape, step)
    need = {on: step_memory(shape, step, plan, checkpointing=on) for on in (False, True)}
    return {
        "estimate_gib": need[checkpointing].total / GIB,
        "without_checkpointing_gib": need[False].total / GIB,
        "with_checkpointing_gib": need[True].total / GIB,
        "terms_gib": need[checkpointing].gib(),
        "lora_gib": need[checkpointing].lora / GIB,
        "gpu_memory_gib": gpu.memory_gib,
        "gradient_checkpointing": checkpointing,
        "fits": need[checkpointing].total / GIB <= gpu.memory_gib,
        "quantization": plan.quantization,
        "tokens_per_step": step.tokens,
        "head_tokens_per_step": step.head_tokens,
    }


# ---------------------------------------------------------------- the plan


@dataclass
class Inputs:
    """What a plan is computed from: the model's shape and tokenizer, the split and folds, the rates."""

    cfg: PlanJob
    shape: ModelShape
    tokenizer: object
    raw: Split  # unscaled, as make_split gives it
    folds: list  # cv_folds positions (HPO), else []
    features: list[str]  # in prompt order
    gpu: GpuSpec
    rates: Rates
    sources: dict  # where config.json and the tokenizer came from
    data: dict  # where the rows came from (stand-in data without data.path)
    notes: list[str]
    renderings: dict = field(default_factory=dict)  # rendering_key -> Rendered


def open_tokenizer(cfg: PlanJob) -> tuple[object, str, bool]:
    """(tokenizer, where it came from, stand-in?): plan.tokenizer, else the model's own."""
    chat, template_file = cfg.prompt.template == "chat", cfg.prompt.chat_template
    if cfg.plan.tokenizer:
        source = str(SHIPPED) if cfg.plan.tokenizer == "tiny" else cfg.plan.tokenizer
        return load_tokenizer(source, "left", chat, template_file), cfg.plan.tokenizer, True
    files = model_files(cfg.model, cfg.cache_dir)
    hint = "; or plan.tokenizer=tiny to count with the tiny model's Llama-2-like tokenizer (an estimate)"
    try:
        check_tokenizer(files)
        return load_tokenizer(files.tokenizer, "left", chat, template_file), files.tokenizer, False
    except FaultLLMError as err:
        raise FaultLLMError(f"plan: no tokenizer: {err}{hint}") from err


def gather_inputs(cfg: PlanJob) -> Inputs:
    """Everything but the weights: config.json, the tokenizer, the split (stand-in data without data.path)."""
    files = model_files(cfg.model, cfg.cache_dir)
    tokenizer, tokenizer_source, stand_in = open_tokenizer(cfg)
    shape = model_shape(files.config_dir)
    data_cfg, data_note = stand_in_data(cfg.data, cfg.cache_dir)
    raw = make_split(data_cfg, cfg.seed)
    folds = cv_folds(raw.train, cfg.hpo.folds, cfg.seed) if cfg.job == "hpo" else []
    features = search_features(cfg, raw)  # the order train (prompt_features) and hpo write features in
    gpu = GPUS[cfg.plan.gpu]
    quantized = cfg.model.quantization in ("auto", "nf4")
    notes = [note for note in (data_note,) if note]
    if cfg.plan.throughput_from:
        rates, record = measured_rates(cfg.plan.throughput_from, shape, cfg.plan.load_seconds)
        if abs(record["n_base"] - shape.n_base) > 0.01 * shape.n_base:
            notes.append(f"the bench measured {record['model']} ({record['n_base'] / 1e9:.3g} B base parameters): "
                         f"its FLOP/s carried over to {shape.n_base / 1e9:.3g} B, decoding and loads scaled by size")  # fmt: skip
    else:
        rates = assumed_rates(gpu, cfg.plan.mfu, shape, quantized, cfg.plan.load_seconds)
    if stand_in:
        notes.append(f"prompt tokens counted with a stand-in tokenizer ({tokenizer_source}), not the model's own")
    sources = {"config_json": files.config_dir, "tokenizer": tokenizer_source, "tokenizer_stand_in": stand_in}
    data = {"path": data_cfg.path, "stand_in": data_note is not None}
    return Inputs(cfg, shape, tokenizer, raw, folds, features, gpu, rates, sources, data, notes)


def make_case(inputs: Inputs, values: dict) -> Case:
    """The job's config with a trial's values, its rows rendered (shared by cases that prompt alike)."""
    cfg = with_values(inputs.cfg, values) if values else inputs.cfg
    key = rendering_key(values)
    if key not in inputs.renderings:
        split = scale_split(inputs.raw, cfg.data.normalize, cfg.data.scale_range)[0]
        inputs.renderings[key] = render_split(cfg, split, inputs.raw, inputs.features, inputs.tokenizer, inputs.folds)
    rendered = inputs.renderings[key]
    n_lora = inputs.shape.n_lora(cfg.lora.r, cfg.lora.target_modules)
    needs = memory(cfg, inputs.gpu, inputs.shape, rendered.train)
    return Case(values, cfg, rendered, Sizes(inputs.shape.n_base, n_lora, needs["gradient_checkpointing"]))


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


def mean_work(works: list[Work]) -> Work:
    return sum(works[1:], works[0]).times(1 / len(works))


def mean_run(runs: list[RunWork]) -> RunWork:
    return RunWork(mean_work([run.fit for run in runs]), mean_work([run.final for run in runs]))


def ours(cfg: PlanJob) -> Protocol:
    return Protocol(load_per_fold=not cfg.hpo.reuse_model)


def studys(inputs: Inputs) -> Protocol:
    return Protocol(pad_to=inputs.cfg.plan.study_pad_to or inputs.shape.context, decode=(STUDY_NEW_TOKENS, 1),
                    load_per_fold=True)  # fmt: skip


def plan_train(inputs: Inputs) -> Tallies:
    own = make_case(inputs, {})
    run = Tally(Work(), train_run(own, ours(inputs.cfg)))
    return Tallies(run, run, Tally(Work(), train_run(own, studys(inputs))), own, own)


def plan_hpo(inputs: Inputs) -> Tallies:
    """Worst: the costliest combination, every trial whole. Expected: the combinations' mean, times the share
    of the fold-epochs hpo.schedule trains (`schedule_share`). The study: the expected combinations, unpruned."""
    cfg, rates = inputs.cfg, inputs.rates
    worst_values, expected_values = space_values(cfg.hpo.space)
    worst = max((make_case(inputs, values) for values in worst_values), key=lambda c: rates.seconds(trial(c, ours(cfg))))
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


SIMULATED_SEARCHES = 10


def schedule_share(cfg: PlanJob) -> tuple[float, str]:
    """(the expected share of full's fold-epochs trained under hpo.schedule, the assumption behind it)."""
    hpo, epochs = cfg.hpo, cfg.trainer.epochs
    if hpo.schedule == "full":
        kept = 1.0 - (0.0 if hpo.pruner == "none" else cfg.plan.expected_pruned)
        return kept, f"hpo.schedule=full: hpo.pruner={hpo.pruner} saves {1 - kept:.0%} of the fold-epochs (plan.expected_pruned)"
    pruner = (lambda: schedule_pruner(hpo, epochs)) if hpo.schedule == "asha" else (lambda: make_pruner("none"))
    shares = [simulated_share(hpo, epochs, pruner(), seed) for seed in range(SIMULATED_SEARCHES)]
    unsaved = " (hpo.pruner's savings within folds not counted)" if hpo.schedule == "race" else ""
    return float(np.mean(shares)), (
        f"hpo.schedule={hpo.schedule}: expected {np.mean(shares):.0%} of full's fold-epochs{unsaved}: the mean of "
        f"{SIMULATED_SEARCHES} simulated searches of {hpo.n_trials} exchangeable trials (range {min(shares):.0%}-"
        f"{max(shares):.0%}; trials' objective spread {SPREAD:.0%}, fold noise {FOLD_NOISE:.0%}); worst case: "
        f"no trial stopped early"
    )  # fmt: skip


# ---------------------------------------------------------------- plan.json


def stats(values: np.ndarray) -> dict:
    return {"min": int(values.min()), "mean": float(values.mean()), "max": int(values.max())}


def work_record(work: Work) -> dict:
    return {
        "train_tokens": work.train_tokens, "scoring_tokens": work.scoring_tokens,
        "generated_tokens": work.generated_tokens, "model_loads": work.model_loads, "flops": work.flops,
    }  # fmt: skip


def cases_record(tallies: Tallies) -> list[dict]:
    """The trial configurations the HPO plan averages (expected) or maximizes (worst) over."""
    cases = [("worst", tallies.worst_case)] + [("expected", case) for case in tallies.cases]
    return [
        {"case": kind, "values": case.values, "n_lora": case.sizes.n_lora, "gradient_checkpointing": case.sizes.checkpointing,
         "prompt_tokens_mean": float(np.concatenate([case.rendered.train.prompt, case.rendered.test.prompt]).mean())}
        for kind, case in cases
        if case.values
    ]  # fmt: skip


def rows_record(rendered: Rendered) -> dict:
    return {
        "train": len(rendered.train.prompt),
        "test": len(rendered.test.prompt),
        "folds": [{"train": len(train.prompt), "val": len(val.prompt)} for train, val in rendered.folds],
    }


def hours_record(tallies: Tallies, rates: Rates, workers: int) -> list[dict]:
    """GPU-hours and wall-clock hours, worst and expected, for 1 worker and for hpo.workers."""
    found = []
    for n in sorted({1, workers}):
        (worst_gpu, worst_wall), (expected_gpu, expected_wall) = (
            tallies.worst.hours(rates, n), tallies.expected.hours(rates, n))  # fmt: skip
        found.append({"workers": n, "gpu_hours": {"worst": worst_gpu, "expected": expected_gpu},
                      "wall_hours": {"worst": worst_wall, "expected": expected_wall}})  # fmt: skip
    return found


def make_plan(cfg: PlanJob) -> dict:
    """plan.json's content: rows, tokens, FLOPs, memory and hours of `cfg.job` run as `cfg` says, and the study's way."""
    inputs = gather_inputs(cfg)
    tallies = plan_train(inputs) if cfg.job == "train" else plan_hpo(inputs)
    workers = cfg.hpo.workers if cfg.job == "hpo" else 1
    rates, own, worst_case = inputs.rates, tallies.own.rendered, tallies.worst_case
    worst, expected, study = (tally.total() for tally in (tallies.worst, tallies.expected, tallies.study))
    hours = hours_record(tallies, rates, workers)
    study_hours = tallies.study.hours(rates, 1)[0]
    both = lambda key: {"worst": work_record(worst)[key], "expected": work_record(expected)[key]}  # noqa: E731
    return {
        "job": cfg.job,
        "model": {"path": str(cfg.model.path or "tiny"), **inputs.sources, "parameters": inputs.shape.n_params,
                  "n_base": inputs.shape.n_base, "n_lora": tallies.own.sizes.n_lora, "context": inputs.shape.context},
        "data": {"display_name": cfg.data.display_name} | inputs.data,
        "rows": rows_record(own),
        "prompt_format": cfg.prompt.format,  # the prompt_tokens are this format's (a study variable)
        "prompt_tokens": stats(np.concatenate([own.train.prompt, own.test.prompt])),
        "completion_tokens": stats(np.concatenate([own.train.completion, own.test.completion])),
        "train_tokens": both("train_tokens"),
        "scoring_tokens": both("scoring_tokens") | {"parts": scoring_parts(tallies.expected, cfg.job)},
        "generated_tokens": both("generated_tokens"),
        "model_loads": both("model_loads"),
        "flops": both("flops"),
        "memory_gib": memory(worst_case.cfg, inputs.gpu, inputs.shape, worst_case.rendered.train),
        "throughput": {"source": rates.source, "gpu": cfg.plan.gpu, "train_tflops_per_s": rates.train_flops_per_s / 1e12,
                       "scoring_tflops_per_s": rates.scoring_flops_per_s / 1e12,
                       "decode_step_seconds": rates.decode_step_seconds, "load_seconds": rates.load_seconds},
        "gpu_hours": hours[0]["gpu_hours"],
        "hours": hours,
        "study": work_record(study) | {"gpu_hours": study_hours, "pad_to": studys(inputs).pad_to,
                                       "new_tokens": STUDY_NEW_TOKENS},
        "study_ratio": study_hours / hours[0]["gpu_hours"]["expected"],
        "cases": cases_record(tallies),
        "notes": inputs.notes,
    }  # fmt: skip


def scoring_parts(tally: Tally, job: str) -> dict:
    """Where the (expected) scored tokens go: per-epoch scoring of the folds, of the run, its final scoring."""
    run = "refit" if job == "hpo" else "train"
    parts = {f"{run}_epochs": tally.run.fit.scoring_tokens, f"{run}_final": tally.run.final.scoring_tokens}
    return ({"fold_epochs": tally.search.scoring_tokens} if job == "hpo" else {}) | parts
