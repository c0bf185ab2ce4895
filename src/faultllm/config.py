"""Where configs and bundled data live, composing configs, and the run directory's bookkeeping."""

from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

_PACKAGE_DIR = Path(__file__).resolve().parent
# A wheel carries configs/ and data/ inside the package; a source checkout has them at the top.
PROJECT_ROOT = _PACKAGE_DIR if (_PACKAGE_DIR / "configs").is_dir() else _PACKAGE_DIR.parents[1]
CONFIG_DIR = PROJECT_ROOT / "configs"

TRACKED_PACKAGES = (
    "faultllm", "torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets",
    "optuna", "scikit-learn", "pandas", "numpy", "hydra-core", "flash-attn",
)  # fmt: skip


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


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def start_run(cfg: DictConfig, run_dir: str | os.PathLike) -> Path:
    """Create the run directory and write the resolved config, seed, command and versions."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    write_json(
        run_dir / "run_info.json",
        {"seed": cfg.get("seed"), "command": sys.argv, "versions": library_versions()},
    )
    return run_dir


def write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
