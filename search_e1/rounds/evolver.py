"""Evolver: alternates GRPO and OFSD rounds on one policy, with one logger and resumable state.

    env = SearchEnv(config=RolloutConfig(max_turns=3), prompt=PromptConfig(preset="few_shot"))
    evolver = Evolver(policy, datamodule, env, grpo=GRPOConfig(), ofsd=OFSDConfig(), config=EvolverConfig())
    evolver.fit()          # rounds x (GRPO round of grpo_steps, OFSD round of ofsd_steps)

Per phase a NEW LightningModule and a NEW ``Trainer`` (a reused Trainer silently skips later
fits); the TensorBoard logger is one `OffsetTensorBoardLogger` whose step offset advances by
each phase's steps, so every scalar lives on one increasing axis. After each phase the policy is
saved (Hugging Face format): at the end of a round to ``<run_dir>/checkpoints/round_<r>``, after
a GRPO phase to ``checkpoints/last`` (removed once the round's checkpoint exists), so the run keeps
one checkpoint per round (``save_round_checkpoints``) plus at most one more. After each round the
val split and every held-out world (``data.eval_worlds``) are evaluated (greedy) and one row per
world is appended to ``val_table.csv``: EM with its Wilson 95% interval, EM per hop count, and the
gain over the first evaluation (the warm-up's, else round 0's) on the same questions with its
paired 95% interval. The first and the last evaluation use ``eval_max_questions`` questions per
world, the ones in between ``eval_round_questions`` (fewer, to spend the minutes on training);
each question's outcome goes to ``eval/<round>/<world>.jsonl``. A one-line summary of every phase
(first and last step's reward, searches, response length, entropy, mixed groups) goes to the log.

Optimisers persist (``persist_optimizers``): each round kind's AdamW state is written beside the
checkpoint that ends its phase (``checkpoints/<name>/optimizer/<kind>``, every kind's state carried
to the newest checkpoint, removed from older ones) and restored when its next round starts, also
after a resume; the state of the kind not running waits on disk.

Resume: ``evolver_state.json`` (replaced atomically) records the next phase, the latest checkpoint,
the step offset, ``started`` while a phase runs and ``pending_eval`` while a val row is owed. It is
written after the checkpoint it names exists and before an older one is removed, so a run killed
at any instant (SIGKILL included) and restarted with the same config continues: a killed phase is
rerun from the last checkpoint and logs after the steps its killed attempt may have logged (every
TensorBoard tag's steps strictly increase), and an owed val row is written once.

With ``warmup.demonstrations`` set (`search_e1.rounds.warmup`, off by default: a departure for small
models) a supervised warm-up runs once before round 1 as its own phase: its own Trainer, its steps
on the same axis, the policy saved to ``checkpoints/warmup``, a val row ``round = warmup``. A run
killed during the warm-up reruns it from the initial weights (its steps logged after those of the
killed attempt); a run killed later resumes from the checkpoints. The state's ``warmup`` key says
where it stands (absent: none ran; ``started``; ``done``). The frozen KL reference of GRPO is the
policy as it enters round 1: the warm-up's weights when one ran, else the initial ones.

With ``strategy: fsdp`` the Trainers use Lightning's ``ModelParallelStrategy`` (FSDP2, every
process on the data-parallel axis); the shared policy is sharded once by the first module's
``configure_model`` and stays sharded.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from search_e1.config import check_range
from search_e1.data import TRAIN_WORLD, RetrievalDataModule
from search_e1.distributed import is_distributed
from search_e1.errors import UserInputError, first_line, writing
from search_e1.memory import peak_rss_gb, release_memory, rss_gb, set_mmap_threshold
from search_e1.policy import Policy
from search_e1.rollout import SearchEnv
from search_e1.rounds.evaluate import evaluate_policy
from search_e1.rounds.grpo import GRPOConfig, GRPOModule
from search_e1.rounds.ofsd import OFSDConfig, OFSDModule
from search_e1.rounds.warmup import WarmupConfig, WarmupExample, WarmupModule, load_demonstrations
from search_e1.run_config import STATE_FILE
from search_e1.stats import paired_difference_interval

log = logging.getLogger(__name__)

PHASES = ("grpo", "ofsd")
VAL_FIELDS = ("round", "world", "step", "n", "em", "em_lo", "em_hi", "gain", "gain_lo", "gain_hi", "em_1hop",
              "em_2hop", "f1", "searches", "tokens")
"""The columns of ``val_table.csv``: one row per evaluation and world (gain: EM minus the first
evaluation's on the same questions, with the paired 95% interval; blank where there is none)."""
SUMMARY_KEYS = {"grpo": ("reward_mean", "searches_mean", "response_length", "entropy", "mixed_group_frac",
                         "dynamic_groups"),
                "ofsd": ("examples", "kl_before", "distill_loss", "kl_after")}
"""The per-step scalars of each phase that its one-line summary reports (first -> last)."""


@dataclass
class EvolverConfig:
    """The schedule of rounds and what the Evolver writes."""

    run_dir: str = "runs/search-e1"
    """Run directory: TensorBoard events, checkpoints, OFSD data sets, val table, config."""
    rounds: int = 2
    """Number of (GRPO round, OFSD round) pairs; 0 = only the warm-up (and the evaluations)."""
    grpo_steps: int = 10
    """GRPO steps (question batches) per round."""
    ofsd_steps: int = 10
    """OFSD optimiser steps per round."""
    eval_initial: bool = True
    """Evaluate the val split before the first round too (row "round 0")."""
    eval_max_questions: int = 0
    """Questions of each evaluated world (val split, held-out worlds) at the first and the last evaluation; 0 = all."""
    eval_round_questions: int = 0
    """Questions of each world at the evaluations in between (rounds before the last; round 0 before a warm-up); 0 = as
    eval_max_questions."""
    eval_batch_size: int = 16
    """Questions per evaluation rollout batch (larger batches keep the engine busier)."""
    resume: bool = True
    """Continue a run found in run_dir (its evolver_state.json) instead of starting over."""
    accept_config_change: bool = False
    """Resume a run even though its config differs from the saved config.yaml (changes go to config_changes.log)."""
    save_round_checkpoints: bool = True
    """Keep every round's policy checkpoint checkpoints/round_<r> (else only the latest round's)."""
    seed: int = 0
    """Base seed; each phase is seeded with seed + 10 * round + phase."""
    malloc_mmap_threshold_mb: int = 0
    """glibc: allocations of at least this many MiB are unmapped when freed (less RSS, slower CPU steps); 0 = glibc's
    default."""
    persist_optimizers: bool = True
    """Carry each round kind's AdamW moments, step count and lr warm-up from one round to the next (saved with the
    checkpoint); False = a fresh AdamW every round."""

    def __post_init__(self) -> None:
        check_range(self, at_least={"rounds": 0, "grpo_steps": 0, "ofsd_steps": 0, "eval_batch_size": 1,
                                    "eval_max_questions": 0, "eval_round_questions": 0, "malloc_mmap_threshold_mb": 0})


class OffsetTensorBoardLogger(TensorBoardLogger):
    """A TensorBoard logger whose steps are shifted by ``step_offset`` (advanced by the Evolver)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.step_offset = 0

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        super().log_metrics(metrics, (step or 0) + self.step_offset)


class PhaseProgressBar(RichProgressBar):
    """Lightning's rich bar without the logger's version number (``v_num``): one run, one version."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


class _AtFitStart(L.Callback):
    """Calls ``fn`` at the start of ``fit``, once the Trainer's processes all run."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fn()


class Evolver:
    """Runs Search-E1: ``rounds`` x (GRPO round, OFSD round) on one shared policy.

    Args:
        policy: the policy to train in place.
        datamodule: QA splits and the retriever (set up once here).
        env: the search environment of every rollout and evaluation (budgets, prompt, reward,
            backend); its retriever, when None, is the data module's.
        grpo: GRPO round hyperparameters.
        ofsd: OFSD round hyperparameters.
        config: schedule and outputs.
        trainer: keyword arguments of every round's ``lightning.Trainer``; ``strategy: fsdp``
            selects FSDP2 through ``ModelParallelStrategy``.
        warmup: supervised warm-up before round 1 (runs only when ``warmup.demonstrations`` is set).
    """

    def __init__(
        self, policy: Policy, datamodule: RetrievalDataModule, env: SearchEnv | None = None,
        grpo: GRPOConfig | None = None, ofsd: OFSDConfig | None = None, config: EvolverConfig | None = None,
        trainer: dict[str, Any] | None = None, warmup: WarmupConfig | None = None,
    ) -> None:
        self.policy, self.datamodule = policy, datamodule
        self.grpo, self.ofsd = grpo or GRPOConfig(), ofsd or OFSDConfig()
        self.config = config or EvolverConfig()
        self.warmup = warmup if warmup is None or warmup.seed is not None else replace(warmup, seed=self.config.seed)
        self.env = with_run_seed(env or SearchEnv(), datamodule, self.config.seed)
        self.trainer_kwargs = dict(trainer or {})
        self.run_dir = Path(self.config.run_dir)
        self.logger = OffsetTensorBoardLogger(save_dir=str(self.run_dir), name="tensorboard", version=0,
                                              default_hp_metric=False)
        self.reference: Policy | None = None
        self.state: dict[str, Any] = {"round": 1, "phase": 0, "step_offset": 0, "grpo_batches": 0}
        self._fresh = True  # no state file was found: a new run

    # ---------------------------------------------------------------- public
    def fit(self) -> dict[str, Any]:
        """Run (or resume) every round; returns the final state."""
        if set_mmap_threshold(self.config.malloc_mmap_threshold_mb):
            log.info("allocations of %d MiB and more are unmapped when freed", self.config.malloc_mmap_threshold_mb)
        self.env.check_prompt_fits(self.policy.tokenizer)
        self._check_sampling()
        self._check_trainer()
        self._setup_data("fit")
        self._maybe_resume()
        self._evaluate_pending()  # a run killed during an evaluation writes that row first
        if self.state["round"] > self.config.rounds and not self._warmup_due():
            log.warning("%s already holds a finished run (%d rounds): nothing to do; raise evolver.rounds to "
                        "continue it, or use a new evolver.run_dir / evolver.resume false", self.run_dir,
                        self.config.rounds)
            return dict(self.state)
        demonstrations = self._pending_warmup()  # read and checked before any training
        if self.grpo.kl_coef > 0 and self.reference is None:  # unsharded copy; a warm-up reloads it
            self.reference = self.policy.reference()
        if self._fresh and self.config.eval_initial:  # recorded first: a killed start leaves one round-0 row
            self.state["pending_eval"] = 0
            self._write_state()
            self._evaluate_pending()
        if demonstrations is not None:
            self._run_warmup(demonstrations)
        while self.state["round"] <= self.config.rounds:
            phase = PHASES[self.state["phase"]]
            L.seed_everything(self.config.seed + 10 * self.state["round"] + self.state["phase"], workers=True,
                              verbose=False)
            steps = self._run_grpo() if phase == "grpo" else self._run_ofsd()
            self._advance(steps)
        return dict(self.state)

    def evaluate(self, split: str = "val", max_questions: int = 0) -> dict[str, dict[str, float]]:
        """Greedy evaluation of the current policy on a split of the data module."""
        self._setup_data("fit" if split in ("train", "val") else "test")
        examples = self.datamodule.examples(split)
        if max_questions:
            examples = examples[:max_questions]
        return evaluate_policy(self.policy, self.env, examples, self.config.eval_batch_size)

    def _setup_data(self, stage: str) -> None:
        """Set the data module up for ``stage``; the environment searches its retriever unless it has its own."""
        self.datamodule.setup(stage)
        if self.env.retriever is None:
            self.env = self.env.with_retriever(self.datamodule.retriever)

    # ---------------------------------------------------------------- phases
    def _warmup_due(self) -> bool:
        """A warm-up is configured and has not finished (and the run did not start without one)."""
        c = self.warmup
        if c is None or c.demonstrations is None or self.state.get("warmup") == "done":
            return False
        return "warmup" in self.state or "checkpoint" not in self.state

    def _pending_warmup(self) -> list[WarmupExample] | None:
        """The encoded demonstrations when a warm-up is due (`_warmup_due`), else None."""
        c = self.warmup
        if not self._warmup_due():
            if c is not None and c.demonstrations is not None and self.state.get("warmup") != "done":
                log.warning("%s was started without a warm-up; it is not added in the middle of the run",
                            self.run_dir)
            return None
        return load_demonstrations(c.demonstrations, self.policy.tokenizer, self.env.prompt, self.env.config,
                                   c.max_examples)

    def _run_warmup(self, demonstrations: list[WarmupExample]) -> None:
        """The warm-up phase; afterwards the policy is in ``checkpoints/warmup`` and so is the reference."""
        c = self.warmup or WarmupConfig()
        if self.state.get("warmup") == "started":  # a killed attempt may have logged up to c.steps steps
            self.state["step_offset"] += c.steps
        self.state["warmup"] = "started"
        self.logger.step_offset = self.state["step_offset"]
        log.info("warm-up: %d steps on %d demonstrations from %s", c.steps, len(demonstrations), c.demonstrations)
        L.seed_everything(self.config.seed, workers=True, verbose=False)
        start = time.perf_counter()
        self._trainer().fit(WarmupModule(self.policy, demonstrations, c))
        log.info("warm-up: %d steps in %.0f s", c.steps, time.perf_counter() - start)
        self.state["step_offset"] += c.steps
        self.logger.step_offset = self.state["step_offset"]
        self._release_memory("warm-up")
        path = self.run_dir / "checkpoints" / "warmup"
        self.policy.save_pretrained(path)
        self.state.update(checkpoint="warmup", warmup="done", pending_eval="warmup")
        self._write_state()
        if self.reference is not None:
            self.reference.load_weights(path)
        self._evaluate_pending()

    def _trainer(self) -> L.Trainer:
        """A fresh Trainer for one phase. It writes the state file when the phase starts, once every
        process runs: a launcher that re-runs the script for the other ranks (FSDP on CPU) makes them
        read the state this rank read, so a fresh run stays fresh and a rerun warm-up reserves the
        same steps on every rank."""
        kwargs = dict(self.trainer_kwargs)
        strategy = kwargs.get("strategy", "auto")
        if strategy == "fsdp":
            from lightning.pytorch.strategies import ModelParallelStrategy

            devices, nodes = kwargs.get("devices", 1), int(kwargs.get("num_nodes") or 1)
            n = int(devices) * nodes if str(devices).isdigit() else "auto"  # every process of every node
            kwargs["strategy"] = ModelParallelStrategy(data_parallel_size=n, tensor_parallel_size=1)
        callbacks: list[L.Callback] = [_AtFitStart(self._write_state)]
        if kwargs.get("enable_progress_bar", True) is not False:
            callbacks.append(PhaseProgressBar())
        kwargs.update(logger=self.logger, callbacks=callbacks, max_epochs=1,
                      enable_checkpointing=False, num_sanity_val_steps=0, limit_val_batches=0,
                      use_distributed_sampler=False)
        kwargs.setdefault("log_every_n_steps", 1)
        if kwargs.get("default_root_dir") is None:
            kwargs["default_root_dir"] = str(self.run_dir)
        return L.Trainer(**kwargs)

    def _begin_phase(self, steps: int) -> None:
        """Reserve the phase's steps on the axis. A rerun of a phase that was killed after it started
        (the state says ``started``) logs after the steps the killed attempt may have logged."""
        if self.state.pop("started", False):
            log.info("rerunning the %s phase of round %d from its start (it was stopped)",
                     PHASES[self.state["phase"]], self.state["round"])
            self.state["step_offset"] += steps
        self.state["started"] = True  # written when the phase's Trainer starts
        self.logger.step_offset = self.state["step_offset"]

    def _check_sampling(self) -> None:
        """Refuse greedy training rollouts: at temperature 0 a group's G samples are identical, every
        advantage is 0 and GRPO learns nothing; OFSD finds no cheaper sibling either."""
        c = self.config
        if self.env.config.temperature == 0 and c.rounds > 0 and (c.grpo_steps or c.ofsd_steps):
            raise UserInputError("rollout.temperature is 0 (greedy) in a training run: each question's "
                                 f"{self.grpo.group_size} samples would be identical, so every GRPO advantage is 0 "
                                 "and nothing is learnt; set rollout.temperature > 0 (evaluation is greedy anyway)")

    def _check_trainer(self) -> None:
        """Build (and drop) a phase's Trainer now, so that bad trainer settings (accelerator, devices,
        strategy, precision) are refused before any work, not when the first phase starts."""
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        quiet = logging.getLogger("lightning.pytorch.utilities.rank_zero")
        level = quiet.level
        quiet.setLevel(logging.WARNING)  # its "GPU available" lines come again with the first phase
        try:
            self._trainer()
        except (MisconfigurationException, ValueError, TypeError, RuntimeError, ImportError) as err:
            raise UserInputError(f"invalid trainer settings (accelerator {self.trainer_kwargs.get('accelerator')!r}, "
                                 f"devices {self.trainer_kwargs.get('devices')!r}, strategy "
                                 f"{self.trainer_kwargs.get('strategy', 'auto')!r}): {first_line(err)}") from None
        finally:
            quiet.setLevel(level)

    def _run_grpo(self) -> int:
        steps = self.config.grpo_steps
        if steps:
            self._begin_phase(steps)
            self.datamodule.schedule_round(self.state["grpo_batches"], steps)
            module = GRPOModule(self.policy, self.env, self.grpo, reference=self.reference,
                                question_source=self.train_questions)
            with warnings.catch_warnings():  # val batches are the Evolver's to evaluate, not Lightning's
                warnings.filterwarnings("ignore", message="You passed in a `val_dataloader` but have no")
                self._fit_phase(module, "grpo")
        self.state["grpo_batches"] += steps
        return steps

    def train_questions(self, k: int, seed: int) -> list[tuple[str, list[str]]]:
        """``k`` training questions drawn with ``seed`` (offset by the run's seed): DAPO's refills."""
        drawn = self.datamodule.sample_train(k, seed=self.config.seed + seed)
        return [(e.question, list(e.golden_answers)) for e in drawn]

    def _run_ofsd(self) -> int:
        steps, r = self.config.ofsd_steps, self.state["round"]
        if steps:
            self._begin_phase(steps)
            sample = self.datamodule.sample_train(self.ofsd.num_questions, seed=self.config.seed + 1000 + r)
            module = OFSDModule(self.policy, self.env, [(e.question, list(e.golden_answers)) for e in sample], steps,
                                self.ofsd, out_dir=self.run_dir / "ofsd" / f"round_{r}",
                                question_source=self.train_questions)
            self._fit_phase(module, "ofsd")
        return steps

    def _fit_phase(self, module: GRPOModule | OFSDModule, kind: str) -> None:
        """Fit one phase's module in a fresh Trainer: its optimiser starts from the state its kind left
        in the current checkpoint and writes its state to a staging directory that `_advance` moves
        into the next checkpoint; then the one-line summary of the phase."""
        if self.config.persist_optimizers:
            saved = self._optimizer_dir(self.state.get("checkpoint"), kind)
            module.optimizer_from = saved if saved is not None and saved.is_dir() else None
            module.optimizer_to = self._staged_optimizer(kind)
            if self.global_zero:
                shutil.rmtree(module.optimizer_to, ignore_errors=True)  # a killed attempt's
        start = time.perf_counter()
        self._trainer().fit(module, datamodule=self.datamodule if kind == "grpo" else None)
        log.info("%s", phase_summary(kind, self.state["round"], module.step_stats, time.perf_counter() - start))

    def _optimizer_dir(self, checkpoint: str | None, kind: str) -> Path | None:
        """Where checkpoint ``checkpoint`` keeps the optimiser state of ``kind`` (None: no checkpoint)."""
        return None if checkpoint is None else self.run_dir / "checkpoints" / checkpoint / "optimizer" / kind

    def _staged_optimizer(self, kind: str) -> Path:
        return self.run_dir / "checkpoints" / f".optimizer_{kind}"

    def _carry_optimizers(self, previous: str | None, name: str, kind: str) -> None:
        """Into the new checkpoint ``name``: the optimiser state the phase of ``kind`` just wrote (or,
        when it took no step, the one it started from), and every other kind's state from checkpoint
        ``previous`` (hard links: no copy of the moments)."""
        if not self.config.persist_optimizers or not self.global_zero:
            return
        target = self.run_dir / "checkpoints" / name / "optimizer"
        target.mkdir(parents=True, exist_ok=True)
        staged = self._staged_optimizer(kind)
        if staged.is_dir():
            os.replace(staged, target / kind)
        for other in PHASES:
            source = self._optimizer_dir(previous, other)
            if (target / other).exists() or source is None or not source.is_dir():
                continue
            shutil.copytree(source, target / other, copy_function=_link_or_copy)

    def _advance(self, steps: int) -> None:
        """Bookkeeping after a phase: offset, checkpoint (with the optimiser states), state file,
        evaluation. At every instant the state file on disk names a checkpoint that exists, so a kill
        anywhere resumes."""
        self.state["step_offset"] += steps
        self.logger.step_offset = self.state["step_offset"]
        end_of_round = self.state["phase"] == len(PHASES) - 1
        r, previous = self.state["round"], self.state.get("checkpoint")
        self._release_memory(PHASES[self.state["phase"]])
        name = f"round_{r}" if end_of_round else "last"  # never the name the state holds now
        self.policy.save_pretrained(self.run_dir / "checkpoints" / name)
        self._carry_optimizers(previous, name, PHASES[self.state["phase"]])
        self._barrier()
        self.state["checkpoint"] = name
        self.state.pop("started", None)
        if end_of_round:
            self.state.update(round=r + 1, phase=0, pending_eval=r)
        else:
            self.state["phase"] += 1
        self._write_state()
        if self.global_zero:  # what the state no longer names: older checkpoints' optimiser states
            if previous not in (None, name):
                shutil.rmtree(self.run_dir / "checkpoints" / previous / "optimizer", ignore_errors=True)
            if end_of_round:
                shutil.rmtree(self.run_dir / "checkpoints" / "last", ignore_errors=True)
                if not self.config.save_round_checkpoints:
                    shutil.rmtree(self.run_dir / "checkpoints" / f"round_{r - 1}", ignore_errors=True)
        self._evaluate_pending()

    def _barrier(self) -> None:
        if is_distributed():
            torch.distributed.barrier()

    def _release_memory(self, phase: str) -> None:
        """Free the finished phase's Trainer, module and optimiser state now, and log the RSS."""
        release_memory()  # reference cycles go now, not later; free heap pages go back to the OS
        rss, peak = rss_gb(), peak_rss_gb()
        log.info("%s done: RSS %.2f GB (peak so far %.2f GB)", phase, rss, peak)
        self.logger.log_metrics({"memory/rss_gb": rss, "memory/peak_rss_gb": peak}, step=0)

    @property
    def global_zero(self) -> bool:
        return not is_distributed() or torch.distributed.get_rank() == 0

    # ---------------------------------------------------------------- outputs
    def _evaluate_pending(self) -> None:
        """Evaluate the round the state marks ``pending_eval`` on every world whose row was not
        written before a kill, then clear the mark."""
        if "pending_eval" not in self.state:
            return
        self._evaluate(self.state["pending_eval"])
        del self.state["pending_eval"]
        self._write_state()

    def val_rows(self) -> list[dict[str, str]]:
        """The rows of ``val_table.csv`` (empty when there is none; rows of tables written before the
        ``world`` column count as the training world's)."""
        path = self.run_dir / "val_table.csv"
        if not path.exists():
            return []
        with path.open(newline="") as f:
            return [{**row, "world": row.get("world") or TRAIN_WORLD} for row in csv.DictReader(f)]

    def _baseline_label(self) -> str:
        """The evaluation every gain is measured from: the warm-up's when one runs, else round 0's."""
        return "warmup" if self._warmup_due() or self.state.get("warmup") == "done" else "0"

    def _eval_size(self, label: int | str) -> int:
        """Questions per world at evaluation ``label``: all of ``eval_max_questions`` at the first and
        the last, ``eval_round_questions`` in between (0 = all)."""
        c = self.config
        full = str(label) in (self._baseline_label(), str(c.rounds))
        return c.eval_max_questions if full or not c.eval_round_questions else c.eval_round_questions

    def _evaluate(self, label: int | str) -> None:
        if not self.datamodule.has_split("val"):
            return
        done = {(row["round"], row["world"]) for row in self.val_rows()}
        n = self._eval_size(label)
        for world, examples, retriever in self.datamodule.eval_sets("val"):
            if (str(label), world) in done:
                log.info("val row of round %s (%s) already written: not evaluated again", label, world)
                continue
            records: list[dict[str, Any]] = []
            start = time.perf_counter()
            results = evaluate_policy(self.policy, self.env.with_retriever(retriever), examples[:n] if n else examples,
                                      self.config.eval_batch_size, records=records, description=f"evaluate {world}")
            self._save_records(label, world, records)
            gain = self._gain(label, world, records)
            row = val_row(label, world, self.state["step_offset"], results, gain)
            log.info("%s", eval_line(label, world, results, gain, self._baseline_label(), time.perf_counter() - start))
            self._append_row(row)  # the row first: a rerun finds it and does not log the scalars twice
            prefix = "val" if world == TRAIN_WORLD else f"val_{world}"
            self.logger.log_metrics({f"{prefix}/{k}": float(v) for k, v in row.items()
                                     if k not in ("round", "world", "step", "n") and v != ""}, step=0)
        self._flush_logs()

    def _records_path(self, label: int | str, world: str) -> Path:
        return self.run_dir / "eval" / str(label) / f"{world}.jsonl"

    @rank_zero_only
    def _save_records(self, label: int | str, world: str, records: list[dict[str, Any]]) -> None:
        path = self._records_path(label, world)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with writing(path, tmp):
            tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
            os.replace(tmp, path)

    def _gain(self, label: int | str, world: str, records: list[dict[str, Any]]) -> tuple[float, float, float] | None:
        """EM gain over the baseline evaluation on the questions both evaluated, with its paired 95%
        interval; None for the baseline itself or without its records."""
        base = self._baseline_label()
        path = self._records_path(base, world)
        if str(label) == base or not path.is_file():
            return None
        before = {r["id"]: r["em"] for r in map(json.loads, path.read_text().splitlines())}
        pairs = [(r["em"], before[r["id"]]) for r in records if r["id"] in before]
        if not pairs:
            return None
        return paired_difference_interval([a for a, _ in pairs], [b for _, b in pairs])

    @rank_zero_only
    def _flush_logs(self) -> None:
        self.logger.experiment.flush()

    @rank_zero_only
    def _append_row(self, row: dict[str, Any]) -> None:
        path = self.run_dir / "val_table.csv"
        if path.exists():
            with path.open(newline="") as f:
                header = next(csv.reader(f), [])
            if header != list(VAL_FIELDS):  # a table of an older layout: rewritten in this one first
                old = self.val_rows()
                tmp = path.with_name(path.name + ".tmp")
                with tmp.open("w", newline="") as f:
                    writer = csv.DictWriter(f, fieldnames=VAL_FIELDS, restval="", extrasaction="ignore")
                    writer.writeheader()
                    writer.writerows(old)
                os.replace(tmp, path)
        new = not path.exists()
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=VAL_FIELDS, restval="")
            if new:
                writer.writeheader()
            writer.writerow(row)
            f.flush()
            os.fsync(f.fileno())

    @rank_zero_only
    def _write_state(self) -> None:
        tmp = self.run_dir / (STATE_FILE + ".tmp")
        with writing(self.run_dir / STATE_FILE, tmp):
            tmp.write_text(json.dumps(self.state, indent=2))
            os.replace(tmp, self.run_dir / STATE_FILE)

    def _maybe_resume(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / STATE_FILE
        if not path.exists():
            return
        if not self.config.resume:  # never overwrite another run's checkpoints and logs
            raise UserInputError(f"evolver.run_dir {self.run_dir} already holds a run ({path}); resume it "
                                 "(evolver.resume true) or choose another run_dir")
        self.state = read_state(path)
        self._fresh = False
        self.logger.step_offset = self.state["step_offset"]
        if "checkpoint" not in self.state:  # killed before a phase finished: start from the initial weights
            log.info("resuming %s from the initial weights (no phase had finished)", self.run_dir)
            return
        ckpt = self.run_dir / "checkpoints" / self.state["checkpoint"]
        if not ckpt.is_dir():
            raise UserInputError(f"{path} names checkpoint {self.state['checkpoint']!r}, but {ckpt} does not exist: "
                                 "the run directory was changed by hand; restore that checkpoint, or start over "
                                 "in another evolver.run_dir")
        if self.grpo.kl_coef > 0 and self.reference is None:
            # the reference is the policy as it entered round 1: the warm-up's, else the initial weights
            self.reference = self.policy.reference()
            if self.state.get("warmup") == "done":
                self.reference.load_weights(self.run_dir / "checkpoints" / "warmup")
        self.policy.load_weights(self.run_dir / "checkpoints" / self.state["checkpoint"])
        log.info("resuming %s at round %d, phase %s (step %d)", self.run_dir, self.state["round"],
                 PHASES[self.state["phase"]], self.state["step_offset"])


STATE_KEYS = {"round": int, "phase": int, "step_offset": int, "grpo_batches": int}
"""The keys every state file holds, with their types."""


def read_state(path: Path) -> dict[str, Any]:
    """A run's ``evolver_state.json``, checked: a damaged one is a `UserInputError` naming it."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        state, why = None, f"not JSON ({err})"
    else:
        why = "not an object" if not isinstance(state, dict) else next(
            (f"{k!r} missing or not {t.__name__}" for k, t in STATE_KEYS.items()
             if not isinstance(state.get(k), t) or isinstance(state.get(k), bool)), None)
        if why is None and not 0 <= state["phase"] < len(PHASES):
            why = f"phase {state['phase']} out of range"
    if why is not None:
        raise UserInputError(f"{path} is damaged ({why}): the run cannot tell where it stopped; move the run "
                             "directory away and start over, or restore the file from a backup")
    return state


def with_run_seed(env: SearchEnv, datamodule: RetrievalDataModule, seed: int) -> SearchEnv:
    """Seeds left unset (None) follow the run's ``seed``: the data module's question order and the
    vLLM engine's sampling (the warm-up's demonstration order too, set in the Evolver); so
    ``evolver.seed`` alone gives a run another draw of everything."""
    if getattr(datamodule, "seed", 0) is None:
        datamodule.seed = seed
    vllm = env.config.vllm
    if vllm.seed is None:
        env = replace(env, config=replace(env.config, vllm=replace(vllm, seed=seed)))
    return env


def _link_or_copy(src: str, dst: str) -> None:
    """A hard link where the file system allows one, else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def val_row(label: int | str, world: str, step: int, results: dict[str, dict[str, float]],
            gain: tuple[float, float, float] | None) -> dict[str, Any]:
    """One ``val_table.csv`` row (`VAL_FIELDS`) from `evaluate_policy`'s results."""
    a = results["all"]
    row: dict[str, Any] = {"round": label, "world": world, "step": step, "n": int(a["n"])}
    row.update({k: round(a[k], 4) for k in ("em", "em_lo", "em_hi", "f1", "searches", "tokens")})
    row.update(dict(zip(("gain", "gain_lo", "gain_hi"), [round(g, 4) for g in gain] if gain else ["", "", ""],
                        strict=True)))
    for hops in (1, 2):
        group = results.get(f"{hops}-hop")
        row[f"em_{hops}hop"] = round(group["em"], 4) if group else ""
    return row


