"""What the benchmarks share: a config's model, split and SFT trainer, set up as `faultllm train` does."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class Setup:
    spec: object  # modeling.ModelSpec
    model: object
    tokenizer: object
    split: object  # splits.Split, scaled
    serializer: object  # prompts.Serializer
    options: object  # training.TrainOptions
    plan: object = None  # modeling.HardwarePlan as run, once `sft_trainer` has decided checkpointing


def setup(cfg) -> Setup:
    from faultllm.modeling import ModelSpec, build_for_training
    from faultllm.prompts import Serializer
    from faultllm.splits import prepared_split
    from faultllm.training import TrainOptions

    spec = ModelSpec.from_config(cfg.model, cfg.lora, cfg.cache_dir, cfg.prompt)
    model, tokenizer = build_for_training(spec, cfg.seed)
    split, _ = prepared_split(cfg.data, cfg.seed)
    serializer = Serializer.from_config(cfg.prompt, cfg.data.system_prompt, split.features, split.labels, tokenizer)
    options = TrainOptions.from_config(cfg.trainer, cfg.seed, cfg.eval.batch_size, cfg.progress)
    return Setup(spec, model, tokenizer, split, serializer, options)


def sft_trainer(run: Setup, rows: list[dict], out_dir: Path):
    """The SFT trainer `fit` would build (gradient checkpointing decided the same way), without checkpoints."""
    from faultllm.prompts import Prompts
    from faultllm.training import plan_for_run
    from faultllm.training import sft_trainer as make_trainer

    prompts = Prompts([row["prompt"] for row in rows], [], run.serializer.labels, {})
    run.plan = plan_for_run(run.spec.plan, run.model, run.tokenizer, prompts, run.options)
    return make_trainer(run.model, run.tokenizer, rows, run.options, run.plan, out_dir, checkpoints=False)
