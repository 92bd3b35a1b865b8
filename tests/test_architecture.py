"""The code keeps the shape docs/architecture.md draws: imports point down the layers and never round in a
circle, and the run's and the dock's code stays in short functions and modules."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src" / "napari_semiamort"
# docs/architecture.md: a package may import its own layer's or lower layers' packages only
LAYERS = {"physics": 0, "devices": 0, "models": 1, "metrics": 1, "data": 1, "sim": 2, "run": 3,
          "cli": 4, "plugin": 4, "_qt": 4}
MAX_FUNCTION_LINES, MAX_MODULE_LINES = 60, 400


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        name = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        yield name, path, ast.parse(path.read_text())


def _imports(name: str, path: Path, tree: ast.Module, top_level_only: bool):
    """The package modules ``name`` imports (``pkg.module`` names, the package's own prefix dropped)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    nodes = tree.body if top_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            target = base + (node.module.split(".") if node.module else [])
            if node.module is None:  # from . import a, b: submodules
                yield from (".".join(target + [a.name]) for a in node.names)
            elif target:
                yield ".".join(target)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("napari_semiamort."):
            yield node.module.removeprefix("napari_semiamort.")


def test_every_import_points_to_the_same_layer_or_below():
    upward = []
    for name, path, tree in _modules():
        if name == "" or name.split(".")[0] not in LAYERS:
            continue
        for target in _imports(name, path, tree, top_level_only=False):
            src, dst = name.split(".")[0], target.split(".")[0]
            if dst in LAYERS and LAYERS[dst] > LAYERS[src]:
                upward.append(f"{name} → {target}")
    assert not upward, upward


def test_the_module_import_graph_has_no_cycle():
    names = {name for name, _, _ in _modules()}
    graph = {}
    for name, path, tree in _modules():
        graph[name] = {t if t in names else t.rsplit(".", 1)[0] for t in _imports(name, path, tree, True)} & names
        graph[name].discard(name)
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1 and not node.startswith(nxt + "."):  # a package's __init__ may import its parts
                pytest.fail("import cycle: " + " → ".join([*trail, node, nxt]))
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


@pytest.mark.parametrize("folder", ["run", "_qt"])
def test_the_runs_and_the_docks_code_keeps_to_short_functions_and_modules(folder):
    long_functions, long_modules = [], []
    for path in sorted((ROOT / folder).glob("*.py")):
        lines = len(path.read_text().splitlines())
        if lines > MAX_MODULE_LINES:
            long_modules.append(f"{path.name}: {lines}")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.name}:{node.lineno} {node.name}: {length}")
    assert not long_modules and not long_functions, (long_modules, long_functions)
