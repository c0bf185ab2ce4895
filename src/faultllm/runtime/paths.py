"""Where faultllm's configs and bundled files are: a source checkout or an installed wheel (no imports: the
CLI's --help uses it)."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
# A wheel carries configs/ and data/ inside the package; a source checkout has them at the top.
PROJECT_ROOT = PACKAGE_DIR if (PACKAGE_DIR / "configs").is_dir() else PACKAGE_DIR.parents[1]
CONFIG_DIR = PROJECT_ROOT / "configs"
INSTALLED_FROM_SOURCE = PROJECT_ROOT != PACKAGE_DIR


def install_hint(extra: str) -> str:
    """How to get an optional extra, for a source checkout or an installed wheel."""
    return f"pip install -e '.[{extra}]'" if INSTALLED_FROM_SOURCE else f"pip install 'faultllm[{extra}]'"
