"""What a person reads: the README and docs/ (short, linked, every command line composes), `faultllm
COMMAND --help` (every key with type, default and meaning) and the words a summary puts where a number
cannot be."""

from __future__ import annotations

import functools
import logging
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from faultllm.cli import COMMANDS, config_error
from faultllm.compare.statistics import aggregate
from faultllm.compare.tables import summary_display
from faultllm.config.help import key_help
from faultllm.config.jobs import JOBS
from faultllm.config.load import compose, load_config
from faultllm.config.overrides import report_overrides, sweep_jobs

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# What the pages write for a value of the reader's own: stand-ins the config accepts.
PLACEHOLDERS = {"DATE": "2026-01-01_00-00-00", "DIR": "/tmp/faultllm-docs", "ORG/MODEL": "org/model"}
FENCE = re.compile(r"```(\w*)\n(.*?)```", re.S)


def documented_calls(page: Path) -> list[tuple[str, str, list[str]]]:
    """(line, command, arguments) of every `faultllm ...` line in the page's ```bash blocks."""
    calls = []
    for language, block in FENCE.findall(page.read_text()):
        for line in block.replace("\\\n", " ").splitlines() if language == "bash" else ():
            words = shlex.split(line, comments=True)
            start = next((i for i, w in enumerate(words) if w == "faultllm" or w.endswith("/faultllm")), None)
            if start is None or start + 1 == len(words):
                continue
            rest = words[start + 1 :]
            command = " ".join(rest[:2]) if rest[0] == "data" else rest[0]
            args = [_placeholder(arg) for arg in rest[len(command.split()) :] if arg != "..."]
            calls.append((line.strip(), command, args))
    return calls


def _placeholder(arg: str) -> str:
    for placeholder, value in PLACEHOLDERS.items():
        arg = re.sub(rf"\b{re.escape(placeholder)}\b", value, arg)
    return arg


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", "")).replace(" ", "-")


def test_readme_is_short_with_contents_and_the_ci_test_command():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    contents = readme.split("## Contents\n", 1)[1].split("\n## ", 1)[0]
    assert contents.count("- [") >= 4 and all(
        f"(#{_slug(h)})" in contents for h in re.findall(r"^## (.+)", readme, re.M)[1:]
    )
    install = "python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 -e '.[dev]'"
    ci = (ROOT / ".ci" / "run").read_text()
    assert install in readme and install in ci
    assert ".venv/bin/pytest -q" in readme and "\n.venv/bin/pytest -q\n" in ci  # the full suite
    fast = '.venv/bin/pytest -q -m "not slow"'  # the fast tier, inside the full suite in CI
    assert fast in (ROOT / "docs" / "testing.md").read_text()
    assert ".venv/bin/faultllm train model=tiny" in readme


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    text = FENCE.sub("", page.read_text())
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.name}: {target}"
        if anchor:
            headings = re.findall(r"^#+ (.+)", FENCE.sub("", resolved.read_text()), re.M)
            assert anchor in {_slug(h) for h in headings}, f"{page.name}: {target}"


@functools.cache
def _config_error(config_name: str, args: tuple[str, ...]) -> str | None:
    """The CLI's check of a documented line's config (not of its inputs: the documented paths and models are
    the reader's); a multirun by its first job (the keys are the same in every job)."""
    if "-m" in args:
        args = tuple(sweep_jobs([arg for arg in args if not arg.startswith("-")])[0])
    return config_error(config_name, list(args), inputs=False)


@pytest.mark.slow  # composes some 70 configs
@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_documented_command_line_composes(page, monkeypatch):
    monkeypatch.setenv("FAULTLLM_STORAGE", "postgresql://user@db-host/faultllm")
    for line, command, args in documented_calls(page):
        assert command in COMMANDS, f"{page.name}: {line}"
        args = report_overrides(args) if command == "report" else args
        error = _config_error(COMMANDS[command][0], tuple(args))
        assert error is None, f"{page.name}: {line}: {error}"


def test_the_recipes_and_the_two_machine_hpo_example_are_among_the_checked_lines():
    calls = {page.name: documented_calls(page) for page in PAGES}
    recipes = [(command, args) for _, command, args in calls["recipes.md"]]
    for command in ("hpo", "baselines", "train", "data prepare"):
        for protocol in (
            {"experiment=hst_paper", "data.path=HST.csv"},
            {"experiment=tep_paper", "data.path=/data/rieth"},
        ):
            assert any(c == command and protocol <= set(a) for c, a in recipes), (command, protocol)
    shared = [args for _, command, args in calls["scaling_out.md"] if command == "hpo" and "hpo.worker_index=4" in args]
    assert shared and all("hpo.storage=postgresql://user@db-host/faultllm" in args for args in shared)


def _keys(tree: dict, groups: set[str], prefix: str = "") -> set[str]:
    """The dotted keys of a composed config, descending into the schema's groups only (not into dict values)."""
    keys = set()
    for key, value in tree.items():
        name = f"{prefix}{key}"
        keys |= _keys(value, groups, f"{name}.") if name in groups else {name}
    return keys


def test_train_help_lists_lora_r_with_type_default_and_meaning_without_importing_torch():
    code = "import sys; from faultllm.cli import main; main(['train', 'model=tiny', '--help']); print('torch' in sys.modules)"
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "  lora.r (int >= 1; default 16): rank of each adapter's low-rank update" in shown.splitlines()
    assert (
        "  trainer.epochs (int >= 0; default 8): 0: no training;" in shown
    )  # model=tiny's (experiment=cpu_smoke), not the schema's
    assert "  eval.mode (one of restricted, generate; default restricted): restricted:" in shown
    assert "Traceback" not in shown and shown.splitlines()[-1] == "False"  # no torch: --help stays instant


def test_every_key_of_every_command_is_described_in_its_help():
    from omegaconf import OmegaConf

    for config_name, job in JOBS.items():
        rows = key_help(job)
        assert all(row.description for row in rows), [row.key for row in rows if not row.description]
        composed = OmegaConf.to_container(compose(config_name), resolve=False)
        groups = {row.key.removesuffix(".*") for row in rows if row.group}
        assert _keys(composed, groups) == {row.key for row in rows if not row.group}, config_name
    assert {config for config, _, _ in COMMANDS.values()} == set(JOBS)


def test_an_untrained_run_says_it_did_not_train(caplog):
    from faultllm.llm.finetune import _print_summary

    cfg = load_config("train", ["model=tiny", "trainer.epochs=0"])
    split = {"accuracy": 0.25, "macro_f1": 0.1, "loss": 1.5}
    hardware = {"quantization": "none", "attn_implementation": "sdpa", "gpu_name": None, "device": "cpu"}
    metrics = {"hardware": hardware, "effective_batch_size": 8, "processes": 1, "train": split, "test": split}
    with caplog.at_level(logging.INFO, logger="faultllm"):
        _print_summary(cfg, metrics, 0.04, "runs/train/x")
    assert "training time             no training (epochs=0)" in caplog.text and "0.0 s" not in caplog.text


def test_one_seed_says_why_it_has_no_interval():
    runs = pd.DataFrame({
        "Model": ["A", "B", "B"], "Train rows": 40, "Test rows": 20, "Test Accuracy": [0.5, 0.6, 0.7],
        "Test macro-F1": [0.5, 0.6, 0.7], "Train Accuracy": 1.0, "Seconds": 1.0,
    })  # fmt: skip
    shown = summary_display(aggregate(runs))
    assert shown["95% CI"][0] == "n/a (1 seed)" and shown["95% CI"][1].startswith("[")
