"""Name -> function registries for the variants of the method (advantages, losses, KL, ...).

Every family of interchangeable functions is a `Registry`: a dict with a ``register`` decorator
that refuses duplicate names and a ``get`` whose error lists the registered names. Configs hold
the names; modules look them up, so there is no if/elif chain over variants anywhere.

    >>> SCALERS = Registry("scaler")
    >>> @SCALERS.register("double", "twice")
    ... def double(x):
    ...     return 2 * x
    >>> SCALERS.get("twice")(3)
    6
    >>> SCALERS.get("triple")
    Traceback (most recent call last):
    ...
    ValueError: unknown scaler 'triple'; registered: ['double', 'twice']
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

F = TypeVar("F", bound=Callable)


class Registry(dict[str, F], Generic[F]):
    """A named family of functions; ``kind`` names the family in error messages."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(self, *names: str) -> Callable[[F], F]:
        """Decorator registering a function under one or more names; duplicates are refused."""

        def decorator(fn: F) -> F:
            taken = [n for n in names if n in self]
            if taken:
                raise ValueError(f"{self.kind} {taken[0]!r} is already registered")
            for name in names:
                self[name] = fn
            return fn

        return decorator

    def get(self, name: str) -> F:  # type: ignore[override]
        """The function registered as ``name``; a clear error listing the names otherwise."""
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r}; registered: {sorted(self)}")
        return self[name]
