"""What `faultllm COMMAND --help` lists: every key of the command's dataclass with its type, its default and
its meaning, read from the comments on the field in the module that defines it."""

from __future__ import annotations

import ast
import functools
import io
import sys
import tokenize
import types
import typing
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

from faultllm.config.jobs import JOBS
from faultllm.config.load import unresolved
from faultllm.runtime.paths import CONFIG_DIR


def command_help(command: str, summary: str, config_name: str, overrides: list[str] | None = None) -> str:
    """What the command does (`summary`, then the opening comment of its config) and every key it reads: type,
    default (as composed with the given overrides) and meaning."""
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
        f"faultllm {command}: {summary}", "", *header, "",
        f"keys (set any with key=value; defaults from {path} and the overrides given):", *keys, "",
        f"faultllm {command} --cfg job [key=value ...] prints the whole composed config.",
    ])  # fmt: skip


def _composed_values(config_name: str, overrides: list[str]) -> dict:
    """The command's config as plain values, interpolations unresolved; without the overrides if they fail."""
    try:
        return unresolved(config_name, overrides)
    except Exception:  # a bad override: the defaults still answer --help
        return unresolved(config_name)


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


@dataclass(frozen=True)
class KeyHelp:
    """One line of `faultllm COMMAND --help`: a key (or, with `group`, a heading for a group of keys)."""

    key: str  # dotted, e.g. lora.r
    kind: str  # its type with its allowed values or range, e.g. "int >= 1"; "" for a group
    description: str  # the comments on the field where it is defined; a group's: its dataclass's docstring
    group: bool = False


def key_help(job: type, prefix: str = "") -> list[KeyHelp]:
    """Every key of a command's dataclass in declaration order, each group heading the keys under it."""
    hints, rows = typing.get_type_hints(job), []
    for spec in fields(job):
        hint, key = hints[spec.name], f"{prefix}{spec.name}"
        if is_dataclass(hint):
            rows += [KeyHelp(f"{key}.*", "", _first_line(hint.__doc__), group=True), *key_help(hint, f"{key}.")]
        else:
            owner = next(c for c in job.__mro__ if spec.name in getattr(c, "__annotations__", {}))  # RunSettings' keys
            described = _field_comments(owner.__module__).get((owner.__name__, spec.name), "")
            rows.append(KeyHelp(key, _kind(spec, hint), described))
    return rows


def _first_line(doc: str | None) -> str:
    return " ".join((doc or "").split("\n\n")[0].split())


def _kind(spec: Any, hint: Any) -> str:
    """`one of a, b`, `int >= 1`, `str or null`: what a key accepts, as its checks see it."""
    meta = spec.metadata
    if "choices" in meta:
        return "one of " + ", ".join(map(str, meta["choices"])) + (" or null" if meta["null"] else "")
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    nullable = type(None) in args
    names = " | ".join(_type_name(a) for a in args if a is not type(None))
    if "low" in meta:
        names += f" {'>' if meta['strict'] else '>='} {meta['low']:g}" + (
            f", < {meta['below']:g}" if meta["below"] is not None else ""
        )
    return names.replace("Any", "any") + (" or null" if nullable else "")


def _type_name(hint: Any) -> str:
    return (str(hint) if typing.get_args(hint) else getattr(hint, "__name__", str(hint))).replace("typing.", "")


@functools.cache
def _field_comments(module: str) -> dict[tuple[str, str], str]:
    """(class, field) -> the comments that describe a field in the source of `module`: the comment lines just
    above it, those on its own lines and the indented ones (`#   ...`) that continue them."""
    source = Path(sys.modules[module].__file__).read_text()
    comments = {
        token.start[0]: token.string
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT and "fmt:" not in token.string
    }
    lines, described = source.splitlines(), {}
    for node in ast.parse(source).body:
        for stmt in node.body if isinstance(node, ast.ClassDef) else ():
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                above = _comment_lines(stmt.lineno - 1, -1, comments, lines, continuation=False)
                after = _comment_lines(stmt.end_lineno + 1, 1, comments, lines, continuation=True)
                own = [comments[row] for row in range(stmt.lineno, stmt.end_lineno + 1) if row in comments]
                text = " ".join(c.lstrip("#").strip() for c in [*reversed(above), *own, *after])
                described[(node.name, stmt.target.id)] = text
    return described


def _comment_lines(row: int, step: int, comments: dict, lines: list[str], *, continuation: bool) -> list[str]:
    """The comment-only lines from `row` on (step -1: upwards), that are (or are not) `#   ` continuations."""
    found = []
    while row in comments and lines[row - 1].lstrip().startswith("#"):
        if comments[row].startswith("#   ") != continuation:
            break
        found.append(comments[row])
        row += step
    return found
