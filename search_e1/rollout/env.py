"""`SearchEnv`: everything a rollout needs except the policy, in one typed object.

The retriever, the rollout budgets, the prompt, the reward and the generation backend do not
depend on the policy being trained; the GRPO and OFSD rounds and the evaluation all roll out
through one `SearchEnv`:

    >>> env = SearchEnv(retriever, RolloutConfig(max_turns=3), PromptConfig(), RewardConfig())
    >>> traj = env.rollout(policy, questions, golden_answers, group_size=4)     # sampled, G = 4
    >>> traj = env.rollout(policy, questions, golden_answers, greedy=True)      # evaluation

The group size is an argument, not a setting of the environment: each round config owns its own
(``grpo.group_size``, ``ofsd.group_size``) and evaluation samples one greedy trajectory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from search_e1.memory import generation_allocations
from search_e1.protocol import PromptConfig
from search_e1.retrieval.base import Retriever
from search_e1.rewards import RewardConfig
from search_e1.rollout.backends import make_generator
from search_e1.rollout.engine import RolloutConfig, check_prompt_fits, rollout
from search_e1.rollout.trajectory import Trajectory
from search_e1.rollout.turn import GeneratorFactory


@dataclass
class SearchEnv:
    """The search environment a policy rolls out in.

    Args:
        retriever: any `Retriever` (dense index, HTTP client, a test double); required to roll out.
        config: turn, token and sampling budgets, and the backend (``config.backend``).
        prompt: prompt template and information format.
        reward: reward definition.
        generator_factory: overrides the backend ``config.backend`` names (tests, custom engines).
    """

    retriever: Retriever | None = None
    config: RolloutConfig = field(default_factory=RolloutConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    generator_factory: GeneratorFactory | None = None

    def with_retriever(self, retriever: Retriever) -> SearchEnv:
        """The same environment over ``retriever``."""
        return replace(self, retriever=retriever)

    @torch.no_grad()
    def rollout(self, policy: Any, questions: Sequence[str], answers: Sequence[Sequence[str]], group_size: int = 1,
                *, greedy: bool = False) -> Trajectory:
        """``group_size`` trajectories per question from ``policy`` (switched to eval mode meanwhile),
        scored against ``answers``; ``greedy`` samples at temperature 0 (evaluation)."""
        if self.retriever is None:
            raise RuntimeError("SearchEnv.rollout needs a retriever (SearchEnv(retriever=...) or with_retriever)")
        cfg = replace(self.config, temperature=0.0) if greedy else self.config
        was_training = policy.training
        policy.eval()
        try:
            with generation_allocations():
                return rollout(policy, self.retriever, questions, answers, cfg, self.prompt, self.reward,
                               generator=(self.generator_factory or make_generator)(policy, cfg),
                               group_size=group_size)
        finally:
            policy.train(was_training)

    def check_prompt_fits(self, tokenizer: Any) -> int:
        """The prompt template's length; `UserInputError` when no turn fits the token budget."""
        return check_prompt_fits(tokenizer, self.prompt, self.config)

    @property
    def sampling_temperature(self) -> float:
        """The temperature rollouts sample at (1.0 when the config says greedy): the training losses
        score the policy's distribution at this temperature, so sampling log-probs are old log-probs."""
        return self.config.temperature or 1.0
