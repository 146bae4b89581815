"""A tiny Evolver run (warm-up, then 2 rounds of GRPO and OFSD) that kills itself at a named point.

    python tests/kill_run.py WORK_DIR [POINT]

The run lives in ``WORK_DIR/run``; the same WORK_DIR reruns the same run (same config, same
data). Before dying the process writes POINT to ``WORK_DIR/killed_at``, so a test knows that the
run got there. Without POINT the run goes to its end. Points:

- ``eval:<round>``: SIGKILL inside the val evaluation of that round (0, warmup, 1, ...), after the
  rollouts and before the row is written;
- ``<phase>-step``: SIGKILL in the second training step of that phase (warmup, grpo, ofsd);
- ``save:<name>``: SIGKILL while checkpoint <name> is being written (its ``.tmp`` half written);
- ``saved:<name>``: SIGKILL just after checkpoint <name> is in place, before anything else;
- ``term:<phase>-step``: SIGTERM instead of SIGKILL at that step (the CLI's `fit_stoppable` path).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)


def main(work: Path, point: str) -> None:
    from conftest import make_tiny_policy
    from scripted import EchoRetriever, scripted_factory, write_demonstrations, write_qa
    from transformers import AutoTokenizer

    from search_e1 import Evolver, RetrievalDataModule
    from search_e1.cli import fit_stoppable
    from search_e1.policy import Policy, embedded_model_dir
    from search_e1.rollout import RolloutConfig, SearchEnv
    from search_e1.rounds.base import OptimConfig
    from search_e1.rounds.evolver import EvolverConfig
    from search_e1.rounds.grpo import GRPOConfig, GRPOModule
    from search_e1.rounds.ofsd import OFSDConfig, OFSDModule
    from search_e1.rounds.warmup import WarmupConfig, WarmupModule

    sig = signal.SIGTERM if point.startswith("term:") else signal.SIGKILL
    point = point.removeprefix("term:")

    def die() -> None:
        (work / "killed_at").write_text(point)
        os.kill(os.getpid(), sig)

    for name, module in (("warmup", WarmupModule), ("grpo", GRPOModule), ("ofsd", OFSDModule)):
        def step(self, batch, batch_idx, _orig=module.training_step, _name=name):
            if batch_idx == 1 and point == f"{_name}-step":
                die()
            return _orig(self, batch, batch_idx)
        module.training_step = step

    import search_e1.rounds.evolver as evolver_module

    evaluating: list[str] = []
    evaluate_round, save_pretrained = Evolver._evaluate, Policy.save_pretrained
    evaluate_fn = evolver_module.evaluate_policy

    def _evaluate(self, round_):
        evaluating.append(str(round_))
        return evaluate_round(self, round_)

    def evaluate(*args, **kwargs):
        out = evaluate_fn(*args, **kwargs)
        if evaluating and point == f"eval:{evaluating[-1]}":
            die()
        return out

    def save(self, path):
        if point == f"save:{path.name}":
            tmp = path.with_name(path.name + ".tmp")
            tmp.mkdir(parents=True, exist_ok=True)
            (tmp / "model.safetensors").write_bytes(b"half")
            die()
        save_pretrained(self, path)
        if point == f"saved:{path.name}":
            die()

    Evolver._evaluate, Policy.save_pretrained = _evaluate, save
    evolver_module.evaluate_policy = evaluate

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    dm = RetrievalDataModule(train_files=write_qa(work / "train.jsonl", 6, "t"),
                             val_files=write_qa(work / "val.jsonl", 3, "v"), batch_size=2)
    dm.set_retriever(EchoRetriever())
    torch.manual_seed(0)

    def make() -> Evolver:
        return Evolver(
            make_tiny_policy(tokenizer), dm,
            grpo=GRPOConfig(group_size=4, optim=OptimConfig(lr=5e-3), micro_batch_size=4, kl_coef=0.01,
                            log_text_every=1),
            ofsd=OFSDConfig(group_size=4, num_questions=3, optim=OptimConfig(lr=5e-3), batch_size=2, micro_batch_size=1,
                            kl_eval_examples=2),
            env=SearchEnv(config=RolloutConfig(max_turns=2, max_new_tokens=12, passages_per_search=1),
                          generator_factory=scripted_factory),
            config=EvolverConfig(run_dir=str(work / "run"), rounds=2, grpo_steps=2, ofsd_steps=2,
                                 eval_batch_size=4),
            trainer={"accelerator": "cpu", "devices": 1, "enable_progress_bar": False,
                     "enable_model_summary": False},
            warmup=WarmupConfig(demonstrations=write_demonstrations(work / "demos.jsonl", 4, "t"), steps=2,
                                optim=OptimConfig(lr=5e-3), batch_size=2, micro_batch_size=1),
        )

    fit_stoppable(make, work / "run")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "")
