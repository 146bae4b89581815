"""Multi-turn rollout: the per-row state machine, its generation backends, the `Trajectory` batch.

    >>> from search_e1.rollout import RolloutConfig, rollout
    >>> traj = rollout(policy, retriever, questions, golden_answers, RolloutConfig(group_size=4))
"""

from search_e1.rollout.engine import (
    Environment,
    RolloutConfig,
    Row,
    State,
    check_prompt_fits,
    rollout,
)
from search_e1.rollout.generation import (
    BACKENDS,
    GeneratorFactory,
    HFTurnGenerator,
    TurnGenerator,
    TurnOutput,
    cut_turn,
    hf_generator,
    make_generator,
    stop_cut,
)
from search_e1.rollout.trajectory import Segment, Trajectory
from search_e1.rollout.vllm_backend import VLLMConfig, VLLMEngine, VLLMTurnGenerator

__all__ = [
    "BACKENDS", "Environment", "GeneratorFactory", "HFTurnGenerator", "RolloutConfig", "Row", "Segment", "State",
    "Trajectory", "TurnGenerator", "TurnOutput", "VLLMConfig", "VLLMEngine", "VLLMTurnGenerator", "check_prompt_fits", "cut_turn",
    "hf_generator", "make_generator", "rollout", "stop_cut",
]
