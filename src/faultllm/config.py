"""Where configs and bundled files live, and composing a config the way the CLI does."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

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
