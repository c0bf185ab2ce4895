"""A trained run's model, reopened: its adapter on its base model, its tokenizer and its prompts' serializer."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from faultllm.llm.build import ModelSpec, load_trained, load_untrained
from faultllm.prompts.serialize import Serializer
from faultllm.run.saved import SavedRun

log = logging.getLogger(__name__)


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
        log.info(spec.loading() + adapter)
        if run.untrained:  # the tokenizer as the run prepared it: the same config
            model, tokenizer = load_untrained(spec)
        else:
            model, tokenizer = load_trained(run.run_dir / "adapter", spec.path, spec.plan)
        features, labels = run.prompt_features(), run.split.labels
        serializer = Serializer.from_config(
            cfg.prompt, cfg.data.system_prompt, features, labels, tokenizer, cfg.seed, run.split.train
        )
        return cls(model, tokenizer, serializer)
