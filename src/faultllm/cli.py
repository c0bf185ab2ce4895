"""`faultllm <command> [hydra overrides]`: a thin dispatcher onto Hydra-configured jobs.

Heavy libraries (torch, transformers, peft, even hydra) are imported only once a
command runs, so `faultllm --help` answers at once.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable

# command -> (config name in configs/, "module:function" taking (cfg, run_dir), one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "data prepare": ("prepare", "faultllm.prepare:prepare_data", "load, guard, sample, split and scale a data set"),
    "train": ("train", "faultllm.training:train", "QLoRA fine-tune an LLM on serialized rows, then evaluate"),
    "evaluate": ("evaluate", "faultllm.evaluation:evaluate_run", "score a trained run's adapter on a split"),
    "hpo": ("hpo", "faultllm.hpo:search", "Optuna TPE search over stratified K folds"),
    "baselines": ("baselines", "faultllm.baselines:run_baselines", "classical models on the very same split"),
    "explain": ("explain", "faultllm.explain:explain", "free-text probe and measured feature attributions"),
}
REPORT_HELP = "report RUN_DIR... [--out DIR]: one comparison table of train and baselines runs on the same split"

USAGE = """usage: faultllm <command> [key=value ...]   (Hydra overrides, e.g. data=tep data.path=DIR seed=1)

commands:
{commands}

Every command takes Hydra's flags too: --cfg job (print the config), --help, hydra.run.dir=DIR.
Configs live in configs/; see README.md."""


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return USAGE.format(commands="\n".join([*lines, f"  {'report':<{width}}  {REPORT_HELP.split(': ', 1)[1]}"]))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] == "report":
        return report_command(argv[1:])
    command = " ".join(argv[:2]) if argv[0] == "data" else argv[0]
    if command not in COMMANDS:
        print(
            f"faultllm: unknown command {' '.join(argv[:2]) if argv[0] == 'data' else argv[0]!r}\n\n{_usage()}",
            file=sys.stderr,
        )
        return 2
    config_name, target, _ = COMMANDS[command]
    if importlib.util.find_spec(target.split(":")[0]) is None:
        print(f"faultllm {command}: not built yet in this version of faultllm", file=sys.stderr)
        return 2
    overrides = argv[len(command.split()) :]
    return run_job(command, config_name, _resolve(target), overrides)


def report_command(args: list[str]) -> int:
    import argparse
    from datetime import datetime

    from faultllm.errors import FaultLLMError

    parser = argparse.ArgumentParser(prog="faultllm report", description=REPORT_HELP)
    parser.add_argument("run_dirs", nargs="+")
    parser.add_argument("--out", default=f"runs/report/{datetime.now():%Y-%m-%d_%H-%M-%S}")
    parsed = parser.parse_args(args)
    from faultllm.reporting import report

    try:
        report(parsed.run_dirs, parsed.out)
    except FaultLLMError as err:
        print(f"faultllm report: error: {err}", file=sys.stderr)
        return 2
    return 0


def _resolve(target: str) -> Callable:
    module, function = target.split(":")

    def job(cfg, run_dir):
        return getattr(importlib.import_module(module), function)(cfg, run_dir)

    return job


def _quiet_known_noise() -> None:
    """Silence two harmless messages every run would print.

    TRL 1.x still configures `gradient_checkpointing` (transformers 5 deprecates the name),
    and bitsandbytes looks for an optional CPU kernel package at import.
    """
    import logging
    import warnings

    warnings.filterwarnings("ignore", message=r".*gradient_checkpointing.* is deprecated", category=FutureWarning)
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def run_job(command: str, config_name: str, job: Callable, overrides: list[str]) -> int:
    import hydra
    from hydra.core.hydra_config import HydraConfig

    from faultllm.config import CONFIG_DIR
    from faultllm.errors import FaultLLMError

    def task(cfg) -> None:
        _quiet_known_noise()
        try:
            job(cfg, HydraConfig.get().runtime.output_dir)
        except FaultLLMError as err:
            print(f"faultllm {command}: error: {err}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print(f"faultllm {command}: interrupted; finished work is kept in the run directory", file=sys.stderr)
            sys.exit(130)

    sys.argv = [f"faultllm {command}", *overrides]
    hydra.main(config_path=str(CONFIG_DIR), config_name=config_name, version_base=None)(task)()
    return 0


if __name__ == "__main__":
    sys.exit(main())
