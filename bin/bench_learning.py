#!/usr/bin/env python
"""Learning benchmark: does the privileged sibling matter? Ablation arms at an equal budget, and
the sweep that chose the quickstart's update sizes.

Ablation (the default command). Per seed one warm-up (``search-e1 fit --evolver.rounds 0``: the
quickstart's warm-up alone, evaluated greedily on every world: the baseline), then per arm x seed
``search-e1 fit`` from that warm-up checkpoint for ``--rounds`` rounds. A seed gives every arm the
same warm-up, question order and engine seed (``evolver.seed``). The arms spend the same budget:
per round ``S + k`` optimiser steps and ``(S + k) x B x G`` sampled trajectories, where ``S`` is the
config's GRPO steps per round, ``B`` its questions per step, ``G`` its group size and ``k =
ofsd-questions / B``:

* ``grpo``: ``S + k`` GRPO steps of one rollout each (every arm but ``dapo`` turns the config's
  dynamic sampling off);
* ``search-e1``: ``S`` GRPO steps, then an OFSD round on ``k x B`` questions x ``G`` fresh samples
  taking exactly ``k`` optimiser steps (the paper's method: forward KL, the more efficient sibling);
* ``placebo``: ``search-e1`` whose teacher is shown a correct trajectory of ANOTHER question
  (``ofsd.privileged: placebo``);
* ``rft``: the same OFSD data sets trained with NLL on each chosen sibling (``ofsd.objective: rft``);
* ``dapo``: the strongest GRPO-family recipe of the earlier one-round table, at this budget: ``B/2``
  questions per rollout and at most one refill of ``B/2`` (clip-higher 0.28, overlong filtering),
  so it never samples more than the others.

Every run's trajectories and optimiser steps are counted from what it logged (`logged_budget`), not
from its flags: an OFSD round that finds no example takes no step, and DAPO's refills are counted.

Each run's last evaluation (the evolver's, ``eval_max_questions``: all 300 val questions of the
training world and all 300 of the held-out world) gives EM by hop count, searches per correct
answer and tokens per answer; per arm the mean and Student t 95% interval over seeds, and against
``grpo`` the mean paired difference (same seed) with its interval. Learning curves (EM and searches
against trajectories sampled) go to ``learning.png``; each OFSD round's ``summary.json`` gives the
examples distilled, how rows got their sibling and the teacher-student KL before/after, over query
tokens and the rest. ``REPORT/results.json``, ``REPORT/table.md`` and the plot are written; run
directories stay under ``--out`` (their checkpoints are deleted once evaluated, ``--keep-checkpoints``
keeps them). Rerunning the same command after an interruption reuses every finished run.

Sweep (``sweep``): per setting (a few ``search-e1 fit`` flags) x seed a run from the seed's warm-up;
settings are compared on the training world's val split only (mean, 95% interval, worst seed, mean
paired gain over the warm-up); the held-out world is reported beside and never used to choose.

Every run is a child process of the real CLI (``search-e1 fit``), so the benchmark measures what
users run. Run::

    python bin/bench_learning.py                                   # 5 arms x 5 seeds, 2 rounds
    python bin/bench_learning.py --arms grpo,search-e1 --seeds 0   # smoke run
    python bin/bench_learning.py sweep --seeds 10,11,12 --settings static,dynamic,batch8
"""

from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench_learning")


# ---------------------------------------------------------------- runs
def fit(config: str, run_dir: Path, overrides: list[str]) -> float:
    """``search-e1 fit`` in a child process (its output in ``<run_dir>.log``); returns its wall time."""
    cmd = [sys.executable, "-m", "search_e1.cli", "fit", "--config", config, "--evolver.run_dir", str(run_dir),
           *overrides]
    log.info("%s", " ".join(cmd[2:]))
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with (run_dir.parent / f"{run_dir.name}.log").open("a") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[2:])} failed (exit {proc.returncode}); see {run_dir}.log")
    return time.perf_counter() - t0


