"""The command line as Hydra overrides: report's positional run directories, quoting, a key given without a
value, the jobs of a multirun sweep, the run directory every torchrun rank shares, and Hydra's own errors
about an override as one line naming the closest valid key or option."""

from __future__ import annotations

import re

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper  # the sweeper Hydra runs with -m
from hydra.core.override_parser.overrides_parser import OverridesParser

from faultllm.config.fields import suggestion
from faultllm.config.load import config_keys, load_config
from faultllm.runtime.distributed import agree_on_run_dir, is_main_process
from faultllm.runtime.paths import CONFIG_DIR


def rank_overrides(config_name: str, overrides: list[str]) -> list[str]:
    """Under torchrun/accelerate: one run directory for all ranks (the main one's, unless given);
    only the main process keeps Hydra's files and the log."""
    if not any(o.startswith("hydra.run.dir=") for o in overrides):
        config = load_config(config_name, [o for o in overrides if not o.startswith(("hydra.", "-"))])
        timeout = config.trainer.ddp_timeout  # the process group starts here, long before the Trainer
        overrides = [*overrides, f"hydra.run.dir={agree_on_run_dir(f'runs/{config_name}', timeout)}"]
    if not is_main_process():
        overrides = [*overrides, "hydra.output_subdir=null", "hydra/job_logging=disabled"]
    return overrides


# Hydra flags that only print: their config is not checked first.
_PRINT_FLAGS = ("--cfg", "-c", "--info", "-i", "--resolve", "--package", "-p", "--shell-completion", "-sc")


def prints_only(overrides: list[str]) -> bool:
    """A Hydra flag that prints the config instead of running the job."""
    return any(arg.split("=")[0] in _PRINT_FLAGS for arg in overrides)


def is_multirun(overrides: list[str]) -> bool:
    """-m: one job per combination of the swept values."""
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


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The overrides of every job of a basic multirun sweep (`a=1,2 b=x,y`: four jobs)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    return BasicSweeper.split_arguments(parsed, None)[0]


def composition_error(config_name: str, overrides: list[str], err: Exception) -> str:
    """Hydra's error as one line, with the closest valid names for a misspelled key or option."""
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
    return one_line(err)


_TYPE_ERRORS = {
    "converted to Integer": "expected an integer", "converted to Float": "expected a number",
    "is not a valid bool": "expected true or false",
}  # fmt: skip


def one_line(err: Exception) -> str:
    """Hydra's error message on one line, without the config search path it appends."""
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


def given_value(overrides: list[str], key: str) -> str | None:
    """The value of the last `key=...` override as Hydra reads it (unquoted), if one is given."""
    given = next((o for o in reversed(overrides) if o.startswith(f"{key}=")), None)
    if given is None:
        return None
    try:
        return str(OverridesParser.create().parse_override(given).value())
    except Exception:  # Hydra's grammar error: composing the config reports it
        return given.partition("=")[2]
