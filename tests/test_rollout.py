"""Rollout engine: state machine, loss mask, log-probs against a teacher-forced pass."""

from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from search_e1.protocol import PromptConfig, few_shot_preset
from search_e1.retrieval.base import Passage
from search_e1.rewards import exact_match
from search_e1.rollout import (
    HFTurnGenerator,
    RolloutConfig,
    Trajectory,
    TurnOutput,
    cut_turn,
    rollout,
    stop_cut,
)


class FakeRetriever:
    """Returns one passage per query whose title echoes the query; records every call."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def search(self, queries: list[str], topk: int) -> list[list[Passage]]:
        self.calls.append(list(queries))
        return [[Passage(str(i), f"T{q}", f"about {q}.") for i in range(topk)] for q in queries]


class ScriptedGenerator:
    """Plays ``script[call][row]`` as the policy's turn text, with log-prob -0.5 per token."""

    def __init__(self, tokenizer, script: list[list[str]]) -> None:
        self.tok, self.script, self.calls = tokenizer, script, 0

    def __call__(self, contexts, max_new_tokens):
        texts = self.script[self.calls]
        self.calls += 1
        assert len(texts) == len(contexts)
        outs = []
        for text, budget in zip(texts, max_new_tokens, strict=True):
            ids = self.tok(text, add_special_tokens=False)["input_ids"][:budget]
            stop = "stop" if text.rstrip().endswith(("</search>", "</answer>")) else "length"
            if text.endswith("<|im_end|>"):
                stop = "eos"
            outs.append(TurnOutput(ids, [-0.5] * len(ids), stop))
        return outs


def _sampled_text(traj: Trajectory, i: int, tok) -> str:
    ids = traj.input_ids[i][traj.loss_mask[i].bool()].tolist()
    return tok.decode(ids)


def _env_text(traj: Trajectory, i: int, tok) -> str:
    start, end = int(traj.prompt_lengths[i]), int(traj.attention_mask[i].sum())
    env = (traj.loss_mask[i, start:end] == 0).nonzero().squeeze(-1) + start
    return tok.decode(traj.input_ids[i, env].tolist())


@pytest.mark.parametrize("info_format", ["inline", "turn"])
def test_state_machine_and_loss_mask(tiny_policy, info_format):
    tok = tiny_policy.tokenizer
    # 1 question, G = 3 rows: row 0 searches then answers; row 1 is invalid then answers;
    # row 2 searches on every turn and so reaches the last turn searching (not executed).
    script = [
        ["<think>a</think><search> alpha </search>", "I do not know.", "<search> one </search>"],
        ["<answer> Talmor </answer>", "<answer> Bexley </answer>", "<search> two </search>"],
        ["<search> three </search>"],
    ]
    retriever = FakeRetriever()
    cfg = RolloutConfig(max_turns=3, max_new_tokens=64, passages_per_search=2)
    traj = rollout(
        tiny_policy, retriever, ["Where was Ada born?"], [["Talmor"]], cfg,
        prompt=PromptConfig(info_format=info_format), generator=ScriptedGenerator(tok, script), group_size=3,
    )
    assert len(traj) == 3 and traj.group_ids.tolist() == [0, 0, 0]
    # one batched retrieval per turn with every pending query
    assert retriever.calls == [["alpha", "one"], ["two"]]
    assert traj.num_searches.tolist() == [1, 0, 2]
    assert traj.num_turns.tolist() == [2, 2, 3]
    assert traj.finish_reasons == ["answer", "answer", "search_on_last_turn"]
    assert traj.answers == ["Talmor", "Bexley", None]
    assert traj.rewards.tolist() == [1.0, 0.0, 0.0]
    # loss mask: exactly the scripted (sampled) tokens are 1, and they decode to the script
    # (call, position among that call's active rows) of each row's turns
    played = [[(0, 0), (1, 0)], [(0, 1), (1, 1)], [(0, 2), (1, 2), (2, 0)]]
    for i, turns in enumerate(played):
        assert _sampled_text(traj, i, tok) == "".join(script[c][p] for c, p in turns)
        n_sampled = sum(len(tok(script[c][p], add_special_tokens=False)["input_ids"]) for c, p in turns)
        assert int(traj.loss_mask[i].sum()) == n_sampled
        assert traj.loss_mask[i, : int(traj.prompt_lengths[i])].sum() == 0  # prompt is 0
        assert traj.loss_mask[i, int(traj.attention_mask[i].sum()) :].sum() == 0  # padding is 0
        # sampled log-probs where mask 1, zeros elsewhere
        assert torch.equal(traj.logprobs[i] != 0, traj.loss_mask[i] != 0)
    # every information token is 0: the environment text holds the blocks and the feedback
    env0, env1, env2 = (_env_text(traj, i, tok) for i in range(3))
    assert "<information>Doc 1 (Title: Talpha) about alpha." in env0 and "Doc 2" in env0
    assert "<information>" not in env1 and "Invalid action" in env1
    assert env2.count("<information>") == 2 and "last turn" in env2  # note before the last turn
    assert "<information>" not in _sampled_text(traj, 0, tok)
    if info_format == "turn":  # template glue around the information turn is environment
        assert env0.startswith("<|im_end|>\n<|im_start|>user\n<information>")
        assert env0.endswith("<|im_start|>assistant\n")


