"""Run by test_evolver.py in a subprocess: a 1-round evolution of a tiny model with FSDP2 on 2 CPU
processes (gloo). Lightning's launcher re-runs this script for rank 1; both ranks then write their
full (all-gathered) parameters to OUT/params_rank<r>.pt. With ``warmup`` a 2-step warm-up runs first.
With ``nodes`` the script is one process of one of two nodes, launched by torchrun (``--nnodes 2
--nproc-per-node 1``), as a multi-node job is: ``trainer.num_nodes 2, devices 1``, two rounds (the
optimisers' sharded states are saved after round 1 and restored in round 2).

    python tests/fsdp_evolve.py OUT [warmup]
    torchrun --nnodes 2 --nproc-per-node 1 --node-rank R --master-addr 127.0.0.1 --master-port P \
        tests/fsdp_evolve.py OUT nodes
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main(out: Path, warmup: bool = False, nodes: bool = False) -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    from conftest import make_tiny_policy
    from scripted import EchoRetriever, scripted_factory, write_demonstrations, write_qa
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from transformers import AutoTokenizer

    from search_e1 import Evolver, RetrievalDataModule
    from search_e1.policy import embedded_model_dir
    from search_e1.rollout import RolloutConfig, SearchEnv
    from search_e1.rounds.base import OptimConfig
    from search_e1.rounds.evolver import EvolverConfig
    from search_e1.rounds.grpo import GRPOConfig
    from search_e1.rounds.ofsd import OFSDConfig
    from search_e1.rounds.warmup import WarmupConfig

    torch.manual_seed(0)
    out.mkdir(parents=True, exist_ok=True)
    dm = RetrievalDataModule(train_files=write_qa(out / "train.jsonl", 8, "t"),
                             val_files=write_qa(out / "val.jsonl", 3, "v"), batch_size=2)
    dm.set_retriever(EchoRetriever())
    policy = make_tiny_policy(AutoTokenizer.from_pretrained(embedded_model_dir()))
    initial = {k: v.detach().clone() for k, v in policy.model.state_dict().items()}
    evolver = Evolver(
        policy, dm,
        grpo=GRPOConfig(group_size=4, optim=OptimConfig(lr=5e-3), micro_batch_size=2, kl_coef=0.01),
        ofsd=OFSDConfig(group_size=4, num_questions=3, optim=OptimConfig(lr=5e-3), batch_size=2, micro_batch_size=1,
                        kl_eval_examples=2),
        env=SearchEnv(config=RolloutConfig(max_turns=2, max_new_tokens=12, passages_per_search=1,
                                           generation_batch_size=3), generator_factory=scripted_factory),
        config=EvolverConfig(run_dir=str(out / "run"), rounds=2 if nodes else 1, grpo_steps=2, ofsd_steps=2,
                             eval_batch_size=2),
        trainer={"accelerator": "cpu", "devices": 1 if nodes else 2, "num_nodes": 2 if nodes else 1, "strategy": "fsdp",
                 "enable_progress_bar": False, "enable_model_summary": False},
        warmup=WarmupConfig(demonstrations=write_demonstrations(out / "demos.jsonl", 4, "t"), steps=2,
                            optim=OptimConfig(lr=5e-3),
                            batch_size=2, micro_batch_size=1) if warmup else None,
    )
    state = evolver.fit()
    full = get_model_state_dict(policy.model, options=StateDictOptions(full_state_dict=True))
    rank = torch.distributed.get_rank()
    changed = max((full[k].float() - initial[k].float()).abs().max().item() for k in full)
    torch.save({"params": full, "state": state, "changed": changed}, out / f"params_rank{rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), warmup=sys.argv[2:] == ["warmup"], nodes=sys.argv[2:] == ["nodes"])
