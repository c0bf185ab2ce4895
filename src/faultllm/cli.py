"""`faultllm <command> [hydra overrides]`: a thin dispatcher onto Hydra-configured jobs.

Heavy libraries (torch, transformers, peft, even hydra) are imported only once a
command runs, so `faultllm --help` answers at once.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import os
import re
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
        print(command_help(command, config_name, overrides))
        return 0
    if world_size() > 1 and command != "train":
        print(f"faultllm {command}: runs in one process; only train runs under torchrun", file=sys.stderr)
        return 2
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


def rank_overrides(config_name: str, overrides: list[str]) -> list[str]:
    """Under torchrun/accelerate: one run directory for all ranks (the main one's, unless given);
    only the main process keeps Hydra's files and the log."""
    from faultllm.config.load import load_config
    from faultllm.runtime.distributed import agree_on_run_dir, is_main_process

    if not any(o.startswith("hydra.run.dir=") for o in overrides):
        config = load_config(config_name, [o for o in overrides if not o.startswith(("hydra.", "-"))])
        timeout = config.trainer.ddp_timeout  # the process group starts here, long before the Trainer
        overrides = [*overrides, f"hydra.run.dir={agree_on_run_dir(f'runs/{config_name}', timeout)}"]
    if not is_main_process():
        overrides = [*overrides, "hydra.output_subdir=null", "hydra/job_logging=disabled"]
    return overrides


def command_help(command: str, config_name: str, overrides: list[str] | None = None) -> str:
    """What the command does (the opening comment of its config) and every key it reads: type, default (as
    composed with the given overrides) and meaning, from `faultllm.config.schema`."""
    from faultllm.config.load import CONFIG_DIR
    from faultllm.config.schema import JOBS, key_help

    path = CONFIG_DIR / f"{config_name}.yaml"
    header = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line.lstrip("# ").rstrip())
    defaults = _composed_values(config_name, [o for o in overrides or [] if o not in ("-h", "--help")])
    keys = [
        f"\n{row.key}  {row.description}" if row.group
        else f"  {row.key} ({row.kind}; {_default(defaults, row.key)}): {row.description}"
        for row in key_help(JOBS[config_name])
    ]  # fmt: skip
    return "\n".join([
        f"faultllm {command}: {COMMANDS[command][2]}", "", *header, "",
        f"keys (set any with key=value; defaults from {path} and the overrides given):", *keys, "",
        f"faultllm {command} --cfg job [key=value ...] prints the whole composed config.",
    ])  # fmt: skip


def _composed_values(config_name: str, overrides: list[str]) -> dict:
    """The command's config as plain values, interpolations unresolved; without the overrides if they fail."""
    from omegaconf import OmegaConf

    from faultllm.config.load import compose

    try:
        return OmegaConf.to_container(compose(config_name, overrides), resolve=False)
    except Exception:  # a bad override: the defaults still answer --help
        return OmegaConf.to_container(compose(config_name), resolve=False)


def _default(values: dict, key: str, width: int = 60) -> str:
    """`default VALUE` as it is written on the command line (null, true, [a, b]), cut to `width` characters;
    `required` for a key without one."""
    value = values
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value == "???":
        return "required"
    text = _yaml(value)
    return "default " + (text if len(text) <= width else text[: width - 3] + "...")