def test_eos_budget_and_context_limit(tiny_policy):
    tok = tiny_policy.tokenizer
    script = [["I am done<|im_end|>", "<search> " + "word " * 40 + "</search>"]]
    cfg = RolloutConfig(max_turns=3, max_new_tokens=10, passages_per_search=1)
    traj = rollout(tiny_policy, FakeRetriever(), ["Q?"], [["x"]], cfg,
                   generator=ScriptedGenerator(tok, script + [["x"], ["y"]]), group_size=2)
    # row 0 ended on EOS; row 1 was cut by the 10-token budget -> invalid -> feedback, then two
    # more one-token invalid turns: 10 + 1 + 1 sampled tokens, ended by the turn limit
    assert traj.finish_reasons == ["eos", "max_turns"]
    assert int(traj.loss_mask[1].sum()) == 10 + 1 + 1 and traj.num_turns.tolist() == [1, 3]
    assert "Invalid action" in _env_text(traj, 1, tok)
    prompt_len = int(traj.prompt_lengths[0])
    limit = RolloutConfig(max_turns=4, max_new_tokens=64, max_total_tokens=prompt_len + 8)
    traj = rollout(tiny_policy, FakeRetriever(), ["Q?"], [["x"]], limit,
                   generator=ScriptedGenerator(tok, [["<search> q </search>"]]))
    assert traj.finish_reasons == ["max_total_tokens"] and traj.num_searches.tolist() == [0]
    assert int(traj.attention_mask.sum()) <= prompt_len + 8


def test_stop_cut_on_real_tokenizer(smol_tokenizer):
    tok = smol_tokenizer
    ids = tok("<think>x</think> <search> big cat </search>\n\nmore text", add_special_tokens=False)["input_ids"]
    k = stop_cut(tok, ids)
    assert tok.decode(ids[:k]).endswith("</search>") and not tok.decode(ids[: k - 1]).endswith("</search>")
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    assert cut_turn(tok, ids[:3] + [eos, eos], {eos}) == (4, "eos")
    assert cut_turn(tok, ids, {eos}) == (k, "stop")
    assert cut_turn(tok, ids[:3], {eos}) == (3, "length")


class ForceText(LogitsProcessor):
    """Forces the sampled continuation to spell given token ids, one script per turn.

    Only the *sampling* is forced; the recorded log-probs come from the raw logits, so they are
    the model's real probabilities of these tokens, which the teacher-forced pass must reproduce.
    """

    def __init__(self, turns: list[list[int]]) -> None:
        self.turns, self.turn, self.start = turns, -1, None

    def __call__(self, input_ids, scores):
        if self.start is None or input_ids.shape[1] <= self.start:
            self.turn, self.start = self.turn + 1, input_ids.shape[1]
        step = input_ids.shape[1] - self.start
        target = self.turns[min(self.turn, len(self.turns) - 1)]
        forced = torch.full_like(scores, float("-inf"))
        forced[:, target[min(step, len(target) - 1)]] = 0.0
        return forced


