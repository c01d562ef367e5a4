"""The import graph of the product's code: no circles, and the layers point one way.

Edges are the explicit imports of each module (at module level or inside a
function), read with ``ast``; imports under ``if TYPE_CHECKING:`` are left out
(they never run). A package's ``__init__`` is a module like any other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"fflab": ROOT / "shared" / "fflab", "api": ROOT / "api", "worker": ROOT / "worker"}

# Layers of the library, lowest first: a module may import its own layer and those below.
# The settings (every FFLAB_* variable, the data root included) are the foundation.
LAYERS = {
    "settings": ["fflab.settings"],
    "science": ["fflab.registry", "fflab.data", "fflab.models", "fflab.spec", "fflab.analysis",
                "fflab.figures", "fflab.results", "fflab.paper", "fflab.reference",
                "fflab.devices", "fflab.representations", "fflab.recording",
                "fflab.comparison", "fflab.comparison_figures", "fflab.experiment_search", "fflab.versions"],
    "pipeline": ["fflab.pipeline"],
    "service": ["fflab.var_dir", "fflab.processes", "fflab.db", "fflab.storage",
                "fflab.accounts", "fflab.startup", "fflab.scheduling", "fflab.queueing", "fflab.jobs", "fflab.client",
                "fflab.gpu", "fflab.run_logs", "fflab.usage"],
    "cli": ["fflab.cli", "fflab.__main__"],
}
LAYER_ORDER = list(LAYERS)


def module_name(path: Path) -> str:
    for package, folder in SOURCES.items():
        if path.is_relative_to(folder):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    raise ValueError(path)


def modules() -> dict[str, Path]:
    return {module_name(path): path for folder in SOURCES.values() for path in folder.rglob("*.py")}


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported(tree: ast.AST, known: set[str], current: str) -> set[str]:
    """The known modules ``tree`` imports (``from a import b`` is ``a.b`` when that is a module)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if full in known:
                    found.add(full)
                elif node.module in known:
                    found.add(node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(current)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    sources = modules()
    known = set(sources)
    return {name: imported(ast.parse(path.read_text()), known, name) for name, path in sources.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def layer_of(module: str) -> str | None:
    if module == "fflab":  # the root package: its docstring maps the layers
        return "science"
    for layer, prefixes in LAYERS.items():
        if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes):
            return layer
    return None


def test_the_checker_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles(graph):
    assert cycles(graph) == []


def test_every_library_module_has_a_layer(graph):
    assert [name for name in graph if name.startswith("fflab") and layer_of(name) is None] == []


def test_the_library_never_imports_the_api_or_the_worker(graph):
    upward = sorted((name, target) for name, targets in graph.items() if name.startswith("fflab")
                    for target in targets if not target.startswith("fflab"))
    assert upward == []


def test_layers_import_only_their_own_and_lower_layers(graph):
    wrong = []
    for name, targets in graph.items():
        if not name.startswith("fflab"):
            continue
        for target in targets:
            if LAYER_ORDER.index(layer_of(target)) > LAYER_ORDER.index(layer_of(name)):
                wrong.append((name, target))
    assert sorted(wrong) == []


def test_the_api_never_imports_the_worker_app(graph):
    assert sorted((name, target) for name, targets in graph.items() if name.startswith("api")
                  for target in targets if target in ("worker.celery_app", "worker.tasks", "worker.service")) == []


def test_every_sparseness_measure_has_its_table():
    from fflab.analysis import SPARSENESS_MEASURES
    from fflab.results import TABLES

    assert {f"sparseness_{measure}" for measure in SPARSENESS_MEASURES} <= set(TABLES)


# The service layer (api.services): every rule of what the API and the web UI do is a
# service function both call; route modules and pages only translate HTTP.
RULE_MODULES = ("fflab.jobs", "fflab.accounts", "fflab.scheduling", "fflab.queueing", "worker")
HTTP_MODULES = ("fastapi", "starlette", "api.routes", "api.ui", "api.errors", "api.deps")
# Exceptions to the rules below (none now: the comparison pages moved to the services).
SERVICES_WITH_HTTP: set[str] = set()
UI_IMPORTS_OF_ROUTES: set[tuple[str, str]] = set()


def is_under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def is_route_module(module: str) -> bool:
    return module.startswith("api.routes.") or module == "api.ui.routes"


def all_imports(path: Path) -> set[str]:
    """Every module ``path`` imports, known or not (``from a import b``: a and a.b),
    those under ``if TYPE_CHECKING:`` left out."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def commits(source: str) -> list[int]:
    """The lines of ``source`` that call ``<something>.commit()``."""
    return [node.lineno for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "commit"]


def test_the_checks_of_the_service_layer_find_what_they_look_for(tmp_path):
    assert commits("def f(session):\n    session.add(1)\n    session.commit()\n") == [3]
    assert commits("def f(db):\n    return db.write(lambda s: s)\n") == []
    module = tmp_path / "m.py"
    module.write_text("from typing import TYPE_CHECKING\nfrom fastapi import status\nif TYPE_CHECKING:\n"
                      "    from api.deps import Database\nimport fflab.jobs\n")
    assert all_imports(module) == {"typing", "typing.TYPE_CHECKING", "fastapi", "fastapi.status", "fflab.jobs"}
    assert is_under("api.routes.experiments", ("api.routes",)) and not is_under("api.routesx", ("api.routes",))


def test_the_web_ui_never_imports_a_route_module(graph):
    assert sorted((name, target) for name, targets in graph.items() if name.startswith("api.ui")
                  for target in targets if is_under(target, ("api.routes",))
                  and (name, target) not in UI_IMPORTS_OF_ROUTES) == []


def test_route_modules_reach_jobs_accounts_and_dispatch_only_through_services(graph):
    assert sorted((name, target) for name, targets in graph.items() if is_route_module(name)
                  for target in targets if is_under(target, RULE_MODULES)) == []


def test_route_modules_commit_nothing():
    """A write's transaction is its service's: a route opens the unit and renders."""
    sources = modules()
    assert {name: commits(sources[name].read_text()) for name in sources
            if is_route_module(name) and commits(sources[name].read_text())} == {}


def test_services_know_no_http():
    """Services take plain arguments and raise api.services.errors: no FastAPI,
    Starlette, route module, page, dependency or problem body."""
    wrong = sorted((name, target) for name, path in modules().items()
                   if name.startswith("api.services") and name not in SERVICES_WITH_HTTP
                   for target in all_imports(path) if is_under(target, HTTP_MODULES))
    assert wrong == []
