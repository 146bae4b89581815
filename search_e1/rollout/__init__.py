"""Multi-turn rollout: the per-row state machine, its generation backends, the `Trajectory` batch.

    >>> from search_e1.rollout import RolloutConfig, rollout
    >>> traj = rollout(policy, retriever, questions, golden_answers, RolloutConfig(group_size=4))
"""

from search_e1.rollout.engine import Environment, RolloutConfig, Row, State, rollout
from search_e1.rollout.generation import (
    HFTurnGenerator,
    TurnGenerator,
    TurnOutput,
    cut_turn,
    stop_cut,
)
from search_e1.rollout.trajectory import Segment, Trajectory

__all__ = [
    "Environment", "HFTurnGenerator", "RolloutConfig", "Row", "Segment", "State", "Trajectory",
    "TurnGenerator", "TurnOutput", "cut_turn", "rollout", "stop_cut",
]
