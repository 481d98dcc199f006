"""The import rules the folders stand for: every import goes down the layers below, never up, never in a circle.

Imports are read from the source (inside functions too, where the code defers them for start-up time), leaving
out `if TYPE_CHECKING:` blocks, which never run. The layers, lowest first, are drawn in bloomtui/engine/__init__.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bloomtui", "benchmarks")

LAYERS: tuple[tuple[str, ...], ...] = (
    # what every part may use: errors, sizes, paths, the shipped demo files
    ("bloomtui", "bloomtui.errors", "bloomtui.sizes", "bloomtui.locations", "bloomtui.openmp", "bloomtui.demo_models"),
    # the engine's vocabulary: events and options, torch-free
    ("bloomtui.engine.events", "bloomtui.engine.engine_options", "bloomtui.engine.sampling_params"),
    ("bloomtui.engine.weights",),
    ("bloomtui.engine.compute",),
    ("bloomtui.engine.io",),
    ("bloomtui.engine.plan",),
    ("bloomtui.engine.stream",),
    ("bloomtui.engine.decode",),
    ("bloomtui.engine.generate", "bloomtui.engine.prepare", "bloomtui.engine"),
    # what uses the engine: demo checkpoints, progress lines, settings, the remote client and the server
    ("bloomtui.demo", "bloomtui.demo_presets", "bloomtui.cached_models", "bloomtui.progress", "bloomtui.settings"),
    ("bloomtui.remote", "bloomtui.server"),
    ("bloomtui.tui",),
    ("bloomtui.commands",),
    ("bloomtui.cli", "bloomtui.__main__"),
    ("benchmarks",),
)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(name: str) -> set[str]:
    """The project's modules that `name` imports when it runs."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*parts, *([child.module] if child.module else [])])
                submodules = {f"{base}.{alias.name}" for alias in child.names} & MODULES.keys()
                found.update(submodules)
                if len(submodules) < len(child.names):  # a name the package itself defines
                    found.add(base)
            visit(child)

    visit(ast.parse(path.read_text()))
    return {module for module in found if module in MODULES and module != name}


def layer_of(name: str) -> int:
    """The layer of the longest prefix that names `name` or a package holding it."""
    best, best_len = None, -1
    for index, members in enumerate(LAYERS):
        for member in members:
            if (name == member or name.startswith(member + ".")) and len(member) > best_len:
                best, best_len = index, len(member)
    assert best is not None, f"{name} is in no layer: add it to LAYERS"
    return best


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return [
        f"{name} (layer {layer_of(name)}) imports {other} (layer {layer_of(other)})"
        for name, others in sorted(graph.items())
        for other in sorted(others)
        if layer_of(other) > layer_of(name)
    ]


def circles(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []
    found: list[str] = []

    def walk(name: str) -> None:
        state[name] = 1
        path.append(name)
        for other in sorted(graph.get(name, ())):
            if state.get(other) == 1:
                found.append(" -> ".join([*path[path.index(other) :], other]))
            elif other not in state:
                walk(other)
        path.pop()
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name)
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def test_every_module_has_a_layer() -> None:
    for name in MODULES:
        layer_of(name)


def test_imports_go_down_the_layers() -> None:
    assert not upward_imports(GRAPH), "\n".join(upward_imports(GRAPH))


def test_no_module_imports_its_own_package() -> None:
    """A sub-package's modules never import a name its package defines above them (its __init__); the root
    package's __init__ only holds the version, in the lowest layer."""
    upward = [
        f"{name} imports {other}"
        for name, others in sorted(GRAPH.items())
        for other in others
        if name.startswith(other + ".") and MODULES[other].name == "__init__.py" and other not in PACKAGES
    ]
    assert not upward, "\n".join(upward)


def test_no_import_circles() -> None:
    assert not circles(GRAPH), "\n".join(circles(GRAPH))


def test_the_rules_catch_an_upward_import_and_a_circle(tmp_path: Path) -> None:
    """The checks above are only as good as the parser: an upward import and a circle written the ways the code
    writes imports (deferred into a function, relative, a module named in `from package import module`, under
    TYPE_CHECKING) are seen, or left out, as they should be."""
    files = {
        "bloomtui.engine.weights.a": "def f():\n    from bloomtui.engine.decode import b\n",
        "bloomtui.engine.decode.b": "from .c import g\n",
        "bloomtui.engine.decode.c": "import bloomtui.engine.decode.b\nif TYPE_CHECKING:\n    from . import d\n",
        "bloomtui.engine.decode.d": "",
    }
    saved = dict(MODULES)
    try:
        for name, text in files.items():
            (tmp_path / f"{name}.py").write_text(text)
            MODULES[name] = tmp_path / f"{name}.py"
        graph = {name: imports_of(name) for name in files}
    finally:
        MODULES.clear()
        MODULES.update(saved)
    assert graph["bloomtui.engine.weights.a"] == {"bloomtui.engine.decode.b"}
    assert graph["bloomtui.engine.decode.c"] == {"bloomtui.engine.decode.b"}  # not d: TYPE_CHECKING never runs
    assert upward_imports(graph) == [
        f"bloomtui.engine.weights.a (layer {layer_of('bloomtui.engine.weights.a')}) imports bloomtui.engine.decode.b "
        f"(layer {layer_of('bloomtui.engine.decode.b')})"
    ]
    assert circles(graph) == ["bloomtui.engine.decode.b -> bloomtui.engine.decode.c -> bloomtui.engine.decode.b"]
