"""`faultllm <command> [hydra overrides]`: a thin dispatcher onto Hydra-configured jobs.

Heavy libraries (torch, transformers, peft, even hydra) are imported only once a
command runs, so `faultllm --help` answers at once. The command line's overrides are read by
`faultllm.config.overrides`, a command's `--help` is written by `faultllm.config.help`; here: the checks
before a job (config, inputs, run directory), the job's run and the one line a failure prints.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import os
import shutil
import sys
import traceback
import warnings
from datetime import datetime
from pathlib import Path

from faultllm.runtime.credentials import hide_passwords, redact

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
    "plan": ("plan", "plan", "job=train|hpo ...: tokens, FLOPs, memory and GPU-hours of a run, before paying them"),
    "bench": ("bench", "bench", "a few timed training steps and scoring batches of a train config on this machine"),
}

USAGE = """usage: faultllm <command> [key=value ...]   (Hydra overrides, e.g. data=tep data.path=DIR seed=1)

commands:
{commands}

Every command takes Hydra's flags too: --cfg job (print the config), --help, hydra.run.dir=DIR, -m (multirun).
Configs: {config_dir} (every key with its type, default and meaning: faultllm COMMAND --help); see README.md."""


def _usage() -> str:
    from faultllm.runtime.paths import CONFIG_DIR

    width = max(len(name) for name in COMMANDS)
    commands = "\n".join(f"  {name:<{width}}  {help_}" for name, (_, _, help_) in COMMANDS.items())
    return USAGE.format(commands=commands, config_dir=CONFIG_DIR)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _command(argv)
    except Exception as err:  # what the command's own handler (run_under_hydra) did not see: the same one line
        message, code = failure(err)
        print(f"faultllm: error: {redact(message)}", file=sys.stderr)
        return code


def failure(err: BaseException) -> tuple[str, int]:
    """The one line a failed command prints, and its exit code: a FaultLLMError's message (2: the input or the
    config), else the exception's type and first line (1). With FAULTLLM_DEBUG=1 the full trace goes to stderr
    first, with every exception it was raised from, passwords redacted."""
    from faultllm.runtime.errors import FaultLLMError, first_line

    if os.environ.get("FAULTLLM_DEBUG"):
        print(redact("".join(traceback.format_exception(err))).rstrip(), file=sys.stderr)
    if isinstance(err, FaultLLMError):
        return str(err), 2
    return f"{type(err).__name__}: {first_line(err)} (FAULTLLM_DEBUG=1 shows the full trace)", 1


def _command(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from faultllm import __version__

        print(f"faultllm {__version__}")
        return 0
    command = " ".join(argv[:2]) if argv[0] == "data" else argv[0]
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, list(COMMANDS), n=2)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        print(f"faultllm: unknown command {command!r}{hint} (faultllm --help lists them)", file=sys.stderr)
        return 2
    from faultllm.runtime.distributed import pin_first_gpu, ranks_from_srun, world_size

    ranks_from_srun()  # `srun -n 2 faultllm train ...`: the ranks torchrun would start
    # One process, one GPU, before any library can ask CUDA how many there are (bitsandbytes does on
    # import, and torch counts once): never DataParallel. hpo's workers get the GPUs listed before this.
    pin_first_gpu()
    overrides = hide_passwords(argv[len(command.split()) :])  # Hydra, its files and the job never see the password
    config_name, module, _ = COMMANDS[command]
    if any(arg in ("-h", "--help") for arg in overrides):
        from faultllm.config.help import command_help

        print(command_help(command, COMMANDS[command][2], config_name, overrides))
        return 0
    if world_size() > 1 and command != "train":
        print(f"faultllm {command}: runs in one process; only train runs under torchrun", file=sys.stderr)
        return 2
    from faultllm.config.overrides import missing_value, quote_unusual_values, rank_overrides, report_overrides

    if command == "report":
        overrides = report_overrides(overrides)
    overrides = quote_unusual_values(overrides)
    error = missing_value(overrides) or output_error(overrides) or config_error(config_name, overrides)
    if error:
        print(f"faultllm {command}: error: {redact(error)}", file=sys.stderr)
        return 2
    if world_size() > 1:
        overrides = rank_overrides(config_name, overrides)
    return run_under_hydra(command, config_name, module, overrides)


def output_error(overrides: list[str]) -> str | None:
    """Why the run directory (hydra.run.dir; hydra.sweep.dir with -m; by default under ./runs) cannot be
    written, before Hydra tries to create it."""
    from faultllm.config.overrides import given_value, is_multirun, prints_only
    from faultllm.preflight import check_writable
    from faultllm.runtime.errors import FaultLLMError

    if prints_only(overrides):
        return None
    key = "hydra.sweep.dir" if is_multirun(overrides) else "hydra.run.dir"
    try:
        check_writable(key, given_value(overrides, key) or "runs")
    except FaultLLMError as err:
        return str(err)
    return None


def config_error(config_name: str, overrides: list[str], inputs: bool = True) -> str | None:
    """The one-line reason the config of some job cannot be composed or does not validate, or (with `inputs`)
    its inputs cannot work (`faultllm.preflight`), else None. A multirun (-m) checks every job of its sweep
    before the first one runs."""
    from faultllm.config.overrides import given_value, is_multirun, one_line, prints_only, sweep_jobs

    if prints_only(overrides):
        return None
    multirun = is_multirun(overrides)
    keys = [o for o in overrides if not o.startswith("-") and not o.startswith("hydra.")]
    run_dir = None if multirun else given_value(overrides, "hydra.run.dir")
    try:
        jobs = sweep_jobs(keys) if multirun else [keys]
    except Exception as err:  # Hydra's override grammar
        return one_line(err)
    # the sweep's directory, when its jobs run on other machines (hydra/launcher=slurm)
    sweep_dir = (given_value(overrides, "hydra.sweep.dir") or "runs") if "hydra/launcher=slurm" in overrides else None
    for job in jobs:
        error = _job_error(config_name, job, Path(run_dir) if run_dir else None, sweep_dir, inputs)
        if error:
            return f"{error} (in the sweep job {' '.join(job)})" if multirun and len(jobs) > 1 else error
    return None


def _job_error(
    config_name: str, overrides: list[str], run_dir: Path | None, sweep_dir: str | None = None, inputs: bool = True
) -> str | None:
    from faultllm.config.load import compose, validate
    from faultllm.config.overrides import composition_error
    from faultllm.preflight import check, check_submission
    from faultllm.runtime.errors import FaultLLMError

    config = None
    try:
        config = validate(compose(config_name, overrides), config_name)
        if inputs:
            check(config, run_dir)
            if sweep_dir is not None:
                check_submission(config, "hydra.sweep.dir", sweep_dir)
    except Exception as err:
        message, _ = failure(err)
        if config is None and not isinstance(err, FaultLLMError):  # Hydra's override and composition errors
            return composition_error(config_name, overrides, err)
        return message
    return None


def _quiet_known_noise(progress: bool) -> None:
    """Harmless messages every run would print: bitsandbytes looks for an optional CPU kernel package,
    transformers' Trainer still calls its own renamed `is_gradient_checkpointing` under DDP, Optuna calls
    the heartbeat features it ships experimental, scikit-learn announces a change to SVC's probabilities;
    datasets draws a bar per tokenization pass. Without `progress` no library draws bars at all."""
    import datasets
    from transformers.utils import logging as transformers_logging

    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.* is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r".* is experimental \(supported from")  # Optuna's heartbeat API
    warnings.filterwarnings("ignore", message=r".*is an experimental feature")
    warnings.filterwarnings("ignore", message=r".*probability.*", module=r"sklearn\.svm.*")
    datasets.disable_progress_bars()
    if not progress:
        transformers_logging.disable_progress_bar()


def run_under_hydra(command: str, config_name: str, module: str, overrides: list[str]) -> int:
    import hydra
    from hydra.core.hydra_config import HydraConfig

    from faultllm.config.load import validate
    from faultllm.runtime.paths import CONFIG_DIR
    from faultllm.runtime.progress import use_bars
    from faultllm.runtime.threads import apply as apply_thread_budget
    from faultllm.runtime.threads import available_cores, limit_torch

    def task(cfg) -> None:
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        # the first line, before the heavy imports (torch, transformers) that take seconds
        logging.getLogger(__name__).info(f"faultllm {command} starting in {run_dir}; loading libraries")
        try:
            config = validate(cfg, config_name)  # the jobs get the typed config (faultllm.config.jobs)
            if config.progress is None:  # bars on a terminal; lines every few seconds in logs and CI
                config.progress = sys.stdout.isatty()
            use_bars(config.progress)
            threads = apply_thread_budget(available_cores(config.threads))  # sizes every pool before torch loads
            _quiet_known_noise(config.progress)
            limit_torch(threads)
            job = importlib.import_module(f"faultllm.jobs.{module}")
            job.run(config, run_dir)
        except KeyboardInterrupt:
            print(f"faultllm {command}: interrupted; finished work is kept in the run directory", file=sys.stderr)
            sys.exit(130)
        except Exception as err:
            _fail(command, *failure(err), run_dir)

    sys.argv = [f"faultllm {command}", *overrides]
    hydra.main(config_path=str(CONFIG_DIR), config_name=config_name, version_base=None)(task)()
    return 0


# What every run directory holds before its job has written anything of its own.
_BOOKKEEPING = {".hydra", "faultllm.log", "config.yaml", "run_info.json"}


def _fail(command: str, message: str, code: int, run_dir: Path) -> None:
    """One line on stderr; a run directory the failed job wrote nothing into is removed, and with it the
    command's folder above it when that is left empty (run_dir/evaluate/ of a refused evaluate)."""
    from faultllm.runtime.distributed import is_main_process

    message = redact(message)
    print(f"faultllm {command}: error: {message}", file=sys.stderr)
    if is_main_process() and run_dir.is_dir():
        if {p.name for p in run_dir.iterdir()} <= _BOOKKEEPING:
            shutil.rmtree(run_dir, ignore_errors=True)
            if run_dir.parent.name == command.split()[-1] and not any(run_dir.parent.iterdir()):
                run_dir.parent.rmdir()
        else:  # the log of the work that was done ends with why it stopped
            with (run_dir / "faultllm.log").open("a") as log_file:
                log_file.write(f"[{datetime.now():%Y-%m-%d %H:%M:%S},000][faultllm][ERROR] {message}\n")
    sys.exit(code)


if __name__ == "__main__":
    sys.exit(main())
