"""Rank script for tests/test_distributed.py: search_e1.distributed's collectives and sharding helpers
on 2 CPU processes (gloo). Each rank writes what it saw to ``<out>.<rank>.json``."""

import json
import os
import sys

import torch
import torch.distributed as dist


def main(rank: int, world: int, out: str) -> None:
    store = os.path.join(os.path.dirname(out), "store")  # a file store: no TCPStore thread racing the exit
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    from torch.distributed.device_mesh import init_device_mesh
    from transformers import LlamaConfig, LlamaForCausalLM

    from search_e1.distributed import (
        any_rank,
        full_state_dict,
        is_distributed,
        is_sharded,
        max_over_ranks,
        rank_share,
        rank_world,
        shard_policy,
    )

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    unsharded = {k: v.clone() for k, v in model.state_dict().items()}
    shard_policy(model, init_device_mesh("cpu", (world,)))
    again = shard_policy(model, init_device_mesh("cpu", (world,)))  # idempotent: no second wrap
    full, everywhere = full_state_dict(model), full_state_dict(model, all_ranks=True)
    seen = {
        "rank_world": list(rank_world()),
        "is_distributed": is_distributed(),
        "share": rank_share(list(range(7))),
        "max": max_over_ranks(10 * rank + 3),
        "any_rank_1": any_rank(rank == 1),
        "any_none": any_rank(False),
        "sharded": is_sharded(model) and again is model,
        "full_keys": len(full),
        "full_equal": bool(full) and all(torch.equal(full[k], v) for k, v in unsharded.items()),
        "everywhere_equal": all(torch.equal(everywhere[k].cpu(), v) for k, v in unsharded.items()),
    }
    with open(f"{out}.{rank}.json", "w") as f:
        json.dump(seen, f)
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # skip C++ static teardown (gloo's, racing the peer's exit, can abort a rank)


if __name__ == "__main__":
    torch.multiprocessing.spawn(main, args=(2, sys.argv[1]), nprocs=2)