def eval_line(label: int | str, world: str, results: dict[str, dict[str, float]],
              gain: tuple[float, float, float] | None, baseline: str, seconds: float) -> str:
    """The console line of one evaluation: EM, its interval and n, EM per hop count, the gain, the time."""
    a = results["all"]
    hops = ", ".join(f"{k} {v['em']:.3f}" for k, v in results.items() if k.endswith("-hop"))
    text = (f"val after round {label} [{world}]: EM {a['em']:.3f} (95% CI {a['em_lo']:.3f}-{a['em_hi']:.3f}, "
            f"n {int(a['n'])}{'; ' + hops if hops else ''}) F1 {a['f1']:.3f} searches {a['searches']:.2f} "
            f"tokens {a['tokens']:.1f}")
    if gain is not None:
        text += f"; gain over {baseline} {gain[0]:+.3f} (paired 95% CI {gain[1]:+.3f} to {gain[2]:+.3f})"
    return text + f" [{seconds:.0f} s]"


def phase_summary(kind: str, round_: int, stats: dict[str, list[float]], seconds: float) -> str:
    """One line per phase: its steps and time, the first -> last value of each scalar of
    `SUMMARY_KEYS` (a collapse shows as searches or length falling towards 0, or the share of
    mixed groups emptying)."""
    parts = []
    for key in SUMMARY_KEYS[kind]:
        values = stats.get(key)
        if values:
            parts.append(f"{key} {values[0]:.3g}" + (f" -> {values[-1]:.3g}" if len(values) > 1 else ""))
    steps = len(stats.get("grad_norm", ()))
    return f"round {round_} {kind}: {steps} steps in {seconds:.0f} s" + (", " + ", ".join(parts) if parts else "")
