"""Imports point down: every kmnlib module's imports, read from its source (ast, nothing imported),
against the layer rules of docs/DESIGN.md.

* nothing outside ``kmnlib/study/`` imports ``kmnlib.study`` (the notebooks' layer is the top);
* ``kmnlib/analysis/`` takes what it needs as arguments (no study);
* ``kmnlib/model/`` imports no training, study, analysis or inference module;
* ``kmnlib/memory.py`` (the paper's read) imports nothing from kmnlib but ``kmnlib.config``.

Imports inside functions, under ``if TYPE_CHECKING:`` and by ``importlib.import_module("...")``
count as well.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from kmnlib.config import REPO_ROOT

PACKAGE = REPO_ROOT / "kmnlib"
INFERENCE = ("kmnlib.inference", "kmnlib.predict", "kmnlib.propagation")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(source: str, module: str, *, is_package: bool = False) -> set[str]:
    """Dotted names ``module``'s source imports: ``import a.b`` → ``a.b``; ``from a import b`` →
    ``a.b`` (a submodule or a name in ``a``: a prefix test covers both); relative imports resolved
    against ``module``'s package; ``importlib.import_module("a.b")`` / ``__import__("a.b")`` → ``a.b``."""
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(parent + ([base] if base else []))
            names |= {f"{base}.{alias.name}" for alias in node.names}
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name)
                       and node.func.id in ("import_module", "__import__")))):
            names.add(node.args[0].value)
    return names


def under(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations(module: str, names: set[str]) -> list[str]:
    """Each import of ``module`` that breaks a layer rule, with the rule."""
    out = []
    for name in sorted(names):
        if not under(module, "kmnlib.study") and under(name, "kmnlib.study"):
            out.append(f"{module} imports {name}: only kmnlib.study may import kmnlib.study")
        if under(module, "kmnlib.model") and under(name, "kmnlib.training", "kmnlib.study",
                                                    "kmnlib.analysis", *INFERENCE):
            out.append(f"{module} imports {name}: the model imports no training, study, "
                       f"analysis or inference module")
        if module == "kmnlib.memory" and under(name, "kmnlib") and not under(name, "kmnlib.config"):
            out.append(f"{module} imports {name}: memory.py imports nothing from kmnlib but config")
    return out


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_the_package_is_read() -> None:
    names = {module_name(p) for p in MODULES}
    assert {"kmnlib", "kmnlib.memory", "kmnlib.model.network", "kmnlib.analysis.loss_maps",
            "kmnlib.study.session", "kmnlib.training.trainer"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_layers(path: Path) -> None:
    module = module_name(path)
    names = imported(path.read_text(encoding="utf-8"), module, is_package=path.name == "__init__.py")
    assert violations(module, names) == []


def test_the_checker_sees_every_kind_of_import() -> None:
    src = ("import kmnlib.study.runs\n"
           "from kmnlib import study\n"
           "from ..study.session import Study\n"
           "from typing import TYPE_CHECKING\n"
           "if TYPE_CHECKING:\n    from kmnlib.training.step import train_step\n"
           "def f():\n    import importlib\n    return importlib.import_module('kmnlib.inference')\n")
    names = imported(src, "kmnlib.model.fold")
    assert {"kmnlib.study.runs", "kmnlib.study", "kmnlib.study.session.Study",
            "kmnlib.training.step.train_step", "kmnlib.inference"} <= names
    assert len(violations("kmnlib.model.fold", names)) == 8  # 3 study imports twice, 2 more
    assert imported("from . import ops\n", "kmnlib.model", is_package=True) == {"kmnlib.model.ops"}
    assert violations("kmnlib.memory", {"kmnlib.config.READ_BUDGET_BYTES"}) == []
    assert violations("kmnlib.memory", {"kmnlib.model.ops.unpad"}) != []
    assert violations("kmnlib.study.runs", {"kmnlib.study.session.Study"}) == []


MAX_FUNCTION_LINES = 60


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int]]:
    """(name, lines) of every function or method longer than ``limit`` lines (docstring included)."""
    return [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > limit]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_function_is_over_sixty_lines(path: Path) -> None:
    assert long_functions(path.read_text(encoding="utf-8")) == []


def test_the_length_check_counts_lines() -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(60))
    assert long_functions(f"def f():\n{body}") == [("f", 61)]
    short = "".join(f"        x{i} = {i}\n" for i in range(59))
    assert long_functions(f"class C:\n    def g(self):\n{short}") == []
