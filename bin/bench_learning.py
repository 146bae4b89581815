#!/usr/bin/env python
"""Learning benchmark (issue 8): does Search-E1 (GRPO + OFSD) beat GRPO alone from one warm-up?

1. One shared warm-up checkpoint: ``search-e1 fit`` on the quickstart config with no GRPO/OFSD
   steps (``checkpoints/warmup`` of ``OUT/warmup``).
2. For each arm and seed, ``search-e1 fit`` from that checkpoint (no second warm-up), same rounds:

   * ``grpo``: each round ``grpo_steps + k`` GRPO steps, no OFSD;
   * ``search-e1``: each round ``grpo_steps`` GRPO steps, then an OFSD round of ``k`` optimiser
     steps on ``--ofsd-questions`` questions x G fresh trajectories (G = ``grpo.group_size``);
   * ``gspo``, ``dapo``, ``dr-grpo``, ``grpo-llds``: the ``grpo`` arm with that policy loss /
     recipe (`ARMS` lists the flags);
   * ``search-e1-onpolicy``: the ``search-e1`` arm whose OFSD data is refreshed from the current
     policy every ``k/2`` steps, on half the questions each time (the same trajectories in all).

   With ``k = ofsd_questions / data.batch_size`` the arms sample the same number of trajectories
   (GRPO: batch x G per step; OFSD: num_questions x G per round; DAPO's refills excepted: it
   samples up to one extra batch per step, by design) and take the same number of optimiser steps
   per round (one per GRPO step, ``k`` per OFSD round). The arms differ only in what those steps
   learn from. ``--arms`` selects arms by name.
3. Each run's val table gives EM and searches per question after every round against the
   trajectories sampled so far; the last checkpoint is evaluated greedily on val and test, split
   by hop count (single-hop, two-hop, all), with searches per correct answer and generated tokens
   per answer. Mean and standard deviation over seeds per arm go to ``OUT/results.json``, a rich
   table, and ``OUT/learning.png`` (EM and searches against trajectories sampled).

Sweep mode (``sweep``): the quickstart recipe's update-size knobs over seeds. Per seed one warm-up
(``search-e1 fit`` with no rounds; its greedy evaluation on both worlds is the baseline), then per
setting x seed a run from that warm-up checkpoint with the setting's flags. Settings are compared on
the training world's val split only (mean and 95% t-interval over seeds of the last round's EM,
the worst seed, the mean paired gain over the warm-up); the held-out world's figures are reported
beside them and never used to choose. Rerunning the same command reuses finished runs.

Every run is a child process of the real CLI (``search-e1 fit``), so the benchmark measures what
users run. Run::

    python bin/bench_learning.py                      # grpo and search-e1 x 3 seeds, ~1.5 h on 2 cores
    python bin/bench_learning.py --rounds 1 --arms grpo,search-e1,gspo,dapo,search-e1-onpolicy
    python bin/bench_learning.py --seeds 0 --rounds 1 # smoke run
    python bin/bench_learning.py sweep --seeds 0,1,2 --settings quickstart,lr1e-5,warmup4,batch8
"""

from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench_learning")
GRPO_ONLY, WITH_OFSD = "grpo", "search-e1"
ARMS: dict[str, tuple[str, list[str]]] = {
    "grpo": (GRPO_ONLY, []),
    "search-e1": (WITH_OFSD, []),
    "gspo": (GRPO_ONLY, ["--grpo.policy_loss", "gspo", "--grpo.clip_low", "3.0e-4", "--grpo.clip_high", "4.0e-4",
                         "--grpo.loss_agg", "seq-mean-token-mean", "--grpo.recompute_old_logprobs", "true"]),
    "dapo": (GRPO_ONLY, ["--grpo.clip_high", "0.28", "--grpo.dynamic_sampling", "true",
                         "--grpo.dynamic_sampling_max_rollouts", "1", "--grpo.overlong_filter", "true"]),
    "dr-grpo": (GRPO_ONLY, ["--grpo.advantage", "grpo_no_std", "--grpo.loss_agg", "seq-mean-token-sum-norm"]),
    "grpo-llds": (GRPO_ONLY, ["--grpo.llds_coef", "0.2", "--grpo.mini_batch_size", "8"]),
    "search-e1-onpolicy": (WITH_OFSD, []),  # refresh flags depend on k: `arm_overrides`
}
"""Arm name -> (schedule: GRPO only, or GRPO + OFSD at an equal budget; extra ``search-e1 fit`` flags)."""
DEFAULT_ARMS = ("grpo", "search-e1")


