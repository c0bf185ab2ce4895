"""`faultllm <command> [hydra overrides]`: a thin dispatcher onto Hydra-configured jobs.

Heavy libraries (torch, transformers, peft, even hydra) are imported only once a
command runs, so `faultllm --help` answers at once.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from pathlib import Path

from faultllm.credentials import hide_passwords, redact

# command -> (config name in configs/, job module in faultllm.jobs, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "data prepare": ("prepare", "prepare", "load, guard, sample, split and scale a data set"),
    "train": ("train", "train", "QLoRA fine-tune an LLM on serialized rows, then evaluate"),
    "evaluate": ("evaluate", "evaluate", "score a trained run's adapter on a split"),
    "hpo": ("hpo", "hpo", "Optuna TPE search over stratified K folds"),
    "baselines": ("baselines", "baselines", "classical models on the very same split"),
    "explain": ("explain", "explain", "free-text probe and measured feature attributions"),
    "predict": ("predict", "predict", "diagnose new rows with a train run's LLM or a baselines run's model"),
    "report": ("report", "report", "RUN_DIR... [--out DIR]: compare train and baselines runs over seeds"),
}

USAGE = """usage: faultllm <command> [key=value ...]   (Hydra overrides, e.g. data=tep data.path=DIR seed=1)

commands:
{commands}

Every command takes Hydra's flags too: --cfg job (print the config), --help, hydra.run.dir=DIR.
Configs live in configs/; see README.md."""


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    return USAGE.format(commands="\n".join(f"  {name:<{width}}  {help_}" for name, (_, _, help_) in COMMANDS.items()))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from faultllm import __version__

        print(f"faultllm {__version__}")
        return 0
    command = " ".join(argv[:2]) if argv[0] == "data" else argv[0]
    if command not in COMMANDS:
        print(f"faultllm: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    overrides = hide_passwords(argv[len(command.split()) :])  # Hydra, its files and the job never see the password
    config_name, module, _ = COMMANDS[command]
    if any(arg in ("-h", "--help") for arg in overrides):
        print(command_help(command, config_name))
        return 0
    if command == "report":
        overrides = report_overrides(overrides)
    if not any(arg.startswith("-") for arg in overrides):  # multiruns and Hydra's flags: checked per job
        error = config_error(config_name, overrides)
        if error:
            print(f"faultllm {command}: error: {redact(error)}", file=sys.stderr)
            return 2
    from faultllm.distributed import pin_first_gpu, world_size

    if world_size() > 1:
        if command != "train":
            print(f"faultllm {command}: runs in one process; only train runs under torchrun", file=sys.stderr)
            return 2
        overrides = rank_overrides(config_name, overrides)
    elif command != "hpo":  # hpo pins its worker processes itself (hpo.workers)
        pin_first_gpu()  # one process, one GPU: never DataParallel
    return run_job(command, config_name, module, overrides)


def rank_overrides(config_name: str, overrides: list[str]) -> list[str]:
    """Under torchrun/accelerate: one run directory for all ranks (the main one's, unless given);
    only the main process keeps Hydra's files and the log."""
    from faultllm.distributed import agree_on_run_dir, is_main_process

    if not any(o.startswith("hydra.run.dir=") for o in overrides):
        overrides = [*overrides, f"hydra.run.dir={agree_on_run_dir(f'runs/{config_name}')}"]
    if not is_main_process():
        overrides = [*overrides, "hydra.output_subdir=null", "hydra/job_logging=disabled"]
    return overrides


def command_help(command: str, config_name: str) -> str:
    """What the command does (the opening comment of its config) and its config's top-level keys."""
    from faultllm.config import CONFIG_DIR, compose

    path = CONFIG_DIR / f"{config_name}.yaml"
    header = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line.lstrip("# ").rstrip())
    from omegaconf import OmegaConf

    tree = OmegaConf.to_container(compose(config_name), resolve=False, throw_on_missing=False)
    keys = ", ".join(f"{key}.*" if isinstance(value, dict) else key for key, value in tree.items())
    return "\n".join([
        f"faultllm {command}: {COMMANDS[command][2]}", "", *header, "",
        f"config: configs/{config_name}.yaml   keys: {keys}",
        f"faultllm {command} --cfg job [key=value ...] prints the whole composed config; see README.md.",
    ])  # fmt: skip


