"""The package's import graph, read from the source: each layer imports only itself and the layers below it, so
``_peft_compat`` adapts peft and imports nothing above it (only itself and the plain-Python bottom layer, which
imports nothing from the package), the plugin never needs the harness, and no two modules import each other
(imports under ``if TYPE_CHECKING:`` are for type hints only and are not counted)."""

from __future__ import annotations

import ast
import importlib.util

from tiny_models import REPO_ROOT

PACKAGE = REPO_ROOT / "peft_superpos"
# lowest first; a module belongs to the layer of its first name under peft_superpos ("" is the package __init__)
LAYERS = (
    ("atomic_files",),  # plain Python: imports nothing from the package
    ("_peft_compat", "distributed", "dropout", "embedded_models"),
    ("tuners",),
    ("", "export", "optim", "serving", "gguf_conversion", "models", "data"),
    ("metrics",),
    ("harness",),
    ("train",),
)


def module_name(path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path, modules: set[str]) -> set[str]:
    """The modules of this package that ``path`` imports when it runs (at import or in a function)."""
    name, tree = module_name(path), ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    type_only = {
        id(node)
        for guard in ast.walk(tree)
        if isinstance(guard, ast.If) and "TYPE_CHECKING" in ast.unparse(guard.test)
        for node in ast.walk(guard)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            targets = [*(f"{base}.{alias.name}" for alias in node.names), base]
        elif isinstance(node, ast.Import):
            targets = [*(alias.name for alias in node.names), ""]
        else:
            continue
        named = {t for t in targets[:-1] if t in modules} or {targets[-1]} & modules  # submodules, else the module
        found |= named - {name}
    return found


def layer(module: str) -> int:
    top = module.removeprefix("peft_superpos").removeprefix(".").split(".")[0]
    return next(index for index, names in enumerate(LAYERS) if top in names)


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    return {module_name(path): imports(path, modules) for path in paths}


def test_every_import_goes_to_the_same_layer_or_below_and_the_compat_layer_only_to_itself_or_the_bottom():
    graph = import_graph()
    assert "peft_superpos.dropout" in graph["peft_superpos.tuners.prompt_table"]  # the graph is read at all
    edges = [(module, target) for module, targets in graph.items() for target in targets]
    assert [(module, target) for module, target in edges if layer(target) > layer(module)] == []
    compat = "peft_superpos._peft_compat"
    assert [(m, t) for m, t in edges if m.startswith(compat) and not t.startswith(compat) and layer(t) > 0] == []
    assert [(m, t) for m, t in edges if layer(m) == 0] == []  # the bottom layer imports nothing of the package


def test_no_import_cycle():
    graph = import_graph()
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        for target in sorted(graph[module]):
            if target in path:
                cycles.append(path[path.index(target) :] + [target])
            elif target not in done:
                visit(target, [*path, target])
        done.add(module)

    done: set[str] = set()
    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    assert cycles == []