def fit(config: str, run_dir: Path, overrides: list[str]) -> float:
    """``search-e1 fit`` in a child process; returns its wall time (a failed run raises)."""
    cmd = [sys.executable, "-m", "search_e1.cli", "fit", "--config", config, "--evolver.run_dir", str(run_dir),
           *overrides]
    log.info("%s", " ".join(cmd[2:]))
    t0 = time.perf_counter()
    with (run_dir.parent / f"{run_dir.name}.log").open("w") as out:
        subprocess.run(cmd, check=True, stdout=out, stderr=subprocess.STDOUT)
    return time.perf_counter() - t0


def arm_overrides(arm: str, args: argparse.Namespace, k: int) -> list[str]:
    schedule, flags = ARMS[arm]
    if schedule == GRPO_ONLY:
        return ["--evolver.grpo_steps", str(args.grpo_steps + k), "--evolver.ofsd_steps", "0", *flags]
    if arm == "search-e1-onpolicy":  # two data sets of half the questions: the same trajectories
        if k % 2 or args.ofsd_questions % 2:
            raise SystemExit("search-e1-onpolicy needs an even k and an even --ofsd-questions")
        flags = ["--ofsd.refresh_every", str(k // 2), "--ofsd.num_questions", str(args.ofsd_questions // 2)]
    return ["--evolver.grpo_steps", str(args.grpo_steps), "--evolver.ofsd_steps", str(k), *flags]


def val_curve(run_dir: Path, arm: str, args: argparse.Namespace, k: int, batch: int, group: int,
              ofsd_questions: int) -> list[dict[str, float]]:
    """EM and searches per question after each round against the trajectories sampled so far."""
    per_round = (args.grpo_steps + k) * batch * group if ARMS[arm][0] == GRPO_ONLY else \
        args.grpo_steps * batch * group + ofsd_questions * group
    rows = list(csv.DictReader((run_dir / "val_table.csv").open()))
    curve = []
    for row in rows:  # round 0 = the shared warm-up checkpoint, before any trajectory
        r = row["round"]
        n = 0 if r == "warmup" else int(r) * per_round
        curve.append({"trajectories": n, "em": float(row["em"]), "searches": float(row["searches"])})
    return curve


def evaluate_split(policy: Any, init: Any, split: str) -> dict[str, dict[str, float]]:
    """Greedy evaluation of one split by hop count: EM, searches per correct answer, tokens per answer."""

    from search_e1.cli import search_env
    from search_e1.rewards import exact_match

    examples = init.data.examples(split)
    env = search_env(init).with_retriever(init.data.retriever)
    traj = env.rollout(policy, [e.question for e in examples], [list(e.golden_answers) for e in examples], greedy=True)
    groups: dict[str, list[int]] = {"single-hop": [], "two-hop": [], "all": []}
    for i, e in enumerate(examples):
        groups["single-hop" if e.metadata.get("hops", 1) == 1 else "two-hop"].append(i)
        groups["all"].append(i)
    out = {}
    for name, idx in groups.items():
        em = [exact_match(traj.answers[i], examples[i].golden_answers) for i in idx]
        correct = [i for i, v in zip(idx, em, strict=True) if v]
        out[name] = {
            "n": len(idx), "em": sum(em) / max(len(idx), 1),
            "searches_per_correct": sum(int(traj.num_searches[i]) for i in correct) / max(len(correct), 1),
            "tokens_per_answer": sum(int(traj.response_lengths[i]) for i in idx) / max(len(idx), 1),
        }
    return out


def evaluate_runs(config: str, runs: list[dict[str, Any]]) -> None:
    """Evaluate every run's checkpoint on val and test, in this process (one policy object,
    weights loaded per checkpoint, so one vLLM engine that re-syncs)."""
    from search_e1 import Policy
    from search_e1.cli import fit_parser

    parser = fit_parser()
    init = parser.instantiate(parser.parse_args(["--config", config]))
    init.data.setup("fit")
    init.data.setup("test")
    policy = Policy.from_config(init.policy).eval()
    for run in runs:
        policy.load_weights(Path(run["ckpt"]))
        run["eval"] = {split: evaluate_split(policy, init, split) for split in ("val", "test")}
        log.info("%s seed %s: val EM %.3f test EM %.3f", run["arm"], run["seed"], run["eval"]["val"]["all"]["em"],
                 run["eval"]["test"]["all"]["em"])


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and std over seeds of every figure, per arm."""
    out: dict[str, Any] = {}
    for arm in sorted({r["arm"] for r in runs}):
        rs = [r for r in runs if r["arm"] == arm]
        figures: dict[str, list[float]] = {}
        for r in rs:
            for split, by_hop in r["eval"].items():
                for hop, vals in by_hop.items():
                    for key, v in vals.items():
                        if key != "n":
                            figures.setdefault(f"{split}/{hop}/{key}", []).append(v)
            if "wall_s" in r:
                figures.setdefault("wall_s", []).append(r["wall_s"])
        out[arm] = {k: {"mean": statistics.fmean(v), "std": statistics.pstdev(v) if len(v) > 1 else 0.0,
                        "n": len(v)} for k, v in figures.items()}
    return out


def table(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="learning at an equal budget (mean ± std over seeds)")
    t.add_column("figure")
    arms = list(summary)
    for arm in arms:
        t.add_column(arm, justify="right")
    keys = [f"{s}/{h}/em" for s in ("val", "test") for h in ("single-hop", "two-hop", "all")]
    keys += ["val/all/searches_per_correct", "test/all/searches_per_correct", "val/all/tokens_per_answer",
             "test/all/tokens_per_answer", "wall_s"]
    for key in keys:
        cells = []
        for arm in arms:
            f = summary[arm].get(key)
            cells.append("-" if f is None else f"{f['mean']:.3f} ± {f['std']:.3f}" if key != "wall_s"
                         else f"{f['mean']:.0f} ± {f['std']:.0f}")
        t.add_row(key, *cells)
    Console().print(t)


def plot(runs: list[dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plot (pip install matplotlib)")
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    colors = {"grpo": "tab:blue", "search-e1": "tab:red", "gspo": "tab:green", "dapo": "tab:orange",
              "dr-grpo": "tab:purple", "grpo-llds": "tab:brown", "search-e1-onpolicy": "tab:pink"}
    for r in runs:
        if "curve" not in r:
            continue
        xs = [p["trajectories"] for p in r["curve"]]
        for ax, key in zip(axes, ("em", "searches"), strict=True):
            ax.plot(xs, [p[key] for p in r["curve"]], "o-", color=colors.get(r["arm"], "gray"), alpha=0.6,
                    label=f"{r['arm']} seed {r['seed']}")
    axes[0].set_ylabel("val EM (greedy)")
    axes[1].set_ylabel("searches per question")
    for ax in axes:
        ax.set_xlabel("trajectories sampled after the warm-up")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


# ---------------------------------------------------------------- sweep mode
SWEEP: dict[str, list[str]] = {
    "quickstart": [],
    "fresh-adam": ["--evolver.persist_optimizers", "false"],
    "lr1e-5": ["--grpo.optim.lr", "1.0e-5"],
    "warmup4": ["--grpo.optim.warmup_steps", "4"],
    "batch8": ["--data.batch_size", "8"],
    "batch8-lr1e-5": ["--data.batch_size", "8", "--grpo.optim.lr", "1.0e-5"],
    "steps8": ["--evolver.grpo_steps", "8"],
    "kl0.01": ["--grpo.kl_coef", "0.01"],
}
"""Setting name -> ``search-e1 fit`` flags on top of the config (the sweep's grid; ``--set NAME=FLAGS`` adds one)."""


def finished(run_dir: Path) -> bool:
    """True when the run in ``run_dir`` ran all its rounds (its state is past the last one)."""
    state_file, config = run_dir / "evolver_state.json", run_dir / "config.yaml"
    if not state_file.is_file() or not config.is_file():
        return False
    import yaml

    rounds = yaml.safe_load(config.read_text())["evolver"]["rounds"]
    state = json.loads(state_file.read_text())
    return state["round"] > rounds and "pending_eval" not in state


def warmup_run(config: str, out: Path, seed: int) -> Path:
    """The warm-up of ``seed`` alone (``--evolver.rounds 0``), evaluated on every world; returns its run dir."""
    run_dir = out / f"warmup_seed{seed}"
    if not finished(run_dir):
        fit(config, run_dir, ["--evolver.seed", str(seed), "--evolver.rounds", "0", "--evolver.eval_initial", "false"])
    return run_dir


def records(run_dir: Path, label: str, world: str) -> dict[str, float]:
    """Question id -> EM of one evaluation of a run (its ``eval/<label>/<world>.jsonl``)."""
    path = run_dir / "eval" / label / f"{world}.jsonl"
    return {r["id"]: float(r["em"]) for r in map(json.loads, path.read_text().splitlines())}


def last_rows(run_dir: Path) -> dict[str, dict[str, str]]:
    """The last evaluation's row of every world in a run's ``val_table.csv``."""
    rows = list(csv.DictReader((run_dir / "val_table.csv").open()))
    last = rows[-1]["round"]
    return {r["world"]: r for r in rows if r["round"] == last}


def sweep_run(warm: Path, run_dir: Path, worlds: list[str]) -> dict[str, Any]:
    """A finished run's last EM per world and its paired gain over the warm-up on the same questions."""
    from search_e1.stats import paired_difference_interval

    out: dict[str, Any] = {}
    rows = last_rows(run_dir)
    for world in worlds:
        row = rows[world]
        now, before = records(run_dir, row["round"], world), records(warm, "warmup", world)
        pairs = [(now[q], before[q]) for q in now if q in before]
        gain = paired_difference_interval([a for a, _ in pairs], [b for _, b in pairs])
        out[world] = {"n": int(row["n"]), "em": float(row["em"]), "em_lo": float(row["em_lo"]),
                      "em_hi": float(row["em_hi"]), "warmup_em": sum(before.values()) / len(before),
                      "gain": gain[0], "gain_lo": gain[1], "gain_hi": gain[2], "searches": float(row["searches"]),
                      "tokens": float(row["tokens"]), "em_1hop": float(row["em_1hop"] or "nan"),
                      "em_2hop": float(row["em_2hop"] or "nan")}
    return out


def summarise_sweep(runs: list[dict[str, Any]], worlds: list[str]) -> dict[str, Any]:
    """Per setting: mean and 95% t-interval over seeds of each world's last EM and gain, the worst
    seed, the seeds that ended below their warm-up (collapsed), searches, wall time."""
    from search_e1.stats import mean_interval

    out: dict[str, Any] = {}
    for name in dict.fromkeys(r["setting"] for r in runs):
        rs = [r for r in runs if r["setting"] == name]
        summary: dict[str, Any] = {"seeds": [r["seed"] for r in rs], "wall_s": statistics.fmean(r["wall_s"] for r in rs)}
        for world in worlds:
            for key in ("em", "gain", "searches", "em_1hop", "em_2hop"):
                mean, lo, hi = mean_interval([r["result"][world][key] for r in rs])
                summary[f"{world}/{key}"] = {"mean": mean, "lo": lo, "hi": hi}
            summary[f"{world}/worst_em"] = min(r["result"][world]["em"] for r in rs)
            summary[f"{world}/collapsed"] = sum(r["result"][world]["gain"] < 0 for r in rs)
        out[name] = summary
    return out


def sweep_table(summary: dict[str, Any], worlds: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="sweep: last round's greedy EM, mean [95% CI] over seeds (chosen on train only)")
    for col in ("setting", "seeds", *[f"{w} {k}" for w in worlds for k in ("EM", "gain", "worst")], "searches",
                "collapsed", "wall s"):
        t.add_column(col, justify="left" if col == "setting" else "right")
    fmt = lambda f: f"{f['mean']:.3f} [{f['lo']:.3f}, {f['hi']:.3f}]"  # noqa: E731
    for name, s in sorted(summary.items(), key=lambda item: -item[1][f"{worlds[0]}/em"]["mean"]):
        cells = [c for w in worlds for c in (fmt(s[f"{w}/em"]), fmt(s[f"{w}/gain"]), f"{s[f'{w}/worst_em']:.3f}")]
        t.add_row(name, str(len(s["seeds"])), *cells, f"{s[f'{worlds[0]}/searches']['mean']:.2f}",
                  str(s[f"{worlds[0]}/collapsed"]), f"{s['wall_s']:.0f}")
    Console().print(t)


def main_sweep(argv: list[str]) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description="Sweep the quickstart recipe's update-size knobs over seeds.")
    ap.add_argument("--config", default=str(ROOT / "conf" / "quickstart.yaml"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--settings", default=",".join(SWEEP), help=f"comma-separated names: {', '.join(SWEEP)}")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=FLAGS",
                    help="an extra setting: NAME=\"--grpo.optim.lr 1e-5 --data.batch_size 8\"")
    ap.add_argument("--out", default=str(ROOT / "bench" / "sweep"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    settings = {name: SWEEP[name] for name in args.settings.split(",") if name}
    unknown = [n for n in settings if n not in SWEEP]
    if unknown:
        raise SystemExit(f"unknown setting(s) {unknown}; choose from {', '.join(SWEEP)} or add one with --set")
    for item in args.set:
        name, _, flags = item.partition("=")
        settings[name] = flags.split()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(x) for x in args.seeds.split(",")]
    runs: list[dict[str, Any]] = []
    worlds: list[str] = []
    for seed in seeds:
        warm = warmup_run(args.config, out, seed)
        worlds = list(dict.fromkeys(r["world"] for r in csv.DictReader((warm / "val_table.csv").open())))
        for name, flags in settings.items():
            run_dir = out / f"{name}_seed{seed}"
            if not finished(run_dir):
                wall = fit(args.config, run_dir, [
                    "--policy.path", str(warm / "checkpoints" / "warmup"), "--warmup.demonstrations", "null",
                    "--evolver.seed", str(seed), "--evolver.eval_initial", "false", *flags])
                (run_dir / "wall_s.txt").write_text(f"{wall:.1f}")
            runs.append({"setting": name, "flags": flags, "seed": seed, "wall_s": float((run_dir / "wall_s.txt").read_text()),
                         "result": sweep_run(warm, run_dir, worlds)})
    summary = summarise_sweep(runs, worlds)
    result = {"config": args.config, "settings": settings, "seeds": seeds, "runs": runs, "summary": summary}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    sweep_table(summary, worlds)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sweep"]:
        return main_sweep(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(ROOT / "conf" / "quickstart.yaml"))
    ap.add_argument("--arms", default=",".join(DEFAULT_ARMS), help=f"comma-separated arm names: {', '.join(ARMS)}")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--grpo-steps", type=int, default=4, help="GRPO steps per round of the search-e1 arm")
    ap.add_argument("--ofsd-questions", type=int, default=16,
                    help="questions per OFSD round, sampled with the GRPO group size (equal budgets)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "learning"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from search_e1.cli import fit_parser

    parser = fit_parser()
    cfg = parser.parse_args(["--config", args.config])
    batch, group, ofsd_q = cfg.data.batch_size, cfg.grpo.group_size, args.ofsd_questions
    if ofsd_q % batch:
        raise SystemExit("equal budgets need --ofsd-questions a multiple of data.batch_size")
    k = ofsd_q // batch
    unknown = [a for a in args.arms.split(",") if a not in ARMS]
    if unknown:
        raise SystemExit(f"unknown arm(s) {unknown}; choose from {', '.join(ARMS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    warm_dir = out / "warmup"
    if not (warm_dir / "checkpoints" / "warmup" / "config.json").is_file():
        fit(args.config, warm_dir, ["--evolver.rounds", "1", "--evolver.grpo_steps", "0", "--evolver.ofsd_steps", "0",
                                    "--evolver.eval_initial", "false"])
    warm_ckpt = warm_dir / "checkpoints" / "warmup"
    runs: list[dict[str, Any]] = [{"arm": "warm-up", "seed": 0, "ckpt": str(warm_ckpt)}]
    for seed in [int(s) for s in args.seeds.split(",")]:
        for arm in args.arms.split(","):
            run_dir = out / f"{arm}_seed{seed}"
            common = ["--policy.path", str(warm_ckpt), "--warmup.demonstrations", "null", "--evolver.seed", str(seed),
                      "--data.seed", str(seed), "--evolver.rounds", str(args.rounds), "--evolver.eval_initial", "true",
                      "--ofsd.group_size", str(group), "--ofsd.num_questions", str(ofsd_q)]
            wall = None
            if not (run_dir / "evolver_state.json").is_file() or \
                    json.loads((run_dir / "evolver_state.json").read_text()).get("round", 0) <= args.rounds:
                wall = fit(args.config, run_dir, common + arm_overrides(arm, args, k))
                (run_dir / "wall_s.txt").write_text(f"{wall:.1f}")
            wall = float((run_dir / "wall_s.txt").read_text())
            state = json.loads((run_dir / "evolver_state.json").read_text())
            runs.append({"arm": arm, "seed": seed, "wall_s": wall, "ckpt": str(run_dir / "checkpoints" / state["checkpoint"]),
                         "curve": val_curve(run_dir, arm, args, k, batch, group, ofsd_q)})
    evaluate_runs(args.config, runs)
    summary = summarise(runs)
    result = {"budget": {"rounds": args.rounds, "grpo_steps": args.grpo_steps, "k": k, "batch": batch, "group": group,
                         "trajectories_per_arm": args.rounds * (args.grpo_steps + k) * batch * group,
                         "optimizer_steps_per_arm": args.rounds * (args.grpo_steps + k)},
              "runs": runs, "summary": summary}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    table(summary)
    plot(runs, out / "learning.png")
    return result


if __name__ == "__main__":
    main()
