"""Rank script for tests/test_optim.py: BF16StateAdamW on FSDP2 shards (gloo, 2 CPU processes)
against torch's AdamW on an unsharded copy. Writes the largest weight difference per step count."""

import json
import os
import sys

import torch
import torch.distributed as dist


def main(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
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
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"diffs": diffs}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.multiprocessing.spawn(main, args=(2, int(sys.argv[1]), sys.argv[2]), nprocs=2)
