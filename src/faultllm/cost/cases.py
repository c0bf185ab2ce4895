"""What a plan counts: its inputs (config.json, the tokenizer, the split and folds, the rates) and the
configurations a run may take (the job's own, HPO's trials), each with its rows rendered and tokenized as the
run renders them (the same split, folds scaled per fold, prompt template), its model sizes and its memory."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

from faultllm.config.hpo import SearchParam
from faultllm.config.jobs import PlanJob
from faultllm.config.load import with_values
from faultllm.cost.flops import GPUS
from faultllm.cost.records import MemoryEstimate
from faultllm.cost.tokens import RowTokens, row_tokens
from faultllm.cost.work import Rates, assumed_rates, measured_rates
from faultllm.data.splits import Split, cv_folds, fold_splits, make_split, scale_split
from faultllm.data.standins import stand_in_data
from faultllm.llm.hardware import Gpu, hardware_plan
from faultllm.llm.memory import GIB, Step, needs_checkpointing, step_memory
from faultllm.llm.scoring import answer_space
from faultllm.llm.shape import ModelShape, model_shape
from faultllm.llm.sources import check_tokenizer, model_files
from faultllm.llm.tiny import SHIPPED
from faultllm.llm.tokenizer import load_tokenizer
from faultllm.prompts.serialize import Prompts, Serializer
from faultllm.runtime.errors import FaultLLMError
from faultllm.search.hpo import search_features

# ---------------------------------------------------------------- the inputs


@dataclass
class Inputs:
    """What a plan is computed from: the model's shape and tokenizer, the split and folds, the rates."""

    cfg: PlanJob
    shape: ModelShape
    tokenizer: object
    raw: Split  # unscaled, as make_split gives it
    folds: list  # cv_folds positions (HPO), else []
    features: list[str]  # in prompt order
    gpu: Gpu
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
        return load_tokenizer(source, chat, template_file), cfg.plan.tokenizer, True
    files = model_files(cfg.model, cfg.cache_dir)
    hint = "; or plan.tokenizer=tiny to count with the tiny model's Llama-2-like tokenizer (an estimate)"
    try:
        check_tokenizer(files)
        return load_tokenizer(files.tokenizer, chat, template_file), files.tokenizer, False
    except FaultLLMError as err:
        raise FaultLLMError(f"plan: no tokenizer: {err}{hint}") from err


def plan_rates(cfg: PlanJob, shape: ModelShape, gpu: Gpu) -> tuple[Rates, list[str]]:
    """The rates `plan.throughput_from` measured, else the GPU's assumed ones; and a note where they carry over."""
    if not cfg.plan.throughput_from:
        quantized = cfg.model.quantization in ("auto", "nf4")
        return assumed_rates(gpu, cfg.plan.mfu, shape, quantized, cfg.plan.load_seconds), []
    rates, bench = measured_rates(cfg.plan.throughput_from, shape, cfg.plan.load_seconds)
    if abs(bench.n_base - shape.n_base) <= 0.01 * shape.n_base:
        return rates, []
    return rates, [f"the bench measured {bench.model} ({bench.n_base / 1e9:.3g} B base parameters): its FLOP/s "
                   f"carried over to {shape.n_base / 1e9:.3g} B, decoding and loads scaled by size"]  # fmt: skip


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
    rates, rate_notes = plan_rates(cfg, shape, gpu)
    notes = [note for note in (data_note,) if note] + rate_notes
    if stand_in:
        notes.append(f"prompt tokens counted with a stand-in tokenizer ({tokenizer_source}), not the model's own")
    sources = {"config_json": str(files.config_dir), "tokenizer": tokenizer_source, "tokenizer_stand_in": stand_in}
    data = {"path": data_cfg.path, "stand_in": data_note is not None}
    return Inputs(cfg, shape, tokenizer, raw, folds, features, gpu, rates, sources, data, notes)


# ---------------------------------------------------------------- the rows a run sees, tokenized


@dataclass(frozen=True)
class Rendered:
    """One configuration's rows as the run renders them: the training split (train/test) and each fold."""

    train: RowTokens
    test: RowTokens
    folds: list[tuple[RowTokens, RowTokens]] = field(default_factory=list)  # (fold train, fold validation)


