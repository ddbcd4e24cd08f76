"""Name -> builder registries (in the manner of timm), shared by the model zoo and the dataset loaders.

A registry gives the Python API its short names (``create_model("resnet18", ...)``, ``load_dataset("cifar10")``)
and the same clear errors everywhere: an unknown name lists the registered ones, an argument the builder does not
take lists the ones it does.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class Registry(Generic[F]):
    """Builders of one kind (``model``, ``dataset``) by name."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator registering a builder under ``name``; registering the same function again (a module imported
        twice) is a no-op, another function under a taken name is an error."""

        def decorator(fn: F) -> F:
            old = self._builders.get(name)
            if old is not None and (old.__module__, old.__qualname__) != (fn.__module__, fn.__qualname__):
                raise ValueError(f"{self.kind} {name!r} is already registered by {old.__module__}.{old.__qualname__}")
            self._builders[name] = fn
            return fn

        return decorator

    def names(self) -> list[str]:
        return sorted(self._builders)

    def __contains__(self, name: object) -> bool:
        return name in self._builders

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._builders)

    def get(self, name: str) -> F:
        try:
            return self._builders[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; registered: {', '.join(self.names())}") from None

    def check_kwargs(self, name: str, kwargs: dict[str, Any], skip: int = 0) -> None:
        """Raise ``TypeError`` naming the arguments builder ``name`` does not take (after its first ``skip``
        positional parameters, which the caller passes itself) and the ones it does."""
        params = list(inspect.signature(self.get(name)).parameters.values())[skip:]
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return
        accepted = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise TypeError(f"{self.kind} {name!r} got unexpected argument(s) {unknown}; accepted: {accepted}")
