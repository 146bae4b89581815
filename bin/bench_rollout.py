#!/usr/bin/env python
"""Rollout benchmark (issue 7): the reference engine (HF generate) against the vLLM backend.

Workload: the quickstart's prompt, policy (embedded SmolLM2-135M), world and retriever (MiniLM),
``--questions`` training questions x G = ``--group-size`` samples, ``--max-turns`` turns of at most
``--max-new-tokens`` tokens, retrieval in the loop, temperature 1.0. Each backend runs in its own
child process (so each has its own peak RSS), one after the other in one command, and reports:

* engine start (vLLM: build + compile warm-up; HF: nothing) and rollout wall time;
* trajectories/s and generated tokens/s of the rollout;
* prompt tokens computed: HF re-encodes every context every turn (the sum of context lengths it
  is given); vLLM reports prefix-cache hits, computed = sent - cached. Against the minimum a perfect
  cache computes: every distinct prefix of the contexts sent once, less what decoding computed
  (`minimum_prompt_tokens`);
* peak RSS of the child (``ru_maxrss``), and for vLLM its KV-cache reservation separately;
* log-prob agreement: each trajectory's sampling log-probs against a teacher-forced HF forward
  over the final sequences (`Policy.token_logprobs`), max and mean |diff| over sampled tokens;
* one GRPO step end to end (rollout of ``--grpo-questions`` x G, old log-probs = sampling ones,
  one optimiser step on the whole batch), and, for vLLM, the weight push that the step triggers.

Threads: each child uses ``--threads`` torch/OpenMP threads (default: every core). Run it on a
quiet machine: the two children run in sequence, so a load change between them biases the ratio.

Run::

    python bin/bench_rollout.py --policy runs/quickstart/checkpoints/warmup   # ~11 min on 2 cores
    python bin/bench_rollout.py --questions 8 --group-size 2 --max-turns 2   # smoke run
"""

from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench_rollout")


def quickstart(config: str) -> Any:
    """The quickstart's configuration groups as objects (world written if missing)."""
    from search_e1.cli import fit_parser

    parser = fit_parser()
    cfg = parser.parse_args(["--config", config])
    init = parser.instantiate(cfg)
    init.demo_world.ensure()
    return init