def tokens_of(tokenizer, prompts: Prompts) -> RowTokens:
    return row_tokens(tokenizer, prompts, answer_space(tokenizer, prompts))


def _rendered(serializer: Serializer, tokenizer, train, test) -> tuple[RowTokens, RowTokens]:
    """Training and held-out rows, with in-context examples (prompt.shots) drawn from the training rows."""
    train_prompts, test_prompts = serializer.render_pair(train, test)
    return tokens_of(tokenizer, train_prompts), tokens_of(tokenizer, test_prompts)


def render_split(cfg: PlanJob, split: Split, raw: Split, features: list[str], tokenizer, folds: list) -> Rendered:
    """`split` (scaled as the run scales it) and, for folds, `raw`'s folds scaled per fold as HPO does."""
    serializer = Serializer.from_config(cfg.prompt, cfg.data.system_prompt, features, split.labels, tokenizer, cfg.seed)
    fold_sets = [
        _rendered(serializer, tokenizer, fold.train, fold.test)
        for fold in fold_splits(raw, folds, cfg.data.normalize, cfg.data.scale_range)
    ]
    return Rendered(*_rendered(serializer, tokenizer, split.train, split.test), fold_sets)


# ---------------------------------------------------------------- memory on the planned GPU


def memory_estimate(cfg: PlanJob, gpu: Gpu, shape: ModelShape, train: RowTokens) -> MemoryEstimate:
    """`memory.step_memory` for a batch of the longest training rows, term by term, and whether checkpointing
    would be on: decided by `memory.needs_checkpointing` as `faultllm train` decides it on that GPU."""
    plan = hardware_plan(cfg.model, gpu, flash_attn_available=True)
    shape = shape.with_lora(cfg.lora)
    step = Step.of(plan, cfg.trainer.batch_size, int(train.prompt.max()), int(train.completion.max()))
    checkpointing = needs_checkpointing(plan, shape, step)
    need = {on: step_memory(shape, step, plan, checkpointing=on) for on in (False, True)}
    return MemoryEstimate(
        estimate_gib=need[checkpointing].total / GIB,
        without_checkpointing_gib=need[False].total / GIB,
        with_checkpointing_gib=need[True].total / GIB,
        terms_gib=need[checkpointing].gib(),
        lora_gib=need[checkpointing].lora / GIB,
        gpu_memory_gib=gpu.memory_gib,
        gradient_checkpointing=checkpointing,
        fits=need[checkpointing].total / GIB <= gpu.memory_gib,
        quantization=plan.quantization,
        tokens_per_step=step.tokens,
        head_tokens_per_step=step.head_tokens,
    )


# ---------------------------------------------------------------- configurations: the job's own and HPO's trials


@dataclass(frozen=True)
class Sizes:
    """The model's parameters in a case: the frozen base and the LoRA adapters of the case's rank."""

    n_base: float
    n_lora: float
    checkpointing: bool


@dataclass(frozen=True)
class Case:
    """A configuration a run may take (the job's own, or an HPO trial's), its rendered rows and its model sizes."""

    values: dict  # the trial's parameters (config key -> value); {} for the job's own config
    cfg: PlanJob
    rendered: Rendered
    sizes: Sizes


def make_case(inputs: Inputs, values: dict) -> Case:
    """The job's config with a trial's values, its rows rendered (shared by cases that prompt alike)."""
    cfg = with_values(inputs.cfg, values) if values else inputs.cfg
    key = rendering_key(values)
    if key not in inputs.renderings:
        split = scale_split(inputs.raw, cfg.data.normalize, cfg.data.scale_range)[0]
        inputs.renderings[key] = render_split(cfg, split, inputs.raw, inputs.features, inputs.tokenizer, inputs.folds)
    rendered = inputs.renderings[key]
    n_lora = inputs.shape.n_lora(cfg.lora.r, cfg.lora.target_modules)
    needs = memory_estimate(cfg, inputs.gpu, inputs.shape, rendered.train)
    return Case(values, cfg, rendered, Sizes(inputs.shape.n_base, n_lora, needs.gradient_checkpointing))


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
