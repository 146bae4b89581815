"""The reference generation backend: `HFTurnGenerator`, one turn for a batch of contexts.

The rollout engine calls a `search_e1.rollout.turn.TurnGenerator` once per turn. `HFTurnGenerator`
is the reference backend: one ``model.generate`` call over the whole (left-padded) context of every
active row, stopping each row at ``</search>``, ``</answer>``, EOS or the token budget. It
re-encodes the full context every turn (no KV cache across turns); it stays as the reference
that faster engines are checked and benchmarked against.

Sampling log-probs are those of the tempered, *untruncated* distribution
``log_softmax(logits / temperature)`` at the sampled token: with the default ``top_k = 0`` and
``top_p = 1`` this is exactly the sampling distribution, and it is the distribution the
training forward pass recomputes, so importance ratios start at 1.
"""

from __future__ import annotations

from typing import Any

import torch

from search_e1.distributed import is_distributed, max_over_ranks
from search_e1.protocol import STOP_STRINGS
from search_e1.rollout.turn import TurnOutput, cut_turn, left_pad


class HFTurnGenerator:
    """Reference backend: ``transformers`` ``generate`` over the whole context, per turn.

    Args:
        model: the causal LM (``Policy.model``).
        tokenizer: its tokenizer.
        eos_ids: tokens that end a trajectory.
        temperature: sampling temperature; 0 means greedy decoding (log-probs at temperature 1).
        top_k: 0 disables top-k truncation.
        top_p: 1.0 disables nucleus truncation.
        batch_size: rows per ``generate`` call.
        generate_kwargs: extra keyword arguments for ``generate`` (e.g. a ``logits_processor``).
    """

    def __init__(
        self, model: Any, tokenizer: Any, eos_ids: list[int], temperature: float = 1.0,
        top_k: int = 0, top_p: float = 1.0, batch_size: int = 64,
        generate_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.eos_ids = set(eos_ids)
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.batch_size = batch_size
        self.generate_kwargs = dict(generate_kwargs or {})

    def __call__(self, contexts: list[list[int]], max_new_tokens: list[int]) -> list[TurnOutput]:
        """Generate in chunks of ``batch_size``. Under torch.distributed every rank makes the
        same number of ``generate`` calls (a rank with fewer rows makes one-token dummy calls)
        and each call runs with ``synced_gpus`` so FSDP's all-gathers stay matched."""
        outputs: list[TurnOutput] = []
        n_calls = max_over_ranks(-(-len(contexts) // self.batch_size))
        for call in range(n_calls):
            chunk = contexts[call * self.batch_size : (call + 1) * self.batch_size]
            budget = max_new_tokens[call * self.batch_size : (call + 1) * self.batch_size]
            if chunk:
                outputs.extend(self._generate(chunk, budget))
            else:  # keep this rank in step with the others
                self._generate([[self.tokenizer.pad_token_id]], [1])
        return outputs

    @torch.no_grad()
    def _generate(self, contexts: list[list[int]], budgets: list[int]) -> list[TurnOutput]:
        pad_id = self.tokenizer.pad_token_id
        device = next(self.model.parameters()).device
        input_ids, attention = left_pad(contexts, pad_id)
        greedy = self.temperature <= 0
        sampling = {} if greedy else {
            "temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p,
        }
        out = self.model.generate(
            input_ids=input_ids.to(device), attention_mask=attention.to(device),
            do_sample=not greedy, max_new_tokens=max(budgets), stop_strings=list(STOP_STRINGS),
            tokenizer=self.tokenizer, output_logits=True, return_dict_in_generate=True,
            pad_token_id=pad_id, eos_token_id=sorted(self.eos_ids), synced_gpus=is_distributed(),
            **sampling,
            **self.generate_kwargs,
        )
        new = out.sequences[:, input_ids.shape[1] :]  # [B, S]
        temp = 1.0 if greedy else self.temperature
        steps = [
            torch.log_softmax(step.float() / temp, dim=-1).gather(-1, new[:, s, None]).squeeze(-1)
            for s, step in enumerate(out.logits)
        ]  # S x [B]
        logprobs = torch.stack(steps, dim=1).cpu()  # [B, S]
        results = []
        for i, budget in enumerate(budgets):
            row = new[i, :budget].tolist()
            length, reason = cut_turn(self.tokenizer, row, self.eos_ids)
            results.append(TurnOutput(row[:length], logprobs[i, :length].tolist(), reason))
        return results


def hf_generator(policy: Any, cfg: Any) -> HFTurnGenerator:
    """The reference backend: `HFTurnGenerator` on the policy with the config's sampling knobs."""
    return HFTurnGenerator(policy.model, policy.tokenizer, policy.eos_token_ids, cfg.temperature, cfg.top_k,
                           cfg.top_p, cfg.generation_batch_size)