class CountingGenerator:
    """Wraps a `TurnGenerator` and counts the context tokens it is handed (HF computes them all)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.context_tokens = inner, 0

    def __call__(self, contexts: list[list[int]], max_new_tokens: list[int]) -> Any:
        self.context_tokens += sum(len(c) for c in contexts)
        return self.inner(contexts, max_new_tokens)


def minimum_prompt_tokens(traj: Any) -> int:
    """Context tokens a perfect prefix cache computes: every distinct prefix of the contexts the engine
    is sent (each row's sequence up to the start of each of its turns) once, less those whose KV
    decoding already computed (every sampled token that its turn goes on after).

    Rows of one question share their prompt, and also their first turns and information blocks
    where they sampled the same search, so the count is over the trie of all contexts."""
    trie: dict[tuple[int, int], int] = {}  # (parent prefix, next id) -> prefix; -1 = the empty prefix
    decoded = set()
    for i in range(len(traj)):
        p, end = int(traj.prompt_lengths[i]), int(traj.attention_mask[i].sum())
        ids, mask = traj.input_ids[i, :end].tolist(), traj.loss_mask[i, :end].tolist()
        sent = max((j for j in range(p, end) if mask[j] == 1 and mask[j - 1] == 0), default=p)  # last turn start
        node = -1
        for j in range(sent):
            node = trie.setdefault((node, ids[j]), len(trie))  # the prefix ids[: j + 1]
            if mask[j] == 1 and mask[j + 1] == 1:
                decoded.add(node)
    return len(trie) - len(decoded)


def logprob_agreement(policy: Any, traj: Any) -> dict[str, float]:
    import torch

    diffs = []
    with torch.no_grad():
        for idx in torch.arange(len(traj)).split(8):
            lp, _ = policy.token_logprobs(traj.input_ids[idx], traj.attention_mask[idx], traj.loss_mask[idx])
            mask = traj.loss_mask[idx].bool()
            diffs.append((lp - traj.logprobs[idx])[mask].abs())
    d = torch.cat(diffs)
    return {"logprob_max_abs_diff": float(d.max()), "logprob_mean_abs_diff": float(d.mean()), "tokens": int(d.numel())}


def run_child(args: argparse.Namespace) -> dict[str, Any]:
    """One backend: engine start, the rollout, agreement, one GRPO step; returns the figures."""
    import torch

    from search_e1 import Policy
    from search_e1.rollout import make_generator, rollout

    torch.set_num_threads(args.threads)
    init = quickstart(args.config)
    rcfg = replace(init.rollout, max_turns=args.max_turns,
                   max_new_tokens=args.max_new_tokens, temperature=1.0, backend=args.backend,
                   vllm=replace(init.rollout.vllm, threads=args.threads))
    policy = Policy.from_config(replace(init.policy, path=args.policy) if args.policy else init.policy).eval()
    init.data.setup("fit")
    retriever, train = init.data.retriever, init.data.examples("train")
    qs = train[: args.questions]
    t0 = time.perf_counter()
    gen = make_generator(policy, rcfg)
    start_s = time.perf_counter() - t0
    counter = CountingGenerator(gen)
    before = gen.engine.stats() if args.backend == "vllm" else {}
    torch.manual_seed(0)
    t0 = time.perf_counter()
    traj = rollout(policy, retriever, [q.question for q in qs], [list(q.golden_answers) for q in qs], rcfg,
                   init.prompt, init.reward, generator=counter, group_size=args.group_size)
    wall = time.perf_counter() - t0
    generated = int(traj.loss_mask.sum())
    out: dict[str, Any] = {
        "backend": args.backend, "engine_start_s": start_s, "rollout_s": wall, "trajectories": len(traj),
        "trajectories_per_s": len(traj) / wall, "generated_tokens": generated,
        "generated_tokens_per_s": generated / wall,
        "searches_per_trajectory": float(traj.num_searches.float().mean()), "reward_mean": float(traj.rewards.mean()),
        "min_prompt_tokens": minimum_prompt_tokens(traj), "sent_prompt_tokens": counter.context_tokens,
    }
    if args.backend == "vllm":
        after = gen.engine.stats()
        out["computed_prompt_tokens"] = after["computed_prompt_tokens"] - before["computed_prompt_tokens"]
        out["kv_cache_gb"] = rcfg.vllm.kv_cache_gb
    else:
        out["computed_prompt_tokens"] = counter.context_tokens
    out.update(logprob_agreement(policy, traj.trim()))
    out.update(grpo_step(policy, retriever, init, rcfg, args.group_size, train[: args.grpo_questions]))
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


def grpo_step(policy: Any, retriever: Any, init: Any, rcfg: Any, group_size: int,
              questions: list[Any]) -> dict[str, float]:
    """One GRPO step (rollout + update) on a Lightning Trainer; then the weight push it causes."""
    import lightning as L
    from torch.utils.data import DataLoader

    from search_e1.data import collate_questions
    from search_e1.rollout import SearchEnv, make_generator
    from search_e1.rounds.grpo import GRPOModule

    grpo = replace(init.grpo, group_size=group_size, kl_coef=0.0, log_text_every=0)
    module = GRPOModule(policy, SearchEnv(retriever, rcfg, init.prompt, init.reward), grpo)
    loader = DataLoader(questions, batch_size=len(questions), collate_fn=collate_questions)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    t0 = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    out = {"grpo_step_s": time.perf_counter() - t0}
    if rcfg.backend == "vllm":
        gen = make_generator(policy, rcfg)
        t0 = time.perf_counter()
        pushed = gen.engine.sync(policy)
        out["weight_sync_s"] = time.perf_counter() - t0 if pushed else 0.0
    return out


NO_RATIO = {"engine_start_s", "min_prompt_tokens", "logprob_max_abs_diff", "logprob_mean_abs_diff"}
"""Table rows whose vllm / hf ratio means nothing (HF has no engine to start; each engine's own samples)."""


def table(results: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    rows = [("engine start (s)", "engine_start_s", "{:.1f}"), ("rollout wall (s)", "rollout_s", "{:.1f}"),
            ("trajectories", "trajectories", "{}"), ("trajectories/s", "trajectories_per_s", "{:.3f}"),
            ("generated tokens/s", "generated_tokens_per_s", "{:.1f}"),
            ("searches/trajectory", "searches_per_trajectory", "{:.2f}"),
            ("prompt tokens computed", "computed_prompt_tokens", "{:,}"),
            ("prompt tokens minimum", "min_prompt_tokens", "{:,}"),
            ("log-prob max |diff|", "logprob_max_abs_diff", "{:.2e}"),
            ("log-prob mean |diff|", "logprob_mean_abs_diff", "{:.2e}"),
            ("GRPO step (s)", "grpo_step_s", "{:.1f}"), ("weight sync (s)", "weight_sync_s", "{:.2f}"),
            ("peak RSS (GB)", "peak_rss_gb", "{:.2f}"), ("KV reservation (GB)", "kv_cache_gb", "{:.2f}")]
    t = Table(title="rollout: reference engine vs vLLM backend")
    t.add_column("metric")
    for r in results:
        t.add_column(r["backend"], justify="right")
    if len(results) == 2:
        t.add_column("vllm / hf", justify="right")
    for label, key, fmt in rows:
        vals = [fmt.format(r[key]) if key in r else "-" for r in results]
        ratio = []
        if len(results) == 2 and key not in NO_RATIO and all(isinstance(r.get(key), int | float) and r.get(key)
                                                             for r in results):
            ratio = [f"{results[1][key] / results[0][key]:.2f}x"]
        elif len(results) == 2:
            ratio = ["-"]
        t.add_row(label, *vals, *ratio)
    Console().print(t)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(ROOT / "conf" / "quickstart.yaml"))
    ap.add_argument("--questions", type=int, default=48)
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--max-turns", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--grpo-questions", type=int, default=4, help="questions of the GRPO step (the quickstart's batch)")
    ap.add_argument("--policy", default="", help="policy checkpoint (default: the config's); the quickstart's "
                    "runs/quickstart/checkpoints/warmup follows the protocol, so rollouts really take 3 turns")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--backends", default="hf,vllm")
    ap.add_argument("--out", default=str(ROOT / "bench" / "rollout"))
    ap.add_argument("--backend", help=argparse.SUPPRESS)  # child mode
    ap.add_argument("--child-json", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.backend:  # child: one backend, figures to --child-json
        Path(args.child_json).write_text(json.dumps(run_child(args)))
        return {}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for backend in args.backends.split(","):
        child_json = out / f"{backend}.json"
        cmd = [sys.executable, __file__, "--backend", backend, "--child-json", str(child_json)] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
            if k in ("config", "questions", "group_size", "max_turns", "max_new_tokens", "grpo_questions", "threads",
                     "policy")]
        log.info("running %s", backend)
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        results.append(json.loads(child_json.read_text()))
    summary = {"machine": {"cpu_cores": len(os.sched_getaffinity(0)), "platform": platform.platform()},
               "workload": {k: getattr(args, k) for k in ("questions", "group_size", "max_turns", "max_new_tokens",
                                                          "grpo_questions", "threads", "policy")},
               "results": results}
    if len(results) == 2:
        summary["speedup_trajectories_per_s"] = results[1]["trajectories_per_s"] / results[0]["trajectories_per_s"]
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    table(results)
    return summary


if __name__ == "__main__":
    main()
