"""The building blocks of a config dataclass: `one_of` and `at_least` fields, the checks they declare, and
`ConfigError`, which names the key, the value and what was expected."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import field, fields
from typing import Any

from faultllm.runtime.errors import FaultLLMError

MISSING = "???"  # Hydra's marker of a required value


class ConfigError(FaultLLMError):
    """A value that cannot work. `key` is relative to the dataclass that raised it; `load.build` adds the path."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}{message}")
        self.key, self.message = key, message

    def under(self, prefix: str) -> ConfigError:
        return ConfigError(f"{prefix}.{self.key}", self.message)


def suggestion(value: object, allowed: Iterable[object]) -> str:
    """' (did you mean X?)' for a near miss, else ''. Dotted keys are compared by their last part."""
    allowed = [str(a) for a in allowed]
    last = {a.rpartition(".")[2]: a for a in allowed}
    close = difflib.get_close_matches(str(value).rpartition(".")[2], list(last), n=1, cutoff=0.6)
    return f" (did you mean {last[close[0]]}?)" if close else ""


_FIRST = object()


def one_of(*choices: object, default: object = _FIRST, nullable: bool = False) -> Any:
    """A field whose value must be one of `choices` (None too with `nullable`); the first is the default."""
    return field(default=choices[0] if default is _FIRST else default, metadata={"choices": choices, "null": nullable})


def at_least(default: float | None, low: float, *, strict: bool = False, below: float | None = None) -> Any:
    """A numeric field >= low (> low with `strict`), and < below when given; None allowed when the default is."""
    return field(default=default, metadata={"low": low, "strict": strict, "below": below})


def _check_choice(name: str, value: object, meta: dict) -> None:
    choices = meta["choices"]
    if value is None and meta["null"]:
        return
    if value not in choices:
        shown = ", ".join(str(c) for c in choices) + (" or null" if meta["null"] else "")
        raise ConfigError(name, f"={value!r}: expected one of {shown}{suggestion(value, choices)}")


def _check_range(name: str, value: object, meta: dict) -> None:
    if value is None:
        return
    low, strict, below = meta["low"], meta["strict"], meta["below"]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(name, f"={value!r}: expected a number")
    if (value <= low) if strict else (value < low):
        raise ConfigError(name, f"={value}: expected {'>' if strict else '>='} {low:g}")
    if below is not None and value >= below:
        raise ConfigError(name, f"={value}: expected < {below:g}")


def check_fields(obj: object) -> None:
    """The choices and ranges declared by `one_of` / `at_least` on a dataclass instance."""
    for spec in fields(obj):
        value = getattr(obj, spec.name)
        if "choices" in spec.metadata:
            _check_choice(spec.name, value, spec.metadata)
        elif "low" in spec.metadata:
            _check_range(spec.name, value, spec.metadata)


def check_each(name: str, values: Iterable, allowed: Iterable[str]) -> None:
    """Every one of a list-valued key's `values` is in `allowed` (baselines.models, trainer.report_to)."""
    allowed = tuple(allowed)
    for value in values:
        if value not in allowed:
            raise ConfigError(
                name, f": unknown {value!r}; expected some of {', '.join(allowed)}{suggestion(value, allowed)}"
            )
