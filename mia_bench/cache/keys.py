"""What a cache key covers: the recipe, the data, the source code, and each model's own index, seed and mask.

Other tools have been reported to reuse a stale cache silently after the target changed, so a model's key covers
the resolved recipe (:func:`describe_recipe`), the model's index, seed and the exact bytes of its membership mask, a
fingerprint of the data tensors actually used (:func:`data_fingerprint`: data edited on disk is a miss), the cache
format, ``mia_bench.__version__`` and a digest of the source that trains and queries this recipe's models
(:func:`code_digest`: in a development checkout the version does not change when the code does). That digest
covers only the modules the recipe uses, each as its syntax tree without comments and docstrings, so a comment fix
or an unrelated new module keeps every cached model.

:data:`MODEL_NEUTRAL_KEYS` is the one table of recipe keys that do not change the models: the key leaves them out,
and the report (``mia_bench.report.aggregate``) reads the same table to put runs differing only in them in one cell.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from omegaconf import DictConfig, OmegaConf

#: Parts of the config that determine a trained model (each model's mask, index and seed are added per model).
#: Everything else is left out of the key: attacks, evaluation, signals, logger, paths, cpu_threads, num_models
#: (masks are prefix-stable; each model's mask bytes are in its key), membership (enters through the mask bytes).
RECIPE_KEYS = ("dataset", "model", "train", "trainer", "defense", "callbacks", "seed")
#: The one table of recipe keys (dotted config paths) that change neither the trained models nor what they output:
#: how and where a model is computed, not which. The cache key leaves them out (:func:`describe_recipe`) and the
#: report does not tell cells apart by them (``mia_bench.report.aggregate.IGNORED_KEYS``), so a sweep over one
#: shares the models and the cell. Path -> why.
MODEL_NEUTRAL_KEYS: dict[str, str] = {
    "trainer.enable_progress_bar": "display",
    "trainer.enable_model_summary": "display",
    "trainer.log_every_n_steps": "logging",
    "trainer.default_root_dir": "where Lightning writes its own files",
    "trainer.enable_checkpointing": "checkpoint files (models are kept in memory)",
    # The device is left out on purpose: shards trained on GPUs serve an attack stage on a CPU node.
    "trainer.accelerator": "where it runs",
    "trainer.devices": "where it runs",
    "trainer.num_nodes": "where it runs",
    "train.engine": "one model at a time or several together: the same models",
    "train.ensemble_size": "how many models train together: the same models",
    "defense.predict.chunk_size": "records per forward pass of the inference-time defense: the same outputs",
    "dataset.loader.root": "where the data is (the data fingerprint covers its content)",
    "dataset.loader.path": "where the data is (the data fingerprint covers its content)",
    "dataset.loader.download": "whether missing data is downloaded (the data fingerprint covers its content)",
}
#: Recipe keys that change what the models are asked, not the models: in the key only when an analysis records
#: outputs while the models train (otherwise the signals key covers the query augmentations). They do change the
#: figures, so the report tells cells apart by them.
QUERY_KEYS = ("dataset.query_augment",)
#: Which code an analysis that records while training runs inside the training loop (by its name in
#: ``recorded``); an analysis not named here makes the digest cover every module (:func:`code_modules`).
RECORDER_MODULES = {"dynamics": ("mia_bench.dynamics.analysis", "mia_bench.dynamics.recorder")}
#: Builders that look a name up in a registry: target -> (the package whose modules register the names, the key of
#: the recipe node holding the name, the registering function). The module registering the recipe's name is hashed,
#: not the whole zoo; a name registered nowhere in the package makes the digest cover every module of it.
REGISTRY_BUILDERS = {"mia_bench.models.create_model": ("mia_bench.models", "name", "register_model")}
#: Modules every model uses whatever its recipe: the training loop and module, the batch loader, the ensemble path,
#: the model builder's adapter, and the query path with its augmentations and the signals container (a signals
#: entry is keyed by its models' keys, so the code that computes signals is in the models' code digest).
CORE_MODULES = (
    "mia_bench.training.train",
    "mia_bench.training.module",
    "mia_bench.training.loader",
    "mia_bench.training.ensemble",
    "mia_bench.training.query",
    "mia_bench.models.adapter",
    "mia_bench.augment",
    "mia_bench.signals",
)
#: Modules (and packages) whose code cannot change a model or its outputs: the walk over imports stops there, so
#: editing one keeps every cached model. Name -> why.
NOT_MODEL_CODE = {
    "mia_bench": "the package's front door (its version is in the key itself)",
    "mia_bench.cache": "the cache (its format and the package version are in the key itself)",
    "mia_bench.attacks": "attacks read the signals: changing one must keep reusing the models",
    "mia_bench.report": "tables and figures",
    "mia_bench.dynamics.vulnerability": "analyses recorded snapshots after training",
    "mia_bench.dynamics.plots": "figures",
    "mia_bench.progress": "the live display",
    "mia_bench.loggers": "training logs",
    "mia_bench.atomic": "how files are written",
    "mia_bench.paths": "where files go",
    "mia_bench.errors": "exception classes",
    "mia_bench.training.cuda_probe": "how torch asks whether a GPU is there",
}
PACKAGE = "mia_bench"


def digest(obj: Any) -> str:
    """sha256 of a JSON-able object in canonical form (sorted keys, no whitespace), 24 hex characters."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def array_digest(a: Any) -> str:
    """sha256 of an array's dtype, shape and bytes (numpy or torch; no copy for a contiguous CPU array)."""
    if hasattr(a, "detach"):  # a torch tensor (not imported here: the cache's command line starts without torch)
        a = a.detach().cpu().contiguous().numpy()
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.reshape(-1).view(np.uint8) if a.size else b"")
    return h.hexdigest()


