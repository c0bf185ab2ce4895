"""Rebuild the tiny Llama that ships in src/faultllm/assets/tiny-llama, from configs/model/tiny.yaml.

    python scripts/build_tiny_model.py            # about 2.5 min on 2 CPU cores

The build is a pure function of the spec (sizes, warm-up steps, seed): two builds on one
host give byte-identical files. Hosts with other CPU kernels (AVX2 vs AVX-512) drift apart
over the warm-up's 1000 steps, which is why the built files ship instead of being rebuilt
on every machine. Rebuild after changing the spec or `tiny.py`'s build, and commit the files.
"""

from __future__ import annotations

import shutil
import time

from faultllm.config.load import load_config
from faultllm.llm.tiny import SHIPPED, build_tiny_model, spec_of


def main() -> None:
    spec = spec_of(load_config("train", ["model=tiny"]).model)
    partial = SHIPPED.with_name(SHIPPED.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    start = time.perf_counter()
    build_tiny_model(spec, partial)
    shutil.rmtree(SHIPPED, ignore_errors=True)
    partial.rename(SHIPPED)
    print(f"built {SHIPPED} in {time.perf_counter() - start:.0f} s: {spec}")


if __name__ == "__main__":
    main()
