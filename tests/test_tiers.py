"""The test tiers (docs/testing.md): the fast tier, `pytest -m "not slow"`, exercises every module of faultllm,
and no tier but `-m gpu` selects the GPU tests."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "faultllm"


def _modules() -> set[str]:
    """Every faultllm module that holds code (a package's `__init__` holding only its docstring does not)."""
    names = set()
    for path in PACKAGE.rglob("*.py"):
        body = ast.parse(path.read_text()).body
        if path.stem == "__init__" and all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body):
            continue
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _marks_slow(decorators: list[ast.expr]) -> bool:
    """`@pytest.mark.slow` or `pytestmark = [..., pytest.mark.slow]`."""
    return any(isinstance(n, ast.Attribute) and n.attr == "slow" for d in decorators for n in ast.walk(d))


def _named(node: ast.AST, modules: set[str]) -> set[str]:
    """The faultllm modules an import names; `python -m faultllm` in a command line names `faultllm.__main__`."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names} & modules
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return ({node.module} | {f"{node.module}.{alias.name}" for alias in node.names}) & modules
    if isinstance(node, ast.List | ast.Tuple):
        words = [n.value for n in node.elts if isinstance(n, ast.Constant)]
        return (
            {"faultllm.__main__"} if any(words[i : i + 2] == ["-m", "faultllm"] for i in range(len(words))) else set()
        )
    return set()


def _fast_imports(tree: ast.Module, modules: set[str]) -> set[str]:
    """The modules a test file's fast code names: outside any function marked slow."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and _marks_slow(node.decorator_list):
            return
        found.update(_named(node, modules))
        for child in ast.iter_child_nodes(node):
            visit(child)

    slow_file = [
        n.value
        for n in tree.body
        if isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in n.targets)
    ]
    if not _marks_slow(slow_file):
        visit(tree)
    return found


def test_every_module_is_imported_by_a_fast_test():
    """A module only slow tests reach would go unchecked by the tier developers run after every change."""
    modules = _modules()
    reached = set().union(
        *(_fast_imports(ast.parse(p.read_text()), modules) for p in (ROOT / "tests").glob("test_*.py"))
    )
    assert modules - reached == set(), "modules no fast test imports: give each a quick unit test"


def test_the_reach_check_ignores_slow_code():
    modules = {"faultllm.a", "faultllm.b", "faultllm.c", "faultllm.__main__"}
    source = """
import faultllm.a
@pytest.mark.slow
def test_slow():
    from faultllm import b
def test_fast():
    run([sys.executable, "-m", "faultllm", "--help"])
"""
    assert _fast_imports(ast.parse(source), modules) == {"faultllm.a", "faultllm.__main__"}
    assert _fast_imports(ast.parse("pytestmark = pytest.mark.slow\nimport faultllm.c\n"), modules) == set()


@pytest.mark.parametrize(
    ("expression", "gpu"),
    [(None, False), ("not gpu", False), ("not slow", False), ("gpu", True), ("gpu and not slow", True)],
)
def test_only_an_expression_naming_gpu_selects_the_gpu_tests(expression, gpu):
    from tests.conftest import selects_gpu

    assert selects_gpu(expression) is gpu