def finished(run_dir: Path) -> bool:
    """True when the run in ``run_dir`` ran all its rounds and wrote its last evaluation."""
    state_file, config = run_dir / "evolver_state.json", run_dir / "config.yaml"
    if not state_file.is_file() or not config.is_file():
        return False
    import yaml

    rounds = yaml.safe_load(config.read_text())["evolver"]["rounds"]
    state = json.loads(state_file.read_text())
    return state["round"] > rounds and "pending_eval" not in state


def run_once(config: str, run_dir: Path, flags: list[str], keep_checkpoints: bool = True) -> float:
    """Fit unless finished; returns the wall time of the fit that finished it (``wall_s.txt``)."""
    if not finished(run_dir):
        wall = fit(config, run_dir, flags)
        (run_dir / "wall_s.txt").write_text(f"{wall:.1f}")
        if not keep_checkpoints:  # the evaluation is in val_table.csv and eval/: the weights are not needed
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return float((run_dir / "wall_s.txt").read_text())


def shown_path(path: str) -> str:
    """``path`` relative to the repository when inside it (what results.json records), else as given."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else path


def warmup_run(config: str, out: Path, seed: int) -> Path:
    """The warm-up of ``seed`` alone (``--evolver.rounds 0``), evaluated on every world; returns its run dir."""
    run_dir = out / f"warmup_seed{seed}"
    run_once(config, run_dir, ["--evolver.seed", str(seed), "--evolver.rounds", "0", "--evolver.eval_initial", "false"])
    return run_dir


def from_warmup(warm: Path, seed: int) -> list[str]:
    """Flags of a run that starts from a seed's warm-up checkpoint (no second warm-up)."""
    return ["--policy.path", str(warm / "checkpoints" / "warmup"), "--warmup.demonstrations", "null",
            "--evolver.seed", str(seed), "--evolver.eval_initial", "false"]


# ---------------------------------------------------------------- a run's figures
def val_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "val_table.csv").open() as f:
        return list(csv.DictReader(f))


def worlds_of(run_dir: Path) -> list[str]:
    return list(dict.fromkeys(r["world"] for r in val_rows(run_dir)))


def records(run_dir: Path, label: str, world: str) -> dict[str, dict[str, Any]]:
    """Question id -> that question's record of one evaluation (``eval/<label>/<world>.jsonl``)."""
    path = run_dir / "eval" / label / f"{world}.jsonl"
    return {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}


def figures(now: dict[str, dict[str, Any]], before: dict[str, dict[str, Any]]) -> dict[str, float]:
    """EM (all and by hop count), searches per correct answer, tokens per answer of one evaluation's
    records, and the paired gain over ``before`` on the questions both evaluated."""
    from search_e1.stats import paired_difference_interval

    rs = list(now.values())
    correct = [r for r in rs if r["em"]]
    out = {"n": len(rs), "em": sum(r["em"] for r in rs) / len(rs),
           "searches_per_correct": sum(r["searches"] for r in correct) / max(len(correct), 1),
           "tokens_per_answer": sum(r["tokens"] for r in rs) / len(rs),
           "searches": sum(r["searches"] for r in rs) / len(rs)}
    for hops in sorted({r["hops"] for r in rs if r["hops"] is not None}):
        part = [r["em"] for r in rs if r["hops"] == hops]
        out[f"em_{hops}hop"] = sum(part) / len(part)
    pairs = [(now[q]["em"], before[q]["em"]) for q in now if q in before]
    out["gain"], out["gain_lo"], out["gain_hi"] = paired_difference_interval([a for a, _ in pairs],
                                                                             [b for _, b in pairs])
    return out


def last_evaluation(run_dir: Path, warm: Path) -> dict[str, dict[str, float]]:
    """Per world: `figures` of the run's last evaluation against its warm-up's."""
    rows = val_rows(run_dir)
    last = rows[-1]["round"]
    return {w: figures(records(run_dir, last, w), records(warm, "warmup", w)) for w in worlds_of(run_dir)
            if (run_dir / "eval" / last / f"{w}.jsonl").is_file()}


def mean_ci(values: list[float]) -> dict[str, float]:
    from search_e1.stats import mean_interval

    mean, lo, hi = mean_interval(values)
    return {"mean": mean, "lo": lo, "hi": hi, "n": len(values)}


