"""Where configs and bundled files live, and composing a config the way the CLI does."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from faultllm.errors import FaultLLMError

_PACKAGE_DIR = Path(__file__).resolve().parent
# A wheel carries configs/ and data/ inside the package; a source checkout has them at the top.
PROJECT_ROOT = _PACKAGE_DIR if (_PACKAGE_DIR / "configs").is_dir() else _PACKAGE_DIR.parents[1]
CONFIG_DIR = PROJECT_ROOT / "configs"


def _register_resolvers() -> None:
    if not OmegaConf.has_resolver("project"):
        # ${project:data/tep_sim} -> absolute path of a bundled file, wherever faultllm runs from.
        OmegaConf.register_new_resolver("project", lambda rel: str(PROJECT_ROOT / rel))


_register_resolvers()


def compose(config_name: str, overrides: list[str] | None = None) -> DictConfig:
    """Compose a config the way the CLI does (used by tests and notebooks)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return hydra_compose(config_name=config_name, overrides=overrides or [], return_hydra_config=False)


# The keys people set on the command line most, with the type each must have (an equivalent of
# Hydra's structured configs for them): a wrong type is one line naming the key before any work.
SCHEMA: dict[str, tuple[type, ...]] = {
    "seed": (int,), "progress": (bool,),
    "data.train_size": (int,), "data.test_size": (int,), "data.normalize": (bool,), "data.missing_rate": (float,),
    "data.missing_in_train": (bool,), "data.allow_missing": (bool,), "data.drop_duplicates": (bool,),
    "prompt.decimals": (int, type(None)), "prompt.name_features": (bool,),
    "trainer.epochs": (int,), "trainer.batch_size": (int,), "trainer.grad_accum": (int,),
    "trainer.learning_rate": (float,), "trainer.resume": (bool,),
    "lora.r": (int,), "lora.alpha": (int,), "lora.dropout": (float,),
    "eval.batch_size": (int,), "eval.max_new_tokens": (int,),
    "hpo.n_trials": (int,), "hpo.folds": (int,), "hpo.workers": (int,), "hpo.worker_index": (int,),
    "baselines.tune": (bool,), "baselines.n_trials": (int,), "baselines.folds": (int,),
    "baselines.permutation_repeats": (int,),
    "explain.n_probe_rows": (int,), "explain.n_attribution_rows": (int,), "explain.top_k": (int,),
}  # fmt: skip
_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", type(None): "null"}


def validate(cfg: DictConfig) -> None:
    """Required keys set and the SCHEMA keys of the right type, else FaultLLMError naming the key."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise FaultLLMError(f"{missing[0]} is required: pass {missing[0]}=...")
    for key, types in SCHEMA.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is _ABSENT:
            continue
        if float in types and isinstance(value, int) and not isinstance(value, bool):
            continue  # 1 for 1.0
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            expected = " or ".join(_TYPE_NAMES[t] for t in types)
            raise FaultLLMError(f"{key}={value!r}: expected {expected}")


_ABSENT = object()
