"""The package's shape: modules import only from their own layer or the layers below, and nothing imports in a
circle (imports inside functions count too: a lazy import is still a dependency)."""

from __future__ import annotations

import ast
from pathlib import Path

import mia_bench

PACKAGE = Path(mia_bench.__file__).resolve().parent

#: Lowest first. A module may import from its own layer and every layer before it.
LAYERS = [
    ("base", ["mia_bench", "mia_bench.atomic", "mia_bench.registry", "mia_bench.errors", "mia_bench.progress",
              "mia_bench.paths", "mia_bench.console"]),
    ("data", ["mia_bench.augment", "mia_bench.data"]),
    ("models", ["mia_bench.models"]),
    ("signals and attacks", ["mia_bench.signals", "mia_bench.metrics", "mia_bench.attacks", "mia_bench.interop"]),
    ("cache", ["mia_bench.cache"]),
    ("training", ["mia_bench.loggers", "mia_bench.training"]),
    ("defenses", ["mia_bench.defenses"]),
    ("analyses", ["mia_bench.analyses", "mia_bench.dynamics"]),
    ("report", ["mia_bench.report"]),
    ("run", ["mia_bench.pipeline", "mia_bench.validation", "mia_bench.gpu_pool", "mia_bench.config", "mia_bench.conf",
             "mia_bench.__main__", "mia_bench.api"]),
]
#: The package's ``__init__`` is the Python API's facade: it re-exports the API lazily (inside ``__getattr__``,
#: resolved on first use, never at import), so its own imports are exempt; every layer may import it (__version__).
FACADE = "mia_bench"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    best, index = "", -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, index = prefix, i
    return index


def imports_of(path: Path) -> set[str]:
    """The mia_bench modules ``path`` imports, anywhere in the file (``from a.b import c`` counts a.b and, when
    a.b.c is a module, a.b.c)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "mia_bench"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "mia_bench":
                continue
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names if _is_module(f"{base}.{a.name}")}
    return out


def _is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").is_file() or (PACKAGE / rel / "__init__.py").is_file()


def graph() -> dict[str, set[str]]:
    return {m: (set() if m == FACADE else imports_of(p)) for p in sorted(PACKAGE.rglob("*.py"))
            if (m := module_name(p))}


def test_every_module_has_a_layer():
    assert [m for m in graph() if layer_of(m) < 0] == []


def test_no_module_imports_from_a_higher_layer():
    bad = [
        f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
        for m, deps in graph().items() for d in sorted(deps) if layer_of(d) > layer_of(m)
    ]
    assert bad == []


def test_no_import_circle():
    edges = {m: {d for d in deps if d != m and not m.startswith(d + ".")} for m, deps in graph().items()}
    # A package's own __init__ importing its submodules (to export them) is not a circle through them.
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(edges.get(m, ())):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d] if d in stack else [m, d])
            elif d in edges and not state.get(d):
                visit(d, [*stack, d])
        state[m] = 2

    for m in sorted(edges):
        if not state.get(m):
            visit(m, [m])
    assert cycles == []
