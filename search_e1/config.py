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
