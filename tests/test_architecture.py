"""The layering a maintainer can rely on: jobs above the library, no import cycles, short functions."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "faultllm"
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 400  # one concept per module: past this, a module holds two


def _modules() -> dict[str, ast.Module]:
    trees = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        trees[name] = ast.parse(path.read_text())
    return trees


def _internal_imports(tree: ast.Module, modules: set[str]) -> list[tuple[str, bool]]:
    """(imported faultllm module, imported inside a function?) for every import statement, nested ones too."""
    found = []
    inside = {
        id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef) for n in ast.walk(f)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            if name in modules and name != "faultllm":
                found.append((name, id(node) in inside))
    return found


def _graph() -> dict[str, set[str]]:
    trees = _modules()
    return {name: {target for target, _ in _internal_imports(tree, set(trees))} for name, tree in trees.items()}


def test_no_import_cycles_counting_function_level_imports():
    graph = _graph()
    visiting, done = [], set()

    def visit(module: str) -> None:
        if module in done:
            return
        assert module not in visiting, "import cycle: " + " -> ".join([*visiting[visiting.index(module) :], module])
        visiting.append(module)
        for target in sorted(graph[module]):
            visit(target)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


# The pipeline's packages, lowest first: a module imports only its own package (without cycles) and lower
# ones. The jobs, one per command, sit above the library; the CLI above the jobs.
PACKAGES = [
    "runtime",  # errors, paths, files, secrets, progress, threads, processes and GPUs
    "config",  # what every config key is; Hydra's composition -> the typed config
    "data",  # tables in, splits out
    "prompts",  # a row as a question, a model's prompt, in-context shots
    "run",  # run directories, their typed records, SLURM launches
    "compare",  # baselines, metrics, calibration, statistics, tables, plots
    "llm",  # model sources, QLoRA build, memory, training, scoring, decoding, explaining
    "search",  # HPO: studies, schedules, the search and its refit
    "cost",  # FLOPs, bench, plan
    "preflight",  # the CLI's checks before a job, with no model
    "jobs",  # faultllm.jobs.*
    "cli",
    "__main__",
]


def _package(module: str) -> str:
    return module.removeprefix("faultllm.").split(".")[0]


def test_every_module_imports_only_its_package_or_lower_ones_and_no_job_imports_another():
    graph = _graph()
    for module, targets in graph.items():
        if module == "faultllm":
            continue
        for target in targets:
            if module.startswith("faultllm.jobs") and target == "faultllm.jobs":
                continue
            rank, target_rank = PACKAGES.index(_package(module)), PACKAGES.index(_package(target))
            assert target_rank < rank or (target_rank == rank and _package(module) != "jobs"), (
                f"{module} imports {target}"
            )
        if module.startswith("faultllm.jobs."):
            assert not {t for t in targets if t.startswith("faultllm.jobs.")}, f"{module} imports another job"


def test_every_package_is_in_the_order():
    packages = {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").exists()}
    modules = {path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__"}
    assert packages | modules == set(PACKAGES)


def test_docs_architecture_lists_the_subpackages_in_the_package_order():
    page = (PACKAGE.parents[1] / "docs" / "architecture.md").read_text()
    table = page.split("## Packages, lowest first\n", 1)[1].split("\n## ", 1)[0]
    named = re.findall(r"^\| \d+ \| `([\w./]+)` \|", table, re.M)
    subpackages = {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").exists()}
    assert {name.removesuffix("/") for name in named if name.endswith("/")} == subpackages
    assert [name.removesuffix("/").removesuffix(".py") for name in named] == PACKAGES


def test_only_the_jobs_the_config_and_the_run_directory_see_hydras_config():
    for path in PACKAGE.rglob("*.py"):
        module = path.relative_to(PACKAGE).as_posix()
        if module.startswith(("jobs/", "config/")) or module in ("run/directory.py", "cli.py"):
            continue
        text = path.read_text()
        assert "DictConfig" not in text and "OmegaConf" not in text, module


def test_the_library_never_imports_the_jobs_and_jobs_import_no_cli():
    for module, targets in _graph().items():
        if not module.startswith(("faultllm.jobs", "faultllm.cli", "faultllm.__main__")):
            assert not {t for t in targets if t.startswith("faultllm.jobs")}, module
        assert "faultllm.cli" not in targets or module == "faultllm.__main__", module


def test_internal_imports_are_at_the_top_of_the_file():
    trees = _modules()
    lazy = {
        (module, target)
        for module, tree in trees.items()
        for target, in_function in _internal_imports(tree, set(trees))
        if in_function
    }
    # cli imports its job (and hydra) only once a command runs, so `faultllm --help` answers at once
    assert {module for module, _ in lazy} <= {"faultllm.cli"}, sorted(lazy)


def test_no_function_is_longer_than_a_screen():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, long


def test_no_module_is_longer_than_one_concept():
    long = {
        str(path.relative_to(PACKAGE)): lines
        for path in PACKAGE.rglob("*.py")
        if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, long
