from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from faultllm.config.load import load_config
from faultllm.llm.sources import resolve_model_path
from faultllm.llm.tiny import SHIPPED, spec_of


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow  # builds the tiny model twice
def test_a_build_is_a_pure_function_of_its_spec_across_processes(tmp_path):
    """Two processes build the same bytes. Not across thread counts: on some CPUs torch's 2-thread kernels
    split reductions differently from 1 thread (seen on this project's machines), which is why the default
    model ships prebuilt. A short warm-up keeps this quick; the full build runs the same code for more steps."""
    spec = spec_of(load_config("train", ["model=tiny"]).model) | {"warmup_steps": 20}
    builds = []
    for name in ("a", "b"):  # side by side, one thread each
        code = (
            "import torch; torch.set_num_threads(1); from pathlib import Path; "
            f"from faultllm.llm.tiny import build_tiny_model; build_tiny_model({spec!r}, Path({str(tmp_path / name)!r}))"
        )
        with open(tmp_path / f"{name}.log", "w") as log:
            builds.append(subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT))
    for name, build in zip("ab", builds, strict=True):
        assert build.wait(timeout=600) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
    for file in ("model.safetensors", "tokenizer.json", "config.json", "spec.json"):
        assert _sha256(tmp_path / "a" / file) == _sha256(tmp_path / "b" / file), file


def test_the_default_tiny_model_ships_prebuilt(compose_cfg):
    cfg = compose_cfg("train", ["model=tiny"])
    assert resolve_model_path(cfg.model, cfg.cache_dir) == str(SHIPPED)
    assert {"config.json", "model.safetensors", "tokenizer.json", "spec.json"} <= {p.name for p in SHIPPED.iterdir()}
    assert not list(Path(cfg.cache_dir).glob("tiny-llama-*"))  # nothing was built