def config_error(config_name: str, overrides: list[str]) -> str | None:
    """The one-line reason the config cannot be composed or fails validation, else None."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from faultllm.config import compose, validate
    from faultllm.errors import FaultLLMError

    try:
        validate(compose(config_name, [o for o in overrides if not o.startswith("hydra.")]))
    except FaultLLMError as err:
        return str(err)
    except (HydraException, OmegaConfBaseException, ValueError, KeyError) as err:  # override and composition errors
        lines = str(err).strip().split("Config search path")[0].splitlines()
        return " ".join(line.strip() for line in lines if line.strip())
    return None


def report_overrides(args: list[str]) -> list[str]:
    """`report DIR... [--out DIR]` as Hydra overrides: run_dirs=[...] and hydra.run.dir."""
    run_dirs, overrides = [], []
    args = iter(args)
    for arg in args:
        if arg == "--out":
            overrides.append(f"hydra.run.dir={next(args, '')}")
        elif "=" in arg or arg.startswith("-"):
            overrides.append(arg)
        else:
            run_dirs.append(arg)
    if run_dirs:
        quoted = ",".join("'" + d.replace("\\", "\\\\").replace("'", "\\'") + "'" for d in run_dirs)
        overrides.insert(0, f"run_dirs=[{quoted}]")
    return overrides


def _quiet_known_noise() -> None:
    """Harmless messages every run would print: bitsandbytes looks for an optional CPU kernel package,
    transformers' Trainer still calls its own renamed `is_gradient_checkpointing` under DDP, and
    Optuna calls the heartbeat features it ships experimental."""
    import logging
    import warnings

    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.* is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r".* is experimental \(supported from")  # Optuna's heartbeat API
    warnings.filterwarnings("ignore", message=r"Argument ``\w+`` is an experimental feature")  # heartbeat_interval


def _no_progress_bars() -> None:
    """progress=false (logs, CI): no bars from datasets' preparation or transformers' weight loading."""
    import datasets
    from transformers.utils import logging as transformers_logging

    datasets.disable_progress_bars()
    transformers_logging.disable_progress_bar()


def run_job(command: str, config_name: str, module: str, overrides: list[str]) -> int:
    import hydra
    from hydra.core.hydra_config import HydraConfig

    from faultllm.config import CONFIG_DIR, validate
    from faultllm.errors import FaultLLMError

    def task(cfg) -> None:
        _quiet_known_noise()
        if cfg.get("progress") is False:
            _no_progress_bars()
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        try:
            validate(cfg)
            job = importlib.import_module(f"faultllm.jobs.{module}")
            job.run(cfg, run_dir)
        except FaultLLMError as err:
            _fail(command, str(err), run_dir, 2)
        except KeyboardInterrupt:
            print(f"faultllm {command}: interrupted; finished work is kept in the run directory", file=sys.stderr)
            sys.exit(130)
        except Exception as err:
            if os.environ.get("FAULTLLM_DEBUG"):
                raise
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            _fail(command, f"{type(err).__name__}: {first} (FAULTLLM_DEBUG=1 shows the full trace)", run_dir, 1)

    sys.argv = [f"faultllm {command}", *overrides]
    hydra.main(config_path=str(CONFIG_DIR), config_name=config_name, version_base=None)(task)()
    return 0


# What every run directory holds before its job has written anything of its own.
_BOOKKEEPING = {".hydra", "faultllm.log", "config.yaml", "run_info.json"}


def _fail(command: str, message: str, run_dir: Path, code: int) -> None:
    """One line on stderr; a run directory the failed job wrote nothing into is removed, and with it the
    command's folder above it when that is left empty (run_dir/evaluate/ of a refused evaluate)."""
    from faultllm.distributed import is_main_process

    print(f"faultllm {command}: error: {redact(message)}", file=sys.stderr)
    if is_main_process() and run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= _BOOKKEEPING:
        shutil.rmtree(run_dir, ignore_errors=True)
        if run_dir.parent.name == command.split()[-1] and not any(run_dir.parent.iterdir()):
            run_dir.parent.rmdir()
    sys.exit(code)


if __name__ == "__main__":
    sys.exit(main())
