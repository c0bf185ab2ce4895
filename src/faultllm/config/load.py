"""From Hydra's composed DictConfig to the command's dataclass (`faultllm.config.jobs`), and back to plain values.

The one module besides `jobs/` and `run/directory.py` that sees DictConfig. `compose` builds a command's
config the way the CLI does; `typed` turns it into the command's dataclass (every choice, range and rule
checked there, errors naming the full key); `with_values` derives a config with some keys set (HPO
trials), checked the same way.
"""

from __future__ import annotations

import importlib.util
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from faultllm.config.choices import TRACKER_PACKAGES, trackers
from faultllm.config.fields import ConfigError, suggestion
from faultllm.config.jobs import JOBS, TrainJob
from faultllm.runtime.errors import FaultLLMError
from faultllm.runtime.paths import CONFIG_DIR, PROJECT_ROOT, install_hint


def _register() -> None:
    if not OmegaConf.has_resolver("project"):
        # ${project:data/tep_sim} -> absolute path of a bundled file, wherever faultllm runs from.
        OmegaConf.register_new_resolver("project", lambda rel: str(PROJECT_ROOT / rel))
    store = ConfigStore.instance()
    for job, schema in JOBS.items():  # each configs/<job>.yaml starts its defaults list with <job>_schema
        store.store(name=f"{job}_schema", node=schema)


_register()


def compose(config_name: str, overrides: list[str] | None = None) -> DictConfig:
    """Compose a config the way the CLI does (used by tests and notebooks)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return hydra_compose(config_name=config_name, overrides=overrides or [], return_hydra_config=False)


def unresolved(config_name: str, overrides: list[str] | None = None) -> dict:
    """A command's composed config as plain values, interpolations (`${cache_dir}/tables`) left as written."""
    return OmegaConf.to_container(compose(config_name, overrides), resolve=False)


def config_keys(config_name: str, under: str = "") -> dict[str, bool]:
    """The keys of a command's config (at `under`, e.g. "trainer"), each with whether it holds a group of keys."""
    node = compose(config_name)
    node = OmegaConf.select(node, under) if under else node
    return {str(key): isinstance(value, DictConfig) for key, value in (node.items_ex(resolve=False) if node else [])}


def load_config(config_name: str, overrides: list[str] | None = None) -> Any:
    """The typed config of a command, composed and checked as the CLI does (tests, notebooks, benchmarks)."""
    return typed(compose(config_name, overrides), config_name)


def typed(cfg: DictConfig, job: str) -> Any:
    """The command's dataclass from a composed config: a missing required key, a choice, a range or a rule
    between keys that does not hold is a FaultLLMError naming the key."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise FaultLLMError(f"{missing[0]} is required: pass {missing[0]}=...")
    values = OmegaConf.to_container(cfg, resolve=True)
    return build(JOBS[job], {k: v for k, v in values.items() if k != "hydra"}, strict=True)


def validate(cfg: DictConfig, job: str) -> Any:
    """`typed`, plus what this machine must have for it (the trackers' packages)."""
    config = typed(cfg, job)
    if isinstance(config, TrainJob):
        for name in trackers(config.trainer.report_to):
            package, extra = TRACKER_PACKAGES.get(name, (name, None))
            if importlib.util.find_spec(package) is None:
                how = install_hint(extra) if extra else f"pip install {package}"
                raise FaultLLMError(f"trainer.report_to={name} needs the {package} package: {how}")
    return config


def build(schema: type, values: dict, path: str = "", strict: bool = False) -> Any:
    """`schema(**values)` with nested dataclasses (and dicts of them) built first; absent keys take their
    defaults. Keys the schema does not know are refused with `strict`, else dropped (run directories
    written by an older faultllm)."""
    hints = typing.get_type_hints(schema)
    names = [spec.name for spec in fields(schema)]
    unknown = [key for key in values if key not in names]
    if strict and unknown:
        known = [f"{path}{name}" for name in names]
        raise ConfigError(f"{path}{unknown[0]}", f": no such config key{suggestion(f'{path}{unknown[0]}', known)}")
    kwargs = {}
    for spec in fields(schema):
        if spec.name not in values:
            continue
        value, hint = values[spec.name], hints[spec.name]
        if is_dataclass(hint) and isinstance(value, dict):
            value = build(hint, value, f"{path}{spec.name}.", strict)
        elif typing.get_origin(hint) is dict and is_dataclass(typing.get_args(hint)[1]) and isinstance(value, dict):
            inner = typing.get_args(hint)[1]
            value = {k: build(inner, v, f"{path}{spec.name}.{k}.", strict) for k, v in value.items()}
        kwargs[spec.name] = value
    try:
        return schema(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{path}{err.key}", err.message) from err


def with_values(config: Any, values: dict[str, Any]) -> Any:
    """A copy of a typed config with dotted keys set (`{"lora.r": 8}`), checked like the original."""
    tree = OmegaConf.structured(config)
    for key, value in values.items():
        OmegaConf.update(tree, key, value, merge=False)
    return build(type(config), OmegaConf.to_container(tree, resolve=True))


def as_tree(config: Any) -> dict:
    """A typed config as nested plain dicts (for comparing runs, logging parameters)."""
    return OmegaConf.to_container(OmegaConf.structured(config), resolve=True)


def load_saved(path: Path) -> Any:
    """A run directory's config.yaml as its command's dataclass (older runs: missing keys take defaults)."""
    tree = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    job = next((name for name in ("hpo", "baselines") if name in tree), "train" if "model" in tree else "prepare")
    return build(JOBS[job], tree)
