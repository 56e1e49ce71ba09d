"""The package's layers, enforced: which of modelhost's packages each package may import.

Read from the source with `ast` (nothing is imported), counting every import: at module level,
inside functions and under `TYPE_CHECKING` alike, since each is a dependency a reader must
follow. docs/architecture.md draws the same picture. When a new dependency is the right design,
change `ALLOWED` here and the picture there; when it is not, move the shared thing down.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "modelhost"

# Lowest first. A package may import itself and what its entry lists, nothing else.
ALLOWED: dict[str, set[str]] = {
    # Pure values and rules: no I/O, nothing of the project.
    "domain": set(),
    "errors": set(),
    "requirements": set(),
    "config": set(),
    "security": {"errors", "config"},
    "store": {"domain", "errors", "security", "config"},
    "directory": {"domain", "store", "security"},
    "adapters": {"domain", "errors"},
    # The replica process: knows nothing of the control plane.
    "engine": {"domain", "errors", "adapters", "requirements"},
    "runtimes": {"domain"},
    "autoscaler": {"domain"},
    "orchestrator": {"domain", "errors", "config", "security", "store", "engine", "runtimes"},
    "web": {"domain", "errors", "config", "security", "store", "directory"},
    "gateway": {"domain", "errors", "config", "security", "store", "directory", "web", "engine"},
    "api": {
        "domain",
        "errors",
        "config",
        "security",
        "store",
        "directory",
        "web",
        "adapters",
        "engine",
        "orchestrator",
    },
    # The web console: pages over the API's own functions (same rules, same tenancy).
    "console": {"domain", "errors", "config", "security", "store", "web", "api"},
    # The wiring: the only package that sees everything server-side.
    "serve": {
        "domain",
        "errors",
        "requirements",
        "config",
        "security",
        "store",
        "directory",
        "adapters",
        "engine",
        "runtimes",
        "autoscaler",
        "orchestrator",
        "web",
        "gateway",
        "api",
        "console",
    },
    # The SDK talks HTTP only: it imports nothing of the server.
    "client": set(),
    "cli": {"client", "config", "requirements", "serve"},
    # modelhost/__init__.py: the package's public names (the SDK's).
    "__init__": {"client"},
}
# Third-party packages a layer must not reach for (the store raises no HTTP-shaped errors and
# the domain does no I/O).
FORBIDDEN_LIBRARIES = {
    "domain": {"fastapi", "starlette", "httpx", "sqlalchemy", "torch"},
    "store": {"fastapi", "starlette", "httpx"},
    "orchestrator": {"fastapi", "starlette"},
    "client": {"fastapi", "starlette", "sqlalchemy", "torch"},
}


def _layer(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(tree: ast.AST) -> Iterator[tuple[str, int]]:
    """Every module an import statement names (`from modelhost import x` names modelhost.x)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "modelhost":
                for alias in node.names:
                    yield f"modelhost.{alias.name}", node.lineno
            else:
                yield node.module, node.lineno


def _edges() -> list[tuple[str, str, str]]:
    """(importing layer, imported layer or library, where) for every import in the package."""
    edges = []
    for path in sorted(PACKAGE.rglob("*.py")):
        layer = _layer(path)
        for module, line in _imports(ast.parse(path.read_text(), str(path))):
            parts = module.split(".")
            target = parts[1] if parts[0] == "modelhost" and len(parts) > 1 else parts[0]
            if parts[0] == "modelhost" and target == "__version__":
                target = "__init__"
            edges.append((layer, target, f"{path.relative_to(PACKAGE.parent)}:{line}"))
    return edges


def _project_layers() -> set[str]:
    return {_layer(p) for p in PACKAGE.rglob("*.py")}


def test_every_package_has_a_place_in_the_layers() -> None:
    assert _project_layers() == set(ALLOWED), (
        "a package was added or removed: give it its entry in ALLOWED (and docs/architecture.md)"
    )


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_each_package_imports_only_what_its_layer_allows(layer: str) -> None:
    project = set(ALLOWED)
    wrong = [
        f"{where}: {layer} imports {target}"
        for src, target, where in _edges()
        if src == layer
        and target in project
        and target != layer
        and target != "__init__"
        and target not in ALLOWED[layer]
    ]
    wrong += [
        f"{where}: {layer} imports {target}"
        for src, target, where in _edges()
        if src == layer and target in FORBIDDEN_LIBRARIES.get(layer, set())
    ]
    assert not wrong, "\n".join(wrong)


def test_the_allowed_directions_have_no_cycle() -> None:
    """A cycle in ALLOWED would let two packages grow into one; the rules themselves are a
    DAG, so the code that follows them has no import cycle between packages."""
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        if state.get(node) == 1:
            pytest.fail("cycle: " + " -> ".join([*path, node]))
        if state.get(node) == 2:
            return
        state[node] = 1
        for nxt in sorted(ALLOWED[node]):
            visit(nxt, [*path, node])
        state[node] = 2

    for node in sorted(ALLOWED):
        visit(node, [])


def test_the_gateway_and_the_orchestrator_never_import_each_other() -> None:
    assert "orchestrator" not in ALLOWED["gateway"] and "gateway" not in ALLOWED["orchestrator"]
    crossing = [
        where for src, target, where in _edges() if {src, target} == {"gateway", "orchestrator"}
    ]
    assert not crossing


def test_the_checker_sees_imports_in_functions_and_from_the_package_root() -> None:
    tree = ast.parse(
        "from modelhost import requirements\n"
        "def f():\n    from modelhost.gateway.core import Gateway\n"
        "import modelhost.store.db\n"
    )
    assert sorted(m for m, _ in _imports(tree)) == [
        "modelhost.gateway.core",
        "modelhost.requirements",
        "modelhost.store.db",
    ]