def _forced_generator(policy, texts: list[str], temperature: float = 1.0) -> HFTurnGenerator:
    tok = policy.tokenizer
    turns = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    proc = ForceText(turns)

    class Gen(HFTurnGenerator):
        def _generate(self, contexts, budgets):
            proc.start = None  # each call is a new turn
            return super()._generate(contexts, budgets)

    return Gen(policy.model, tok, policy.eos_token_ids, temperature=temperature,
               generate_kwargs={"logits_processor": LogitsProcessorList([proc])})


@pytest.mark.parametrize("info_format", ["inline", "turn"])
def test_rollout_logprobs_match_teacher_forced_pass(tiny_policy, info_format):
    texts = ["<think>hm</think> <search> alpha beta </search>", "<think>ok</think> <answer> Talmor </answer>"]
    cfg = RolloutConfig(max_turns=3, max_new_tokens=32, passages_per_search=2, temperature=0.7)
    traj = rollout(tiny_policy, FakeRetriever(), ["Where?", "Who wrote it, really?"], [["Talmor"], ["x"]],
                   cfg, prompt=PromptConfig(info_format=info_format),
                   generator=_forced_generator(tiny_policy, texts, temperature=0.7), group_size=2)
    assert traj.num_searches.tolist() == [1, 1, 1, 1] and traj.rewards.tolist() == [1, 1, 0, 0]
    with torch.no_grad():
        tf, _ = tiny_policy.token_logprobs(traj.input_ids, traj.attention_mask, traj.loss_mask,
                                           temperature=0.7)
    mask = traj.loss_mask.bool()
    assert mask.sum() > 0 and (traj.logprobs[mask] < 0).all()
    assert (tf - traj.logprobs)[mask].abs().max().item() <= 1e-3


def test_sampled_rollout_logprobs_match_teacher_forced_pass(tiny_policy):
    """Free sampling (no forcing) from the random model: mostly invalid turns with feedback."""
    torch.manual_seed(1)
    cfg = RolloutConfig(max_turns=2, max_new_tokens=12)
    traj = rollout(tiny_policy, FakeRetriever(), ["A?", "B?"], [["a"], ["b"]], cfg, group_size=3)
    with torch.no_grad():
        tf, _ = tiny_policy.token_logprobs(traj.input_ids, traj.attention_mask, traj.loss_mask)
    mask = traj.loss_mask.bool()
    assert (tf - traj.logprobs)[mask].abs().max().item() <= 1e-3
    # records round-trip: ids and masks of every row survive to_records
    rec = traj.to_records(tiny_policy.tokenizer)
    assert len(rec) == 6 and sum(sum(r["loss_mask"]) for r in rec) == int(traj.loss_mask.sum())


@pytest.mark.slow
def test_embedded_policy_with_dense_retriever(embedded_policy, demo_retriever, demo_questions):
    """SmolLM2 + MiniLM over a tiny generated world, few-shot prompt with information turns."""
    torch.manual_seed(0)
    qs = demo_questions[:2]
    cfg = RolloutConfig(max_turns=3, max_new_tokens=48, max_info_tokens=120)
    traj = rollout(embedded_policy, demo_retriever, [q["question"] for q in qs],
                   [q["golden_answers"] for q in qs], cfg, prompt=few_shot_preset("turn"), group_size=3)
    tok = embedded_policy.tokenizer
    assert len(traj) == 6
    for i in range(len(traj)):
        sampled, env = _sampled_text(traj, i, tok), _env_text(traj, i, tok)
        assert "<information>" not in sampled  # information never carries loss
        assert env.count("<information>") == int(traj.num_searches[i])
        assert traj.rewards[i].item() == exact_match(traj.answers[i], traj.golden_answers[i])
    with torch.no_grad():
        tf, _ = embedded_policy.token_logprobs(traj.input_ids, traj.attention_mask, traj.loss_mask)
    mask = traj.loss_mask.bool()
    assert (tf - traj.logprobs)[mask].abs().max().item() <= 1e-3
