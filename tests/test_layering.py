"""The import graph the architecture allows, checked by walking every module's imports.

Layers, lowest first: contracts <- llm <- clients and learning (side by side; neither
imports the other) <- corpus <- services; the CLI sits on top and nothing imports it. A
service never imports another service. The one exception: the corpus builder uses the
CRM API's deterministic world builder at build time (the golden cases are generated
against the same world the API serves), and only `crmbench_corpus.builder` may do so,
only from `crm_api.world`.

Standard library only (ast), so the check itself has no dependency that could hide a
violation.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

PACKAGES: dict[str, str] = {
    "crmbench_contracts": "contracts/crmbench_contracts",
    "crmbench_llm": "llm/crmbench_llm",
    "crmbench_clients": "clients/crmbench_clients",
    "crmbench_learning": "learning/crmbench_learning",
    "crmbench_corpus": "corpus/crmbench_corpus",
    "crm_api": "services/crm_api",
    "verifier": "services/verifier",
    "agent_runner": "services/agent_runner",
    "crmbench": "crmbench",
}
"""Each first-party top-level package and its folder, relative to the repository root."""

LIBRARIES = ("crmbench_contracts", "crmbench_llm", "crmbench_clients", "crmbench_learning")

ALLOWED: dict[str, frozenset[str]] = {
    "crmbench_contracts": frozenset(),
    "crmbench_llm": frozenset({"crmbench_contracts"}),
    "crmbench_clients": frozenset({"crmbench_contracts", "crmbench_llm"}),
    "crmbench_learning": frozenset({"crmbench_contracts", "crmbench_llm"}),
    "crmbench_corpus": frozenset(LIBRARIES),
    "crm_api": frozenset(LIBRARIES),
    "verifier": frozenset({*LIBRARIES, "crmbench_corpus"}),
    "agent_runner": frozenset({*LIBRARIES, "crmbench_corpus"}),
    "crmbench": frozenset(set(PACKAGES) - {"crmbench"}),
}
"""Which other first-party packages each package may import (its own is always allowed)."""

EXCEPTIONS: dict[str, frozenset[str]] = {
    # Build time only: the corpus is generated against the world the CRM API serves.
    "crmbench_corpus.builder": frozenset({"crm_api.world"}),
}
"""Module-level exceptions: importing module -> the exact modules it may import besides."""


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    importer: str
    imported: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.importer} imports {self.imported}"


def module_name(package: str, folder: Path, path: Path) -> str:
    parts = list(path.relative_to(folder).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def _dynamic_import(node: ast.Call) -> str | None:
    """The module named by `importlib.import_module("x")` or `__import__("x")`, if literal."""
    func = node.func
    named = (isinstance(func, ast.Attribute) and func.attr == "import_module") or (
        isinstance(func, ast.Name) and func.id in ("import_module", "__import__")
    )
    if not named or not node.args:
        return None
    first = node.args[0]
    return first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else None


def import_statements(
    tree: ast.AST, importer: str, is_package: bool
) -> Iterator[tuple[int, str, list[str]]]:
    """(line, absolute module, imported names) of every import in a module: statements
    anywhere (also inside functions) and literal `importlib.import_module` / `__import__`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = importer.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            yield node.lineno, module, [alias.name for alias in node.names]
        elif isinstance(node, ast.Call) and (dynamic := _dynamic_import(node)):
            yield node.lineno, dynamic, []


def _within(name: str, modules: frozenset[str]) -> bool:
    return any(name == m or name.startswith(m + ".") for m in modules)


CONTRACTS_THIRD_PARTY = frozenset({"pydantic", "pydantic_core", "typing_extensions"})
"""The only packages outside the standard library that the contracts may import: they are
I/O-free models and rules that every layer, the corpus included, loads."""


def violations(
    root: Path,
    packages: Mapping[str, str] = PACKAGES,
    allowed: Mapping[str, frozenset[str]] = ALLOWED,
    exceptions: Mapping[str, frozenset[str]] = EXCEPTIONS,
) -> list[Violation]:
    """Every import outside the allowed graph, in package, file and line order: first-party
    imports along ALLOWED/EXCEPTIONS, and third-party imports of the contracts."""
    found: list[Violation] = []
    for package, relative in packages.items():
        folder = root / relative
        for path in sorted(folder.rglob("*.py")):
            importer = module_name(package, folder, path)
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            is_package = path.name == "__init__.py"
            for line, module, names in import_statements(tree, importer, is_package):
                target = module.split(".")[0]
                if target not in packages:
                    third_party = target not in sys.stdlib_module_names and target != "__future__"
                    if (
                        package == "crmbench_contracts"
                        and third_party
                        and target not in CONTRACTS_THIRD_PARTY
                    ):
                        found.append(Violation(str(path.relative_to(root)), line, importer, module))
                    continue
                if target == package or target in allowed[package]:
                    continue
                permitted = exceptions.get(importer, frozenset())
                # `from crm_api import world` names the module crm_api.world: every name
                # of the statement must be permitted, not just one of them.
                if _within(module, permitted) or (
                    names and all(_within(f"{module}.{name}", permitted) for name in names)
                ):
                    continue
                found.append(Violation(str(path.relative_to(root)), line, importer, module))
    return found


