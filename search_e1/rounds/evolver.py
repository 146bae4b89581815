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
val split is evaluated (greedy) and a row is appended to ``val_table.csv``.

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
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from search_e1.data import RetrievalDataModule
from search_e1.distributed import is_distributed
from search_e1.errors import UserInputError, writing
from search_e1.memory import peak_rss_gb, release_memory, rss_gb, set_mmap_threshold
from search_e1.policy import Policy
from search_e1.rollout import SearchEnv
from search_e1.rounds.evaluate import evaluate_policy
from search_e1.rounds.grpo import GRPOConfig, GRPOModule
from search_e1.rounds.ofsd import OFSDConfig, OFSDModule
from search_e1.rounds.warmup import WarmupConfig, WarmupExample, WarmupModule, load_demonstrations
from search_e1.run_config import STATE_FILE

log = logging.getLogger(__name__)

PHASES = ("grpo", "ofsd")


@dataclass
class EvolverConfig:
    """The schedule of rounds and what the Evolver writes."""

    run_dir: str = "runs/search-e1"
    """Run directory: TensorBoard events, checkpoints, OFSD data sets, val table, config."""
    rounds: int = 2
    """Number of (GRPO round, OFSD round) pairs."""
    grpo_steps: int = 10
    """GRPO steps (question batches) per round."""
    ofsd_steps: int = 10
    """OFSD optimiser steps per round."""
    eval_initial: bool = True
    """Evaluate the val split before the first round too (row "round 0")."""
    eval_max_questions: int = 0
    """Val questions per evaluation; 0 = all."""
    eval_batch_size: int = 16
    """Questions per evaluation rollout batch."""
    resume: bool = True
    """Continue a run found in run_dir (its evolver_state.json) instead of starting over."""
    accept_config_change: bool = False
    """Resume a run even though its config differs from the saved config.yaml (changes go to config_changes.log)."""
    save_round_checkpoints: bool = True
    """Keep every round's policy checkpoint checkpoints/round_<r> (else only the latest round's)."""
    seed: int = 0
    """Base seed; each phase is seeded with seed + 10 * round + phase."""
    malloc_mmap_threshold_mb: int = 0
    """glibc: allocations of at least this many MiB are unmapped when freed (less RSS, slower CPU steps); 0 = glibc's default."""

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.grpo_steps < 0 or self.ofsd_steps < 0 or self.eval_batch_size < 1 \
                or self.malloc_mmap_threshold_mb < 0 or self.eval_max_questions < 0:
            raise ValueError("EvolverConfig: rounds >= 1, grpo_steps/ofsd_steps >= 0, eval_batch_size >= 1, "
                             "eval_max_questions >= 0, malloc_mmap_threshold_mb >= 0 are required")


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
        self.warmup = warmup
        self.policy, self.datamodule = policy, datamodule
        self.env = env or SearchEnv()
        self.grpo, self.ofsd = grpo or GRPOConfig(), ofsd or OFSDConfig()
        self.config = config or EvolverConfig()
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
        self._check_trainer()
        self._setup_data("fit")
        self._maybe_resume()
        self._evaluate_pending()  # a run killed during an evaluation writes that row first
        if self.state["round"] > self.config.rounds:
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
    def _pending_warmup(self) -> list[WarmupExample] | None:
        """The encoded demonstrations when a warm-up is configured and has not finished, else None."""
        c = self.warmup
        if c is None or c.demonstrations is None or self.state.get("warmup") == "done":
            return None
        if "warmup" not in self.state and "checkpoint" in self.state:
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
        self._trainer().fit(WarmupModule(self.policy, demonstrations, c))
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

            devices = kwargs.get("devices", 1)
            n = int(devices) if str(devices).isdigit() else "auto"
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

    def _check_trainer(self) -> None:
        """Build (and drop) a phase's Trainer now, so that bad trainer settings (accelerator, devices,
        strategy, precision) are refused before any work, not when the first phase starts."""
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        quiet = logging.getLogger("lightning.pytorch.utilities.rank_zero")
        level = quiet.level
        quiet.setLevel(logging.WARNING)  # its "GPU available" lines come again with the first phase
        try:
            self._trainer()
        except (MisconfigurationException, ValueError, TypeError, RuntimeError) as err:
            raise UserInputError(f"invalid trainer settings {self.trainer_kwargs}: {err}") from None
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
                self._trainer().fit(module, datamodule=self.datamodule)
        self.state["grpo_batches"] += steps
        return steps

    def train_questions(self, k: int, seed: int) -> list[tuple[str, list[str]]]:
        """``k`` training questions drawn with ``seed`` (offset by the run's seed): DAPO's refills."""
        return [(e.question, list(e.golden_answers)) for e in self.datamodule.sample_train(k, seed=self.config.seed + seed)]

    def _run_ofsd(self) -> int:
        steps, r = self.config.ofsd_steps, self.state["round"]
        if steps:
            self._begin_phase(steps)
            sample = self.datamodule.sample_train(self.ofsd.num_questions, seed=self.config.seed + 1000 + r)
            module = OFSDModule(self.policy, self.env, [(e.question, list(e.golden_answers)) for e in sample], steps,
                                self.ofsd, out_dir=self.run_dir / "ofsd" / f"round_{r}",
                                question_source=self.train_questions)
            self._trainer().fit(module)
        return steps

    def _advance(self, steps: int) -> None:
        """Bookkeeping after a phase: offset, checkpoint, state file, evaluation. At every instant the
        state file on disk names a checkpoint that exists, so a kill anywhere resumes."""
        self.state["step_offset"] += steps
        self.logger.step_offset = self.state["step_offset"]
        self._release_memory(PHASES[self.state["phase"]])
        end_of_round = self.state["phase"] == len(PHASES) - 1
        r = self.state["round"]
        name = f"round_{r}" if end_of_round else "last"  # never the name the state holds now
        self.policy.save_pretrained(self.run_dir / "checkpoints" / name)
        self.state["checkpoint"] = name
        self.state.pop("started", None)
        if end_of_round:
            self.state.update(round=r + 1, phase=0, pending_eval=r)
        else:
            self.state["phase"] += 1
        self._write_state()
        if end_of_round and self.global_zero:  # checkpoints the state no longer names
            shutil.rmtree(self.run_dir / "checkpoints" / "last", ignore_errors=True)
            if not self.config.save_round_checkpoints:
                shutil.rmtree(self.run_dir / "checkpoints" / f"round_{r - 1}", ignore_errors=True)
        self._evaluate_pending()

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
        """Evaluate the round the state marks ``pending_eval`` (unless its row was written before a
        kill), then clear the mark."""
        if "pending_eval" not in self.state:
            return
        label = self.state["pending_eval"]
        if str(label) in self.val_rounds():
            log.info("val row of round %s already written: not evaluated again", label)
        else:
            self._evaluate(label)
        del self.state["pending_eval"]
        self._write_state()

    def val_rounds(self) -> list[str]:
        """The ``round`` column of ``val_table.csv`` (empty when there is none)."""
        path = self.run_dir / "val_table.csv"
        if not path.exists():
            return []
        with path.open(newline="") as f:
            return [row["round"] for row in csv.DictReader(f)]

    def _evaluate(self, round_: int | str) -> None:
        if not self.datamodule.has_split("val"):
            return
        results = self.evaluate("val", self.config.eval_max_questions)["all"]
        row = {"round": round_, "step": self.state["step_offset"], **{k: round(v, 4) for k, v in results.items()}}
        log.info("val after round %s: EM %.3f F1 %.3f searches %.2f tokens %.1f", round_, results["em"],
                 results["f1"], results["searches"], results["tokens"])
        self._append_row(row)  # the row first: a rerun finds it and does not log the scalars twice
        self.logger.log_metrics({f"val/{k}": v for k, v in results.items() if k != "n"}, step=0)
        self._flush_logs()

    @rank_zero_only
    def _flush_logs(self) -> None:
        self.logger.experiment.flush()

    @rank_zero_only
    def _append_row(self, row: dict[str, Any]) -> None:
        path = self.run_dir / "val_table.csv"
        new = not path.exists()
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
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
        self.state = json.loads(path.read_text())
        self._fresh = False
        self.logger.step_offset = self.state["step_offset"]
        if "checkpoint" not in self.state:  # killed before a phase finished: start from the initial weights
            log.info("resuming %s from the initial weights (no phase had finished)", self.run_dir)
            return
        if self.grpo.kl_coef > 0 and self.reference is None:
            # the reference is the policy as it entered round 1: the warm-up's, else the initial weights
            self.reference = self.policy.reference()
            if self.state.get("warmup") == "done":
                self.reference.load_weights(self.run_dir / "checkpoints" / "warmup")
        self.policy.load_weights(self.run_dir / "checkpoints" / self.state["checkpoint"])
        log.info("resuming %s at round %d, phase %s (step %d)", self.run_dir, self.state["round"],
                 PHASES[self.state["phase"]], self.state["step_offset"])
