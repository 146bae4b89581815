#!/usr/bin/env python
"""Training-memory benchmark (issue 7): peak RSS of CPU training steps under glibc allocator settings.

Workload: the embedded SmolLM2-135M policy with gradient checkpointing, bf16 autocast and the
project's optimiser (`search_e1.rounds.base.make_optimizer`: AdamW), ``--phases`` phases of ``--steps``
optimiser steps each on a ``--batch`` x ``--length`` batch whose last ``--scored`` positions carry
loss mask 1 (chunked log-probs, `Policy.token_logprobs`), a new optimiser per phase as the
Evolver does. Each setting runs in its own child process (the allocator settings are
process-wide; each child has its own peak), one after another:

* ``default``: glibc as it comes;
* ``trim``: `search_e1.memory.release_memory` after each phase (what the Evolver always does);
* ``mmap<N>`` : ``evolver.malloc_mmap_threshold_mb: N`` plus the release after each phase;
* a ``:foreach`` suffix (``trim:foreach``): the multi-tensor AdamW instead of the fused one
  (``optim.fused: false``), whose step allocates temporaries the size of the weights;
* a ``:bf16`` suffix (``mmap4:bf16``): AdamW's moments in bfloat16 (``optim.state_dtype: bfloat16``).

Reported per setting: peak RSS, RSS after the last release, seconds per optimiser step, and the
live tensors (weights + gradients + AdamW moments) for reference.

Run::

    python bin/bench_memory.py                      # ~10 min on 2 cores
    python bin/bench_memory.py --steps 1 --phases 2 --length 200 --settings default trim:foreach   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from search_e1.memory import peak_rss_gb, release_memory, rss_gb, set_mmap_threshold

    setting, _, optimizer = args.child.partition(":")
    if setting.startswith("mmap"):
        assert set_mmap_threshold(int(setting[4:])), "mallopt failed (not glibc?)"
    from search_e1.policy import Policy
    from search_e1.rounds.base import OptimConfig, make_optimizer

    policy = Policy.from_pretrained("embedded")
    policy.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    policy.train()
    params = [p for p in policy.parameters() if p.requires_grad]
    moments = 1 if optimizer == "bf16" else 2  # two moments, in weight-sized float32 units
    live = sum(p.numel() * p.element_size() for p in params) * (2 + moments) / 1e9  # weights, grads, moments
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, policy.model.config.vocab_size, (args.batch, args.length), generator=g)
    attn = torch.ones_like(ids)
    mask = torch.zeros_like(ids)
    mask[:, -args.scored:] = 1
    step_times = []
    for _ in range(args.phases):
        optim = OptimConfig(lr=1e-6, fused=optimizer != "foreach",
                            state_dtype="bfloat16" if optimizer == "bf16" else "float32")
        opt = make_optimizer(policy, optim)["optimizer"]
        for _ in range(args.steps):
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                lp, _ = policy.token_logprobs(ids, attn, mask, start=args.length - args.scored)
            (-(lp.sum() / mask.sum())).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            step_times.append(time.perf_counter() - t0)
            del lp
        del opt
        if setting != "default":
            release_memory()
    return {"setting": args.child, "peak_rss_gb": round(peak_rss_gb(), 3), "final_rss_gb": round(rss_gb(), 3),
            "s_per_step": round(sum(step_times) / len(step_times), 2), "live_tensors_gb": round(live, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", nargs="+", default=["default", "trim:foreach", "trim", "mmap16", "mmap4"])
    ap.add_argument("--phases", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=600)
    ap.add_argument("--scored", type=int, default=100)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--out", default="runs/bench_memory.json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    rows = []
    for setting in args.settings:
        cmd = [sys.executable, __file__, "--child", setting] + [
            f"--{k}={getattr(args, k)}" for k in ("phases", "steps", "batch", "length", "scored", "threads")]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if out.returncode:
            sys.exit(f"setting {setting} failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{rows[-1]['setting']:>12}  peak {rows[-1]['peak_rss_gb']:.2f} GB  after release "
              f"{rows[-1]['final_rss_gb']:.2f} GB  {rows[-1]['s_per_step']:.1f} s/step", flush=True)
    print("\n| setting | peak RSS GB | RSS after release GB | s/step | live tensors GB |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['setting']} | {r['peak_rss_gb']:.2f} | {r['final_rss_gb']:.2f} | {r['s_per_step']:.1f} "
              f"| {r['live_tensors_gb']:.2f} |")
    print("live tensors: weights + gradients + AdamW moments")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": platform.platform(), "cores": os.cpu_count(),
                                          "args": {k: v for k, v in vars(args).items() if k != "child"},
                                          "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
