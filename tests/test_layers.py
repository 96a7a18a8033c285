"""The layering rules of docs/architecture.md, read from the source with ``ast``.

Every ``import`` and ``from ... import`` under ``shared/`` and ``services/`` counts,
including those inside functions: a lazy import still couples the two modules,
it only hides the coupling from the import-time trace. Nothing is imported here,
so a broken module cannot hide a broken rule.

An edge goes to the module named by the import (``from shared import metrics`` is
an edge to ``shared.metrics``); the parent packages a submodule import runs are
not added, as their ``__init__`` files hold no imports of their children unless
they say so explicitly.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("shared", "services")
MAX_LINES = 400

# A lazy import (inside a function) that closes a cycle on purpose, with the reason.
# Each entry must name an import that exists and is lazy: the test fails on a stale one.
ALLOWED_LAZY_CYCLE_EDGES: dict[tuple[str, str], str] = {
    ("shared.results", "shared.results.s3"): (
        "build_result_storage loads the S3 backend only for an s3:// URL, so boto3 is imported only when used;"
        " shared.results.s3 takes S3Location and result_reference from the package"
    ),
}


@dataclass(frozen=True)
class Import:
    """One import statement's target, where it stands and whether it runs only when a function is called."""

    module: str
    target: str
    path: Path
    line: int
    lazy: bool

    def __str__(self) -> str:
        where = "inside a function" if self.lazy else "at import time"
        return f"{self.path.relative_to(ROOT)}:{self.line}: {self.module} imports {self.target} ({where})"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def source_modules() -> dict[str, Path]:
    """Every module under shared/ and services/, by dotted name."""
    paths = sorted(p for layer in LAYERS for p in (ROOT / layer).rglob("*.py") if "__pycache__" not in p.parts)
    return {module_name(p): p for p in paths}


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(path: Path, known: Iterable[str] = ()) -> Iterator[Import]:
    """The imports of one file; ``from X import y`` targets ``X.y`` when that is a known module."""
    module = module_name(path)
    modules = set(known)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))

    def walk(node: ast.AST, lazy: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield Import(module, alias.name, path, child.lineno, lazy)
            elif isinstance(child, ast.ImportFrom):
                base = _resolve(module, path, child)
                for alias in child.names:
                    candidate = f"{base}.{alias.name}"
                    yield Import(module, candidate if candidate in modules else base, path, child.lineno, lazy)
            yield from walk(child, lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    yield from walk(tree, lazy=False)


@cache
def project_imports() -> tuple[Import, ...]:
    """Imports of shared.* and services.* made by modules under shared/ and services/."""
    known = source_modules()
    found = (imp for path in known.values() for imp in imports_of(path, known))
    return tuple(imp for imp in found if imp.target.split(".")[0] in LAYERS)


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def assert_none(violations: list[Import], rule: str) -> None:
    assert not violations, f"{rule}:\n" + "\n".join(f"  {v}" for v in violations)


def test_shared_does_not_import_services() -> None:
    violations = [i for i in project_imports() if within(i.module, "shared") and within(i.target, "services")]
    assert_none(violations, "shared/ must not import services/ (shared code serves every service)")


def test_shared_and_services_do_not_import_the_public_face() -> None:
    known = source_modules()
    violations = [i for path in known.values() for i in imports_of(path, known) if within(i.target, "jobrelay")]
    assert_none(violations, "shared/ and services/ must not import jobrelay (it re-exports them for users)")


def test_api_and_scheduler_do_not_import_each_other() -> None:
    violations = [
        i
        for i in project_imports()
        if (within(i.module, "services.api") and within(i.target, "services.scheduler"))
        or (within(i.module, "services.scheduler") and within(i.target, "services.api"))
    ]
    assert_none(
        violations, "services/api/ and services/scheduler/ must not import each other (move the code to shared/)"
    )


def test_worker_does_not_import_api_or_scheduler() -> None:
    violations = [
        i
        for i in project_imports()
        if within(i.module, "services.worker")
        and (within(i.target, "services.api") or within(i.target, "services.scheduler"))
    ]
    assert_none(violations, "services/worker/ must not import services/api/ or services/scheduler/")


def test_worker_tests_do_not_import_the_api() -> None:
    paths = sorted((ROOT / "tests" / "services" / "worker").rglob("*.py"))
    violations = [i for p in paths for i in imports_of(p) if within(i.target, "services.api")]
    assert_none(violations, "tests under tests/services/worker/ must not import services.api")


def test_modules_stay_under_the_size_limit() -> None:
    too_long = [
        f"  {path.relative_to(ROOT)}: {count} lines"
        for path in source_modules().values()
        if (count := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    ]
    assert not too_long, f"modules over {MAX_LINES} lines (split them by noun):\n" + "\n".join(too_long)


def _cycles(edges: dict[str, dict[str, Import]]) -> list[list[str]]:
    """One shortest cycle through each strongly connected component of more than one module (or a self-import)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(node: str) -> None:  # Tarjan; the graph is ~100 modules deep at most
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, {}):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            components.append(component)

    for node in sorted(edges):
        if node not in index:
            connect(node)

    cycles = []
    for component in components:
        start = min(component)
        if len(component) == 1 and start not in edges.get(start, {}):
            continue
        # Breadth first from start back to start, inside the component.
        paths = {nxt: [start, nxt] for nxt in sorted(edges[start]) if nxt in component}
        frontier = list(paths)
        while start not in paths and frontier:
            nxt_frontier = []
            for node in frontier:
                for nxt in sorted(edges.get(node, {})):
                    if nxt in component and nxt not in paths:
                        paths[nxt] = [*paths[node], nxt]
                        nxt_frontier.append(nxt)
            frontier = nxt_frontier
        cycles.append(paths[start])
    return cycles


def test_no_import_cycles() -> None:
    known = source_modules()
    edges: dict[str, dict[str, Import]] = {}
    for imp in project_imports():
        if imp.target in known and (imp.module, imp.target) not in ALLOWED_LAZY_CYCLE_EDGES:
            edges.setdefault(imp.module, {}).setdefault(imp.target, imp)
    cycles = _cycles(edges)
    report = [
        " -> ".join(cycle) + "\n" + "\n".join(f"      {edges[a][b]}" for a, b in pairwise(cycle)) for cycle in cycles
    ]
    assert not cycles, "import cycles (break them, or allow a lazy import with its reason):\n" + "\n".join(
        f"  {r}" for r in report
    )


def test_allowed_cycle_edges_are_lazy_and_still_there() -> None:
    imports = {(i.module, i.target): i for i in project_imports()}
    problems = []
    for edge in ALLOWED_LAZY_CYCLE_EDGES:
        found = imports.get(edge)
        if found is None:
            problems.append(f"  {edge[0]} no longer imports {edge[1]}: remove the allowance")
        elif not all(i.lazy for i in project_imports() if (i.module, i.target) == edge):
            problems.append(f"  {found}: an allowed cycle edge must be imported inside a function")
    assert not problems, "ALLOWED_LAZY_CYCLE_EDGES is out of date:\n" + "\n".join(problems)