def test_the_tree_imports_only_along_the_allowed_graph() -> None:
    found = violations(REPO_ROOT)
    assert not found, "imports outside the allowed graph:\n" + "\n".join(map(str, found))


def test_every_first_party_package_is_covered() -> None:
    for package, relative in PACKAGES.items():
        assert (REPO_ROOT / relative / "__init__.py").is_file(), package
    assert set(ALLOWED) == set(PACKAGES)


@pytest.mark.parametrize(
    ("importer_file", "statement", "expected"),
    [
        ("services/verifier/judges.py", "from agent_runner.llm import x", "agent_runner.llm"),
        ("services/agent_runner/policy.py", "import crm_api.tools", "crm_api.tools"),
        (
            "services/agent_runner/sim.py",
            "from crmbench.local_services import f",
            "crmbench.local_services",
        ),
        ("contracts/crmbench_contracts/x.py", "from crmbench_llm import types", "crmbench_llm"),
        (
            "llm/crmbench_llm/x.py",
            "from crmbench_clients.serving import s",
            "crmbench_clients.serving",
        ),
        ("services/crm_api/x.py", "from crmbench_corpus import store", "crmbench_corpus"),
        (
            "learning/crmbench_learning/x.py",
            "from crmbench_clients import crm_api",
            "crmbench_clients",
        ),
        ("learning/crmbench_learning/x.py", "from crmbench_corpus import c", "crmbench_corpus"),
        ("learning/crmbench_learning/x.py", "import verifier.scoring", "verifier.scoring"),
        ("clients/crmbench_clients/x.py", "from crmbench_learning import e", "crmbench_learning"),
        ("services/agent_runner/run/x.py", "from ...verifier import scoring", "verifier"),
        ("corpus/crmbench_corpus/clbench.py", "from crm_api.world import w", "crm_api.world"),
        ("corpus/crmbench_corpus/builder.py", "from crm_api.tools import T", "crm_api.tools"),
        ("corpus/crmbench_corpus/builder.py", "from crm_api import tools", "crm_api"),
        ("corpus/crmbench_corpus/builder.py", "from crm_api import world, tools", "crm_api"),
        (
            "services/verifier/x.py",
            "importlib.import_module('agent_runner.llm')",
            "agent_runner.llm",
        ),
        ("services/crm_api/x.py", "__import__('verifier.scoring')", "verifier.scoring"),
        ("services/crm_api/x.py", "def f():\n    from verifier import app", "verifier"),
        ("contracts/crmbench_contracts/x.py", "from fastapi import FastAPI", "fastapi"),
        ("contracts/crmbench_contracts/x.py", "import httpx", "httpx"),
    ],
)
def test_a_forbidden_import_is_named(
    tmp_path: Path, importer_file: str, statement: str, expected: str
) -> None:
    for relative in PACKAGES.values():
        (tmp_path / relative).mkdir(parents=True, exist_ok=True)
        (tmp_path / relative / "__init__.py").write_text("")
    target = tmp_path / importer_file
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(f'"""A module."""\n\n{statement}\n')
    found = violations(tmp_path)
    assert len(found) == 1, found
    line = 3 + statement.count("\n")
    assert found[0].path == importer_file and found[0].line == line
    assert found[0].imported == expected
    assert str(found[0]).startswith(f"{importer_file}:{line}: ")


def test_allowed_imports_pass(tmp_path: Path) -> None:
    for relative in PACKAGES.values():
        (tmp_path / relative).mkdir(parents=True, exist_ok=True)
        (tmp_path / relative / "__init__.py").write_text("")
    (tmp_path / "corpus/crmbench_corpus/builder.py").write_text("from crm_api.world import b\n")
    (tmp_path / "services/verifier/a.py").write_text("from crmbench_llm import base\n")
    (tmp_path / "services/agent_runner/b.py").write_text("from crmbench_learning import e\n")
    (tmp_path / "learning/crmbench_learning/e.py").write_text(
        "import onnxruntime\nfrom crmbench_llm import base\nfrom crmbench_contracts import c\n"
    )
    (tmp_path / "services/agent_runner/sub").mkdir()
    (tmp_path / "services/agent_runner/sub/__init__.py").write_text("from . import x\n")
    (tmp_path / "services/agent_runner/sub/x.py").write_text("from ..run import y\n")
    (tmp_path / "crmbench/cli.py").write_text("import crm_api.app\nimport agent_runner\n")
    (tmp_path / "corpus/crmbench_corpus/builder.py").write_text("from crm_api import world\n")
    (tmp_path / "contracts/crmbench_contracts/m.py").write_text(
        "import json\nfrom pydantic import BaseModel\nfrom crmbench_contracts import cases\n"
    )
    assert violations(tmp_path) == []
