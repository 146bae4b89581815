"""Multi-turn rollout: the per-row state machine, its generation backends, the `Trajectory` batch.

    >>> from search_e1.rollout import RolloutConfig, SearchEnv
    >>> traj = SearchEnv(retriever, RolloutConfig(max_turns=3)).rollout(policy, questions, golden_answers, group_size=4)
"""

from search_e1.rollout.backends import BACKENDS, make_generator
from search_e1.rollout.engine import (
    Renderer,
    RolloutConfig,
    Row,
    State,
    check_prompt_fits,
    rollout,
)
from search_e1.rollout.env import SearchEnv
from search_e1.rollout.generation import HFTurnGenerator, hf_generator
from search_e1.rollout.trajectory import Segment, Trajectory, rollout_stats
from search_e1.rollout.turn import (
    GeneratorFactory,
    TurnGenerator,
    TurnOutput,
    cut_turn,
    left_pad,
    stop_cut,
)
from search_e1.rollout.vllm_backend import VLLMConfig, VLLMEngine, VLLMTurnGenerator

__all__ = [
    "BACKENDS", "GeneratorFactory", "HFTurnGenerator", "Renderer", "RolloutConfig", "Row", "SearchEnv", "Segment",
    "State", "Trajectory", "TurnGenerator", "TurnOutput", "VLLMConfig", "VLLMEngine", "VLLMTurnGenerator",
    "check_prompt_fits", "cut_turn", "hf_generator", "left_pad", "make_generator", "rollout", "rollout_stats",
    "stop_cut",
]