def fmt(f: dict[str, float], digits: int = 3) -> str:
    return f"{f['mean']:.{digits}f} [{f['lo']:.{digits}f}, {f['hi']:.{digits}f}]"


# ---------------------------------------------------------------- the ablation arms
GRPO_ONLY, WITH_OFSD = "grpo", "ofsd"
PLAIN = ["--grpo.dynamic_sampling", "false"]  # one rollout per step: a refill would spend more than the budget
ARMS: dict[str, tuple[str, list[str]]] = {
    "grpo": (GRPO_ONLY, PLAIN),
    "search-e1": (WITH_OFSD, PLAIN),
    "placebo": (WITH_OFSD, [*PLAIN, "--ofsd.privileged", "placebo"]),
    "rft": (WITH_OFSD, [*PLAIN, "--ofsd.objective", "rft"]),
    "dapo": (GRPO_ONLY, ["--grpo.clip_high", "0.28", "--grpo.dynamic_sampling", "true",
                         "--grpo.dynamic_sampling_max_rollouts", "1", "--grpo.overlong_filter", "true"]),
}
"""Arm name -> (schedule: GRPO steps only, or GRPO steps + an OFSD round; extra ``search-e1 fit`` flags)."""
DEFAULT_ARMS = tuple(ARMS)


def arm_flags(arm: str, steps: int, k: int, batch: int, group: int) -> list[str]:
    """The flags of ``arm`` at the equal budget (`ARMS`)."""
    schedule, flags = ARMS[arm]
    if schedule == GRPO_ONLY:
        extra = ["--data.batch_size", str(batch // 2)] if arm == "dapo" else []
        return ["--evolver.grpo_steps", str(steps + k), "--evolver.ofsd_steps", "0", *extra, *flags]
    return ["--evolver.grpo_steps", str(steps), "--evolver.ofsd_steps", str(k), "--ofsd.num_questions", str(k * batch),
            "--ofsd.group_size", str(group), "--ofsd.max_epochs", "1000", *flags]


def logged_scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    """Every scalar a run wrote to TensorBoard: tag -> {global step: value} (a step logged again by a
    resumed run counts once)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, dict[int, float]] = {}
    for path in sorted((run_dir / "tensorboard").rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
    return out


def logged_budget(run_dir: Path) -> dict[str, int]:
    """Trajectories sampled and optimiser steps taken by a run, counted from what it logged: per GRPO
    step ``grpo/sampled`` (refills included) and ``grpo/optimizer_steps``, per OFSD round the
    trajectories and steps of its ``summary.json``. Runs logged before those two tags existed: one
    optimiser step per logged GRPO step and ``(1 + grpo/dynamic_rollouts)`` rollouts of the run's own
    ``data.batch_size x grpo.group_size`` (its ``config.yaml``)."""
    import yaml

    scalars = logged_scalars(run_dir)
    if "grpo/sampled" in scalars:
        sampled, optimizer_steps = sum(scalars["grpo/sampled"].values()), sum(scalars["grpo/optimizer_steps"].values())
    else:
        steps = scalars.get("grpo/grad_norm", {})
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        per_rollout = cfg["data"]["batch_size"] * cfg["grpo"]["group_size"]
        refills = scalars.get("grpo/dynamic_rollouts", {})
        sampled = sum(per_rollout * (1 + refills.get(step, 0.0)) for step in steps)
        optimizer_steps = len(steps)
    for summary in ofsd_rounds(run_dir):
        sampled += summary["trajectories"]
        optimizer_steps += summary.get("steps", 0)  # an OFSD round with no example takes none
    return {"trajectories": int(round(sampled)), "optimizer_steps": int(round(optimizer_steps))}


def curve(run_dir: Path, warm: Path, per_round: int) -> list[dict[str, Any]]:
    """Val EM per world and searches per question after the warm-up and each round, against the
    trajectories sampled so far (the rounds in between are evaluated on fewer questions)."""
    points: dict[str, dict[str, Any]] = {}
    for rows in (val_rows(warm), val_rows(run_dir)):
        for r in rows:
            n = 0 if r["round"] == "warmup" else int(r["round"]) * per_round
            point = points.setdefault(r["round"], {"trajectories": n})
            point[f"{r['world']}/em"] = float(r["em"])
            point[f"{r['world']}/searches"] = float(r["searches"])
    return sorted(points.values(), key=lambda p: p["trajectories"])


def ofsd_rounds(run_dir: Path) -> list[dict[str, Any]]:
    """Every OFSD round's ``summary.json`` (examples, sibling cases, KL before/after by token kind)."""
    return [{"round": int(p.parent.name.removeprefix("round_")), **json.loads(p.read_text())}
            for p in sorted((run_dir / "ofsd").glob("round_*/summary.json"))]


PAIRED_AGAINST: dict[str, tuple[str, ...]] = {"search-e1": ("grpo",), "placebo": ("grpo", "search-e1"),
                                              "rft": ("grpo", "search-e1"), "dapo": ("grpo",)}
"""Arm -> the arms it is compared with seed by seed: every arm with GRPO, each control with Search-E1."""


def summarise_arms(runs: list[dict[str, Any]], worlds: list[str]) -> dict[str, Any]:
    """Per arm: mean and 95% interval over seeds of every figure, the paired differences (same seed)
    of `PAIRED_AGAINST`, and the OFSD rounds' means."""
    by_seed = {(r["arm"], r["seed"]): r for r in runs}
    out: dict[str, Any] = {}
    for arm in dict.fromkeys(r["arm"] for r in runs):
        rs = [r for r in runs if r["arm"] == arm]
        s: dict[str, Any] = {"seeds": [r["seed"] for r in rs], "wall_s": mean_ci([r["wall_s"] for r in rs]),
                             "trajectories": mean_ci([r["trajectories"] for r in rs]),
                             "optimizer_steps": mean_ci([r["optimizer_steps"] for r in rs])}
        for w in worlds:
            keys = sorted({k for r in rs for k in r["result"][w] if k not in ("n", "gain_lo", "gain_hi")})
            for key in keys:
                s[f"{w}/{key}"] = mean_ci([r["result"][w][key] for r in rs if key in r["result"][w]])
            for base in PAIRED_AGAINST.get(arm, ()):
                paired = [r["result"][w]["em"] - by_seed[(base, r["seed"])]["result"][w]["em"] for r in rs
                          if (base, r["seed"]) in by_seed]
                if paired:
                    s[f"{w}/em_minus_{base}"] = mean_ci(paired)
        rounds = [o for r in rs for o in r.get("ofsd", [])]
        for key in ("examples", "cheaper", "wrong_row", "steps", "kl_before", "kl_after", "kl_before_queries",
                    "kl_after_queries", "kl_before_rest", "kl_after_rest"):
            values = [o[key] for o in rounds if key in o]
            if values:
                s[f"ofsd/{key}"] = mean_ci(values)
        out[arm] = s
    return out


def arms_markdown(summary: dict[str, Any], worlds: list[str], budget: dict[str, Any]) -> str:
    """The results as markdown tables (what docs/ and the README quote)."""
    arms = list(summary)
    lines = [f"Budget per arm: {budget['rounds']} rounds x {budget['steps_per_round']} optimiser steps, "
             f"{budget['trajectories']} sampled trajectories planned (what each run logged is in the table). "
             f"Mean [95% t-interval] over seeds {summary[arms[0]]['seeds']}; greedy EM on n = {budget['n']}.", ""]
    header = "| figure | " + " | ".join(arms) + " |"
    lines += [header, "|" + "---|" * (len(arms) + 1)]

    def row(name: str, key: str, digits: int = 3) -> None:
        cells = [fmt(summary[a][key], digits) if key in summary[a] else "-" for a in arms]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    for w in worlds:
        row(f"{w}: EM", f"{w}/em")
        row(f"{w}: EM - grpo (paired)", f"{w}/em_minus_grpo")
        row(f"{w}: EM - search-e1 (paired)", f"{w}/em_minus_search-e1")
        row(f"{w}: gain over warm-up", f"{w}/gain")
        for hops in (1, 2):
            row(f"{w}: EM {hops}-hop", f"{w}/em_{hops}hop")
        row(f"{w}: searches per correct answer", f"{w}/searches_per_correct", 2)
        row(f"{w}: tokens per answer", f"{w}/tokens_per_answer", 1)
    row("trajectories sampled (logged)", "trajectories", 0)
    row("optimiser steps (logged)", "optimizer_steps", 0)
    row("wall time, s", "wall_s", 0)
    ofsd_arms = [a for a in arms if "ofsd/examples" in summary[a]]
    if ofsd_arms:
        lines += ["", "OFSD rounds (mean [95% interval] over rounds x seeds):", "",
                  "| figure | " + " | ".join(ofsd_arms) + " |", "|" + "---|" * (len(ofsd_arms) + 1)]
        for name, key in (("examples trained", "examples"), ("rows with a cheaper correct sibling", "cheaper"),
                          ("wrong rows with a correct sibling", "wrong_row"), ("optimiser steps", "steps"),
                          ("teacher-student KL before", "kl_before"), ("KL after", "kl_after"),
                          ("KL before, query tokens", "kl_before_queries"), ("KL before, other tokens",
                                                                             "kl_before_rest"),
                          ("KL after, query tokens", "kl_after_queries"), ("KL after, other tokens", "kl_after_rest")):
            cells = [fmt(summary[a][f"ofsd/{key}"], 2 if "kl" not in key else 3) if f"ofsd/{key}" in summary[a]
                     else "-" for a in ofsd_arms]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(runs: list[dict[str, Any]], worlds: list[str], path: Path) -> bool:
    """EM per world and searches per question against trajectories sampled: one line per arm (mean
    over seeds), the seeds faint."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plot (pip install matplotlib)")
        return False
    panels = [(f"{w}/em", f"val EM, {w} world (greedy)") for w in worlds] + [(f"{worlds[0]}/searches",
                                                                              "searches per question")]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    colors = dict(zip(DEFAULT_ARMS, ("tab:blue", "tab:red", "tab:gray", "tab:green", "tab:orange"), strict=True))
    for arm in dict.fromkeys(r["arm"] for r in runs):
        rs = [r for r in runs if r["arm"] == arm]
        for ax, (key, label) in zip(axes, panels, strict=True):
            for r in rs:
                ax.plot([p["trajectories"] for p in r["curve"]], [p.get(key) for p in r["curve"]], "-",
                        color=colors.get(arm, "black"), alpha=0.15)
            xs = [p["trajectories"] for p in rs[0]["curve"]]
            mean = [statistics.fmean(r["curve"][i].get(key, float("nan")) for r in rs) for i in range(len(xs))]
            ax.plot(xs, mean, "o-", color=colors.get(arm, "black"), label=arm)
            ax.set_ylabel(label)
    for ax in axes:
        ax.set_xlabel("trajectories sampled after the warm-up")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main_arms(argv: list[str]) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description="Ablation arms at an equal budget (see the module docstring).")
    ap.add_argument("--config", default=str(ROOT / "conf" / "quickstart.yaml"))
    ap.add_argument("--arms", default=",".join(DEFAULT_ARMS), help=f"comma-separated: {', '.join(ARMS)}")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--ofsd-questions", type=int, default=0,
                    help="questions per OFSD round (a multiple of data.batch_size); "
                         "0 = the config's ofsd.num_questions")
    ap.add_argument("--out", default=str(ROOT / "bench" / "learning"), help="run directories")
    ap.add_argument("--report", default=str(ROOT / "docs" / "learning"), help="results.json, table.md, learning.png")
    ap.add_argument("--keep-checkpoints", action="store_true", help="keep every run's checkpoints (about 1.6 GB each)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)  # our lines, not every library's (faiss announces its loader at INFO)
    from search_e1.cli import fit_parser

    cfg = fit_parser().parse_args(["--config", args.config])
    batch, group, steps = cfg.data.batch_size, cfg.grpo.group_size, cfg.evolver.grpo_steps
    ofsd_q = args.ofsd_questions or cfg.ofsd.num_questions
    if ofsd_q % batch or batch % 2:
        raise SystemExit(f"equal budgets need --ofsd-questions ({ofsd_q}) a multiple of data.batch_size ({batch}), "
                         "and an even batch (DAPO rolls out half of it)")
    k = ofsd_q // batch
    arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"unknown arm(s) {unknown}; choose from {', '.join(ARMS)}")
    out, report = Path(args.out), Path(args.report)
    started = time.perf_counter()
    runs: list[dict[str, Any]] = []
    worlds: list[str] = []
    warmup_wall: dict[int, float] = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        warm = warmup_run(args.config, out, seed)
        warmup_wall[seed] = float((warm / "wall_s.txt").read_text())
        worlds = worlds_of(warm)
        for arm in arms:
            run_dir = out / f"{arm}_seed{seed}"
            flags = [*from_warmup(warm, seed), "--evolver.rounds", str(args.rounds), *arm_flags(arm, steps, k, batch,
                                                                                                group)]
            wall = run_once(args.config, run_dir, flags, args.keep_checkpoints)
            budget = logged_budget(run_dir)
            runs.append({"arm": arm, "seed": seed, "wall_s": wall, **budget,
                         "result": last_evaluation(run_dir, warm), "ofsd": ofsd_rounds(run_dir),
                         "curve": curve(run_dir, warm, budget["trajectories"] // args.rounds)})
    summary = summarise_arms(runs, worlds)
    budget = {"rounds": args.rounds, "steps_per_round": steps + k, "grpo_steps": steps, "k": k, "batch": batch,
              "group": group, "trajectories": args.rounds * (steps + k) * batch * group,
              "n": {w: runs[0]["result"][w]["n"] for w in worlds}}
    report.mkdir(parents=True, exist_ok=True)
    command = "python bin/bench_learning.py " + " ".join(argv)
    result = {"command": command.strip(), "config": shown_path(args.config), "budget": budget,
              "arms": {a: ARMS[a][1] for a in arms},
              "runs": runs, "summary": summary, "wall_s": time.perf_counter() - started,
              "warmup_wall_s": warmup_wall,
              "fits_wall_s": sum(warmup_wall.values()) + sum(r["wall_s"] for r in runs)}
    (report / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    table = arms_markdown(summary, worlds, budget)
    (report / "table.md").write_text(f"`{command.strip()}`\n\n{table}\nWall time of the fits (warm-ups and runs, "
                                     f"each as first run): {result['fits_wall_s'] / 60:.0f} min.\n")
    plot(runs, worlds, report / "learning.png")
    print(table)  # noqa: T201 - the benchmark's table
    return result


# ---------------------------------------------------------------- the sweep
SWEEP: dict[str, list[str]] = {
    "quickstart": [],
    "static": ["--grpo.dynamic_sampling", "false"],
    "dynamic": ["--grpo.dynamic_sampling", "true", "--grpo.dynamic_sampling_max_rollouts", "1"],
    "fresh-adam": ["--evolver.persist_optimizers", "false"],
    "lr1e-5": ["--grpo.optim.lr", "1.0e-5"],
    "warmup4": ["--grpo.optim.warmup_steps", "4"],
    "batch8": ["--data.batch_size", "8", "--grpo.dynamic_sampling", "false"],
    "batch8-lr1e-5": ["--data.batch_size", "8", "--grpo.optim.lr", "1.0e-5", "--grpo.dynamic_sampling", "false"],
    "steps6": ["--evolver.grpo_steps", "6"],
    "steps8": ["--evolver.grpo_steps", "8"],
    "kl1e-3": ["--grpo.kl_coef", "0.001"],
    "kl0.01": ["--grpo.kl_coef", "0.01"],
}
"""Setting name -> ``search-e1 fit`` flags on top of the config (``--set NAME=FLAGS`` adds one)."""


def summarise_sweep(runs: list[dict[str, Any]], worlds: list[str]) -> dict[str, Any]:
    """Per setting: mean and 95% interval over seeds of each world's last EM and gain, the worst
    seed, the seeds that ended below their warm-up, searches, wall time."""
    out: dict[str, Any] = {}
    for name in dict.fromkeys(r["setting"] for r in runs):
        rs = [r for r in runs if r["setting"] == name]
        s: dict[str, Any] = {"seeds": [r["seed"] for r in rs], "wall_s": statistics.fmean(r["wall_s"] for r in rs)}
        for w in worlds:
            for key in ("em", "gain", "searches", "em_1hop", "em_2hop"):
                s[f"{w}/{key}"] = mean_ci([r["result"][w][key] for r in rs])
            s[f"{w}/worst_em"] = min(r["result"][w]["em"] for r in rs)
            s[f"{w}/collapsed"] = sum(r["result"][w]["gain"] < 0 for r in rs)
        out[name] = s
    return out


def sweep_markdown(summary: dict[str, Any], worlds: list[str]) -> str:
    cols = ["setting", "seeds", *[f"{w} {k}" for w in worlds for k in ("EM", "gain", "worst")], "searches",
            "below warm-up"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name, s in sorted(summary.items(), key=lambda item: -item[1][f"{worlds[0]}/em"]["mean"]):
        cells = [c for w in worlds for c in (fmt(s[f"{w}/em"]), fmt(s[f"{w}/gain"]), f"{s[f'{w}/worst_em']:.3f}")]
        lines.append(f"| {name} | {len(s['seeds'])} | " + " | ".join(cells) +
                     f" | {s[f'{worlds[0]}/searches']['mean']:.2f} | {s[f'{worlds[0]}/collapsed']} |")
    return "\n".join(lines) + "\n"


def main_sweep(argv: list[str]) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description="Sweep the quickstart recipe's update-size knobs over seeds.")
    ap.add_argument("--config", default=str(ROOT / "conf" / "quickstart.yaml"))
    ap.add_argument("--seeds", default="10,11,12")
    ap.add_argument("--settings", default=",".join(SWEEP), help=f"comma-separated names: {', '.join(SWEEP)}")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=FLAGS",
                    help="an extra setting: NAME=\"--grpo.optim.lr 1e-5 --data.batch_size 8\"")
    ap.add_argument("--out", default=str(ROOT / "bench" / "sweep"))
    ap.add_argument("--report", default=str(ROOT / "docs" / "sweep"), help="results.json and table.md")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)  # our lines, not every library's (faiss announces its loader at INFO)
    settings = {name: SWEEP[name] for name in args.settings.split(",") if name in SWEEP}
    unknown = [n for n in args.settings.split(",") if n and n not in SWEEP]
    if unknown:
        raise SystemExit(f"unknown setting(s) {unknown}; choose from {', '.join(SWEEP)} or add one with --set")
    for item in args.set:
        name, _, flags = item.partition("=")
        settings[name] = flags.split()
    out, report = Path(args.out), Path(args.report)
    seeds = [int(x) for x in args.seeds.split(",")]
    runs: list[dict[str, Any]] = []
    worlds: list[str] = []
    for seed in seeds:
        warm = warmup_run(args.config, out, seed)
        worlds = worlds_of(warm)
        for name, flags in settings.items():
            run_dir = out / f"{name}_seed{seed}"
            wall = run_once(args.config, run_dir, [*from_warmup(warm, seed), *flags], keep_checkpoints=False)
            runs.append({"setting": name, "flags": flags, "seed": seed, "wall_s": wall,
                         "result": last_evaluation(run_dir, warm)})
    summary = summarise_sweep(runs, worlds)
    command = ("python bin/bench_learning.py sweep " + " ".join(argv)).strip()
    report.mkdir(parents=True, exist_ok=True)
    result = {"command": command, "config": shown_path(args.config), "settings": settings, "seeds": seeds, "runs": runs,
              "summary": summary}
    (report / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    table = sweep_markdown(summary, worlds)
    (report / "table.md").write_text(f"`{command}`\n\nLast round's greedy EM, mean [95% t-interval] over seeds "
                                     f"{seeds}; chosen on the {worlds[0]} world only.\n\n{table}")
    print(table)  # noqa: T201 - the benchmark's table
    return {"settings": settings, "runs": runs, "summary": summary}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    return main_sweep(argv[1:]) if argv[:1] == ["sweep"] else main_arms(argv)


if __name__ == "__main__":
    main()
