"""Helpers for the typed config objects (dataclasses read by jsonargparse)."""

from __future__ import annotations

import json
from dataclasses import asdict, is_dataclass
from typing import Any


def plain(config: Any) -> Any:
    """A config as JSON-plain data (dicts, lists, strings, numbers): safe for hparams and yaml."""
    if config is None:
        return None
    data = asdict(config) if is_dataclass(config) and not isinstance(config, type) else config
    return json.loads(json.dumps(data, default=str))


def check_range(config: Any, *, at_least: dict[str, float] | None = None, above: dict[str, float] | None = None,
                at_most: dict[str, float] | None = None) -> None:
    """Refuse the first field of ``config`` out of its range with ``"<Class>.<field> must be >= <bound>, got
    <value>"`` (``above``: ``>``; ``at_most``: ``<=``), so the CLI can name the key the user set.

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class C:
    ...     top_k: int = -5
    >>> check_range(C(), at_least={"top_k": 0})
    Traceback (most recent call last):
    ...
    ValueError: C.top_k must be >= 0, got -5
    """
    name = type(config).__name__
    for rules, op, ok in ((at_least, ">=", lambda v, b: v >= b), (above, ">", lambda v, b: v > b),
                          (at_most, "<=", lambda v, b: v <= b)):
        for field, bound in (rules or {}).items():
            value = getattr(config, field)
            if not ok(value, bound):
                raise ValueError(f"{name}.{field} must be {op} {bound}, got {value}")
