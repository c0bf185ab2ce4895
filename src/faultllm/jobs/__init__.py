"""One module per `faultllm` command: read the config, call the library, write the run directory.

Each exposes `run(cfg, run_dir)`; `faultllm.cli` maps commands onto them. The library
modules (`faultllm.*`) never import from here.
"""