def data_fingerprint(**splits: Any) -> str:
    """Digest of the splits a run trains and scores on (objects with ``x`` and ``y``, or None): catches data that
    changed on disk under the same config. A split that is the same object as an earlier one (the audit set outside
    the null test) is hashed once; CIFAR-10's 600 MB take about a second."""
    seen: dict[int, str] = {}
    parts = {}
    for name, data in sorted(splits.items()):
        if data is None:
            parts[name] = None
            continue
        if id(data) not in seen:
            seen[id(data)] = array_digest(data.x) + array_digest(data.y)
        parts[name] = seen[id(data)]
    return digest(parts)


# ------------------------------------------------------------------------------------------------ code digest
class _Facts(NamedTuple):
    """What the digest needs of one module's source: its normalised form, its imports, the names it registers."""

    digest: str  # sha256 of the AST without docstrings (comments and layout are not in an AST)
    imports: tuple[tuple[int, str, tuple[str, ...]], ...]  # (level, module, names); names () for ``import x``
    registers: tuple[tuple[str, str], ...]  # (function, name) of calls such as ``@register_model("mlp")``


def _is_docstring(stmt: Any) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


_REGISTERING = {func for _, _, func in REGISTRY_BUILDERS.values()}
_PASS = ast.Pass()


def _walk(node: Any, out: list[str], imports: list, registers: list) -> None:
    """One pass over an AST: a canonical text of it into ``out`` (node types, fields and constants, without
    positions; without bare string statements, which compute nothing: the docstrings of the module, its classes and
    functions; without fields that are None or empty, so that a field a newer Python adds with an empty default does
    not change the text), its imports and its registering calls (``@register_model("mlp")``)."""
    if isinstance(node, ast.AST):
        if isinstance(node, ast.Import):
            imports += [(0, alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            imports.append((node.level, node.module or "", tuple(alias.name for alias in node.names)))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
            if func in _REGISTERING and isinstance(node.args[0].value, str):
                registers.append((func, node.args[0].value))
        out.append(type(node).__name__ + "(")
        for field in node._fields:
            value = getattr(node, field, None)
            if isinstance(value, list) and field in ("body", "orelse", "finalbody"):
                value = [s for s in value if not _is_docstring(s)] or ([_PASS] if value else [])
            if value is None or (isinstance(value, list) and not value):
                continue
            out.append(field + "=")
            _walk(value, out, imports, registers)
            out.append(",")
        out.append(")")
    elif isinstance(node, list):
        out.append("[")
        for item in node:
            _walk(item, out, imports, registers)
            out.append(",")
        out.append("]")
    else:
        out.append(f"{type(node).__name__}:{node!r}")


@functools.lru_cache(maxsize=1024)
def _facts(source: bytes) -> _Facts:
    """Parse one module (cached by its bytes: a process parses each module once); a module that does not parse is
    hashed as its bytes."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return _Facts(hashlib.sha256(source).hexdigest(), (), ())
    out: list[str] = []
    imports: list = []
    registers: list = []
    _walk(tree, out, imports, registers)
    return _Facts(hashlib.sha256("".join(out).encode()).hexdigest(), tuple(imports), tuple(registers))


def _not_model_code(name: str) -> bool:
    return any(name == p or (p != PACKAGE and name.startswith(p + ".")) for p in NOT_MODEL_CODE)


def _absolute(name: str, level: int, module: str, is_package: bool) -> str | None:
    """The absolute name of ``from <level dots><module> import ...`` inside module ``name``."""
    if not level:
        return module
    parts = name.split(".") if is_package else name.split(".")[:-1]
    if level - 1 >= len(parts):
        return None
    parts = parts[: len(parts) - (level - 1)]
    return ".".join([*parts, module] if module else parts)


def _targets(node: Any) -> Iterator[dict]:
    """Every dict of a recipe that has a ``_target_`` (however deep)."""
    if isinstance(node, dict):
        if isinstance(node.get("_target_"), str):
            yield node
        for value in node.values():
            yield from _targets(value)
    elif isinstance(node, list):
        for value in node:
            yield from _targets(value)


class _Source:
    """The package's source under ``root`` as modules: files, parsed facts, imports (memoised for one digest)."""

    def __init__(self, root: str | Path | None) -> None:
        self.root = Path(root) if root is not None else Path(__file__).resolve().parent.parent
        self._files: dict[str, Path | None] = {}
        self._bytes: dict[str, bytes] = {}

    def file(self, name: str) -> Path | None:
        """The file of module ``name`` (``mia_bench.a.b``: ``a/b.py`` or ``a/b/__init__.py``), or None."""
        if name not in self._files:
            parts = name.split(".")
            found = None
            if parts[0] == PACKAGE:
                base = self.root.joinpath(*parts[1:])
                files = [base.with_suffix(".py")] if len(parts) > 1 else []
                found = next((f for f in [*files, base / "__init__.py"] if f.is_file()), None)
            self._files[name] = found
        return self._files[name]

    def source(self, name: str) -> bytes:
        if name not in self._bytes:
            self._bytes[name] = self.file(name).read_bytes()
        return self._bytes[name]

    def facts(self, name: str) -> _Facts:
        return _facts(self.source(name))

    def defining_module(self, name: str, attr: str, seen: frozenset = frozenset()) -> str:
        """The module that defines ``attr`` of module ``name``: a package's ``__init__`` that re-exports it
        (``from .registry import create_model``) leads to where it is defined, so that the package's other imports
        (every model of the zoo) are not dragged in; the module itself when it defines ``attr`` or when that
        cannot be told."""
        if self.file(f"{name}.{attr}") is not None:
            return f"{name}.{attr}"
        f = self.file(name)
        if f is None or f.name != "__init__.py" or name in seen:
            return name
        for level, module, names in self.facts(name).imports:
            if attr in names:
                source = _absolute(name, level, module, is_package=True)
                return self.defining_module(source, attr, seen | {name}) if source else name
        return name

    def resolve(self, dotted: str) -> str | None:
        """The package module a ``_target_`` (a module, or a module and attributes) lives in; None outside it."""
        parts = dotted.split(".")
        for i in range(len(parts), 0, -1):
            name = ".".join(parts[:i])
            if self.file(name) is not None:
                return self.defining_module(name, parts[i]) if i < len(parts) else name
        return None

    def imported(self, name: str) -> set[str]:
        """The package modules that module ``name`` imports, anywhere in it (inside functions too)."""
        is_package = self.file(name).name == "__init__.py"
        out = set()
        for level, module, names in self.facts(name).imports:
            base = _absolute(name, level, module, is_package)
            if base is None or base.split(".")[0] != PACKAGE:
                continue
            if not names:  # import mia_bench.a.b
                out.add(base)
            out |= {self.defining_module(base, attr) if attr != "*" else base for attr in names}
        return {m for m in out if self.file(m) is not None}

    def registers(self, module: str, func: str, name: str) -> bool:
        """Whether ``module`` calls ``func(name, ...)`` (``@register_model("mlp")``); only a module whose bytes
        hold the name is parsed."""
        return name.encode() in self.source(module) and (func, name) in self.facts(module).registers

    def package_modules(self, package: str) -> set[str]:
        """Every module of ``package`` (``mia_bench``: the whole package)."""
        out = set()
        for f in sorted(self.root.joinpath(*package.split(".")[1:]).rglob("*.py")):
            rel = f.relative_to(self.root).with_suffix("").parts
            out.add(".".join([PACKAGE, *(rel[:-1] if rel[-1] == "__init__" else rel)]))
        return out

    def modules(self, recipe: dict) -> list[str]:
        start = set(CORE_MODULES)
        for node in _targets(recipe):
            target = node["_target_"]
            start.add(self.resolve(target) or "")
            if target in REGISTRY_BUILDERS:
                package, key, func = REGISTRY_BUILDERS[target]
                name, modules = str(node.get(key)), self.package_modules(package)
                start |= {m for m in modules if self.registers(m, func, name)} or modules
        for name in recipe.get("analysis") or {}:
            start |= set(RECORDER_MODULES[name]) if name in RECORDER_MODULES else self.package_modules(PACKAGE)
        todo = [m for m in start if m and self.file(m) is not None and not _not_model_code(m)]
        seen = set(todo)
        while todo:
            for m in self.imported(todo.pop()):
                if m not in seen and not _not_model_code(m):
                    seen.add(m)
                    todo.append(m)
        return sorted(seen)


def code_modules(recipe: dict | None = None, root: str | Path | None = None) -> list[str]:
    """The package modules that determine a model of ``recipe`` (:func:`describe_recipe`) and its outputs: the
    :data:`CORE_MODULES`, the modules the recipe's ``_target_`` strings live in (model builder, with the module
    registering the model's name; LightningModule; callbacks; inference-time defense; data loader), the recording
    code of its analyses (:data:`RECORDER_MODULES`), then every package module those import, transitively, except
    :data:`NOT_MODEL_CODE`. ``root``: the package folder (default: this installation's)."""
    return _Source(root).modules(recipe or {})


def code_digest(recipe: dict | None = None, root: str | Path | None = None) -> str:
    """sha256 of the code that determines a model of ``recipe`` (:func:`code_modules`), each module as its AST
    without docstrings: an edited computation in a module the model uses must not be served models trained by the
    old code (the version string only changes at releases), while a comment, a docstring, or a module the model
    does not use (an attack, a defense not selected, a new module) keeps every cached model. Each module is parsed
    once per process (a first call takes tens of milliseconds, a later one about one)."""
    src = _Source(root)
    h = hashlib.sha256()
    for name in src.modules(recipe or {}):
        h.update(f"{name}:{src.facts(name).digest}\n".encode())
    return h.hexdigest()


def _drop(node: dict, path: str) -> None:
    """Remove the dotted ``path`` from a nested dict (nothing when a part of it is absent or not a dict)."""
    *parents, leaf = path.split(".")
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(leaf, None)


def describe_recipe(cfg: DictConfig, recorded: dict | None = None) -> dict:
    """The parts of the config that determine a trained model (:data:`RECIPE_KEYS`): logged, stored in cache
    manifests, hashed into model keys.

    Left out because they do not change a model: everything outside :data:`RECIPE_KEYS` (attacks, evaluation,
    signals, logger, paths, cpu_threads, num_models, membership), the keys of :data:`MODEL_NEUTRAL_KEYS` (the
    trainer's display/logging/device settings, the training engine, the inference-time defense's pass size, the
    data location), and the :data:`QUERY_KEYS` unless something is recorded.
    ``recorded``: what analyses record while a model trains (the pipeline asks each analysis), which joins the
    recipe, together with the query augmentations, only when something is recorded."""
    out = {
        k: OmegaConf.to_container(cfg[k], resolve=True) if isinstance(cfg.get(k), DictConfig) else cfg.get(k)
        for k in RECIPE_KEYS
        if k in cfg
    }
    if recorded:
        out["analysis"] = recorded
    for path in MODEL_NEUTRAL_KEYS:
        _drop(out, path)
    if not recorded:
        for path in QUERY_KEYS:
            _drop(out, path)
    return out
