"""The rollout backends by name (``rollout.backend``): a `Registry` of `GeneratorFactory` functions.

    >>> sorted(BACKENDS)
    ['hf', 'vllm']

``hf`` is the transformers reference (`search_e1.rollout.generation`), ``vllm`` the colocated vLLM
engine (`search_e1.rollout.vllm_backend`; vLLM itself is imported when an engine is built). Another
project registers its own with ``BACKENDS.register("name")(factory)`` and selects it by name.
"""

from __future__ import annotations

from typing import Any

from search_e1.registry import Registry
from search_e1.rollout.generation import hf_generator
from search_e1.rollout.turn import GeneratorFactory, TurnGenerator
from search_e1.rollout.vllm_backend import vllm_generator

BACKENDS: Registry[GeneratorFactory] = Registry("rollout backend")
"""``RolloutConfig.backend`` -> the factory that builds its `TurnGenerator`."""
BACKENDS.register("hf")(hf_generator)
BACKENDS.register("vllm")(vllm_generator)


def make_generator(policy: Any, cfg: Any) -> TurnGenerator:
    """The `TurnGenerator` of the backend ``cfg.backend`` names (``hf`` when the config has none)."""
    return BACKENDS.get(getattr(cfg, "backend", "hf"))(policy, cfg)
