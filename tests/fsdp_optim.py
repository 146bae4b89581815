"""Rank script for tests/test_optim.py: BF16StateAdamW on FSDP2 shards (gloo, 2 CPU processes)
against torch's AdamW on an unsharded copy. Writes the largest weight difference per step count,
and whether the sharded state survives save_optimizer_state / load_optimizer_state exactly."""

import json
import os
import sys

import torch
import torch.distributed as dist


def main(rank: int, world: int, out: str) -> None:
    # a file store, not TCP: rank 0 would host a TCPStore thread whose teardown at exit, racing the
    # peer's, aborted the process now and then ("terminate called without an active exception")
    store = os.path.join(os.path.dirname(out), "store")
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    from search_e1.optim import BF16StateAdamW

    torch.manual_seed(0)
    make = lambda: torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))  # noqa: E731
    ref, sharded = make(), make()
    sharded.load_state_dict(ref.state_dict())
    mesh = init_device_mesh("cpu", (world,))
    for layer in (sharded[0], sharded[2]):
        fully_shard(layer, mesh=mesh)
    fully_shard(sharded, mesh=mesh)
    assert all(isinstance(p, DTensor) for p in sharded.parameters())
    opt_ref = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.1, fused=True)
    opt = BF16StateAdamW(sharded.parameters(), lr=1e-2, weight_decay=0.1, fused=True)
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    y = x[:, :2].sum(1, keepdim=True)
    diffs = []
    for _ in range(5):
        for net, o in ((ref, opt_ref), (sharded, opt)):
            o.zero_grad(set_to_none=True)
            torch.nn.functional.mse_loss(net(x), y).backward()  # same data on both ranks: the mean is the full batch's
            o.step()
        full = {k: v.full_tensor() for k, v in sharded.state_dict().items()}
        diffs.append(max((full[k] - v).abs().max().item() for k, v in ref.state_dict().items()))
    state = next(iter(opt.state.values()))
    assert isinstance(state["exp_avg"], DTensor) and state["exp_avg"].dtype == torch.bfloat16

    # the state crosses a save/load (each rank its shards): a fresh optimiser resumes bit for bit
    from search_e1.optim import load_optimizer_state, save_optimizer_state, saved_optimizer_steps

    ckpt = os.path.join(os.path.dirname(out), "optim_state")
    save_optimizer_state(sharded, opt, ckpt)
    resumed = BF16StateAdamW(sharded.parameters(), lr=1e-2, weight_decay=0.1, fused=True)
    load_optimizer_state(sharded, resumed, ckpt)
    restored = all(torch.equal(resumed.state[p][k].to_local(), opt.state[p][k].to_local())
                   for p in sharded.parameters() for k in ("exp_avg", "exp_avg_sq"))
    restored = restored and all(torch.equal(resumed.state[p]["step"],
                                            opt.state[p]["step"]) for p in sharded.parameters())
    steps = saved_optimizer_steps(ckpt)
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"diffs": diffs, "restored": restored, "saved_steps": steps}, f)
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # skip C++ static teardown: gloo's, racing the peer's exit, aborted rank 0 now and then


if __name__ == "__main__":
    torch.multiprocessing.spawn(main, args=(2, sys.argv[1]), nprocs=2)
