"""The Search-E1 method: the rounds and their schedule.

* `base` - what the round modules share (the policy, sharding, the optimiser, logging);
* `grpo` - a vanilla GRPO round over multi-turn search rollouts;
* `ofsd` - an offline self-distillation round (privileged sibling context -> inference-time self);
* `warmup` - the optional supervised protocol warm-up (a departure for small models);
* `evolver` - the schedule: warm-up, then rounds x (GRPO, OFSD), checkpoints, resume, val table;
* `evaluate` - greedy evaluation (EM, F1, searches, tokens) of a policy on QA examples.
"""

from search_e1.rounds.base import OptimConfig, RoundModule
from search_e1.rounds.evaluate import evaluate_policy
from search_e1.rounds.evolver import Evolver, EvolverConfig
from search_e1.rounds.grpo import GRPOConfig, GRPOModule
from search_e1.rounds.ofsd import OFSDConfig, OFSDModule
from search_e1.rounds.warmup import WarmupConfig, WarmupModule

__all__ = [
    "Evolver", "EvolverConfig", "GRPOConfig", "GRPOModule", "OFSDConfig", "OFSDModule", "OptimConfig", "RoundModule",
    "WarmupConfig", "WarmupModule", "evaluate_policy",
]