def _yaml(value: object) -> str:
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, list):
        return "[" + ", ".join(map(_yaml, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in value.items()) + "}"
    return str(value)


# Hydra flags that only print: their config is not checked first.
_PRINT_FLAGS = ("--cfg", "-c", "--info", "-i", "--resolve", "--package", "-p", "--shell-completion", "-sc")


def _prints_only(overrides: list[str]) -> bool:
    return any(arg.split("=")[0] in _PRINT_FLAGS for arg in overrides)


def _multirun(overrides: list[str]) -> bool:
    return any(arg in ("-m", "--multirun") for arg in overrides)


def missing_value(overrides: list[str]) -> str | None:
    """An option given without its value: `data.path=` would mean an empty string, `--out` last the current
    directory."""
    for arg in overrides:
        if arg == "--out":
            return "--out needs a directory: faultllm report RUN_DIR... --out DIR"
        key, equals, value = arg.partition("=")
        if equals and not value.strip() and not key.startswith("-"):
            return f"{key}= has no value; pass {key}=VALUE (or {key}=null for none)"
    return None


def output_error(overrides: list[str]) -> str | None:
    """Why the run directory (hydra.run.dir; hydra.sweep.dir with -m; by default under ./runs) cannot be
    written, before Hydra tries to create it."""
    from faultllm.preflight import check_writable
    from faultllm.runtime.errors import FaultLLMError

    if _prints_only(overrides):
        return None
    key = "hydra.sweep.dir" if _multirun(overrides) else "hydra.run.dir"
    try:
        check_writable(key, _given(overrides, key) or "runs")
    except FaultLLMError as err:
        return str(err)
    return None


def config_error(config_name: str, overrides: list[str], inputs: bool = True) -> str | None:
    """The one-line reason the config of some job cannot be composed or does not validate, or (with `inputs`)
    its inputs cannot work (`faultllm.preflight`), else None. A multirun (-m) checks every job of its sweep
    before the first one runs."""
    if _prints_only(overrides):
        return None
    multirun = _multirun(overrides)
    keys = [o for o in overrides if not o.startswith("-") and not o.startswith("hydra.")]
    run_dir = None if multirun else _given(overrides, "hydra.run.dir")
    try:
        jobs = sweep_jobs(keys) if multirun else [keys]
    except Exception as err:  # Hydra's override grammar
        return _one_line(err)
    # the sweep's directory, when its jobs run on other machines (hydra/launcher=slurm)
    sweep_dir = (_given(overrides, "hydra.sweep.dir") or "runs") if "hydra/launcher=slurm" in overrides else None
    for job in jobs:
        error = _job_error(config_name, job, Path(run_dir) if run_dir else None, sweep_dir, inputs)
        if error:
            return f"{error} (in the sweep job {' '.join(job)})" if multirun and len(jobs) > 1 else error
    return None


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The overrides of every job of a basic multirun sweep (`a=1,2 b=x,y`: four jobs)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper  # the sweeper Hydra runs with -m
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return BasicSweeper.split_arguments(parsed, None)[0]


def _job_error(
    config_name: str, overrides: list[str], run_dir: Path | None, sweep_dir: str | None = None, inputs: bool = True
) -> str | None:
    from faultllm.config.load import compose, validate
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


def composition_error(config_name: str, overrides: list[str], err: Exception) -> str:
    """Hydra's error as one line, with the closest valid names for a misspelled key or option."""
    from faultllm.config.load import CONFIG_DIR, config_keys
    from faultllm.config.schema import suggestion

    no_value = re.search(r"Error parsing override '([^']*)'\s+missing EQUAL", str(err))
    if no_value:
        return f"{no_value[1]}: no value given; pass {no_value[1]}=VALUE"
    missing_option = re.search(r"Could not find '([\w/]+)/([^']+)'", str(err))
    if missing_option:
        group, option = missing_option.groups()
        options = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
        return f"{group}={option}: no such option; expected one of {', '.join(options)}{suggestion(option, options)}"
    cause = err.__cause__
    key = getattr(cause, "full_key", None)
    if key and " not in " in str(cause):  # a key the command's schema does not have
        parent = key.rpartition(".")[0]
        keys = [f"{parent}.{name}" if parent else name for name in config_keys(config_name, parent)]
        return f"{key}: no such config key{suggestion(key, keys)}"
    if key:  # a value of the wrong type
        value = next((o.partition("=")[2] for o in overrides if o.partition("=")[0].lstrip("+~") == key), None)
        reason = str(cause).splitlines()[0]
        for found, expected in _TYPE_ERRORS.items():
            if found in reason:
                reason = expected
        return f"{key}={value!r}: {reason}"
    return _one_line(err)


_TYPE_ERRORS = {
    "converted to Integer": "expected an integer", "converted to Float": "expected a number",
    "is not a valid bool": "expected true or false",
}  # fmt: skip


def _one_line(err: Exception) -> str:
    lines = str(err).strip().split("Config search path")[0].splitlines()
    return " ".join(line.strip() for line in lines if line.strip())


def report_overrides(args: list[str]) -> list[str]:
    """`report DIR... [--out DIR]` as Hydra overrides: run_dirs=[...] and hydra.run.dir."""
    run_dirs, overrides = [], []
    args = iter(args)
    for arg in args:
        if arg == "--out":
            out = next(args, None)
            if out is None or out.startswith("-"):  # refused by `missing_value`
                overrides += ["--out", *([out] if out else [])]
            else:
                overrides.append(f"hydra.run.dir={_quoted(out)}")
        elif "=" in arg or arg.startswith("-"):
            overrides.append(arg)
        else:
            run_dirs.append(arg)
    if run_dirs:
        overrides.insert(0, f"run_dirs=[{','.join(map(_quoted, run_dirs))}]")
    return overrides


def quote_unusual_values(overrides: list[str]) -> list[str]:
    """Hydra's override grammar takes no non-ASCII character unquoted, yet `data.path=/data/düse 1.csv` is an
    ordinary path: such a value that does not parse as it is becomes one quoted string."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser, quoted = OverridesParser.create(), []
    for arg in overrides:
        key, equals, value = arg.partition("=")
        if equals and not value.isascii() and not key.startswith("-"):
            try:
                parser.parse_override(arg)
            except Exception:  # Hydra's grammar error
                arg = f"{key}={_quoted(value)}"
        quoted.append(arg)
    return quoted


def _quoted(value: str) -> str:
    """`value` as a single-quoted Hydra string: quotes escaped, and the backslashes before a quote or the end
    (Hydra reads a backslash elsewhere as itself)."""
    return "'" + re.sub(r"(\\*)('|$)", lambda m: m[1] * 2 + ("\\'" if m[2] else ""), value) + "'"


def _given(overrides: list[str], key: str) -> str | None:
    """The value of the last `key=...` override as Hydra reads it (unquoted), if one is given."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    given = next((o for o in reversed(overrides) if o.startswith(f"{key}=")), None)
    if given is None:
        return None
    try:
        return str(OverridesParser.create().parse_override(given).value())
    except Exception:  # Hydra's grammar error: composing the config reports it
        return given.partition("=")[2]


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

    from faultllm.config.load import CONFIG_DIR, validate
    from faultllm.runtime.progress import use_bars
    from faultllm.runtime.threads import apply as apply_thread_budget
    from faultllm.runtime.threads import available_cores, limit_torch

    def task(cfg) -> None:
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        # the first line, before the heavy imports (torch, transformers) that take seconds
        logging.getLogger(__name__).info(f"faultllm {command} starting in {run_dir}; loading libraries")
        try:
            config = validate(cfg, config_name)  # the jobs get the typed config (faultllm.config.schema)
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
