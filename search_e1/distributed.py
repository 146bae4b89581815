"""FSDP2 sharding of the shared policy and the few collectives the rollout needs.

``strategy: fsdp`` in the config becomes Lightning's `ModelParallelStrategy` with every process
on the data-parallel axis; each LightningModule's ``configure_model`` calls `shard_policy`,
which wraps each decoder layer and then the root model with ``fully_shard`` exactly once (the
policy is shared by every round's module, so later calls find it sharded and return).

Multi-turn rollouts must run the same number of generation forward passes on every rank or
the all-gathers inside FSDP deadlock: `any_rank` and `max_over_ranks` let the engine agree on
"someone is still generating" and on the number of generate calls per turn.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)
T = TypeVar("T")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` when torch.distributed is not running."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_share(items: Sequence[T]) -> list[T]:
    """This rank's share of ``items``: every ``world``-th item from position ``rank`` (all of them when
    not distributed). The ranks' shares are disjoint and cover ``items``; sizes differ by at most one."""
    rank, world = rank_world()
    return list(items[rank::world])


def max_over_ranks(value: int) -> int:
    """The maximum of an integer over all ranks (identity when not distributed)."""
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.long, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def any_rank(flag: bool) -> bool:
    return max_over_ranks(int(flag)) > 0


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of an HF causal LM (``model.model.layers`` or ``transformer.h``)."""
    base = getattr(model, "model", None) or getattr(model, "transformer", None)
    for name in ("layers", "h", "blocks"):
        layers = getattr(base, name, None)
        if isinstance(layers, nn.ModuleList):
            return list(layers)
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__} to shard")


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def shard_policy(model: nn.Module, mesh: Any, bf16: bool = False) -> nn.Module:
    """Apply FSDP2 to each decoder layer and to the root, once (idempotent)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if is_sharded(model):
        return model
    kwargs: dict[str, Any] = {"mesh": mesh}
    if bf16:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in decoder_layers(model):
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    log.info("policy sharded with FSDP2 over %d ranks", mesh.size())
    return model


def full_state_dict(model: nn.Module, all_ranks: bool = False) -> dict[str, torch.Tensor]:
    """A full state dict of a possibly sharded model: on CPU and complete on rank 0 only (empty
    elsewhere), or, with ``all_ranks``, complete on every rank and on the model's device (what a
    colocated rollout engine per rank needs)."""
    if not is_sharded(model):
        return {k: v.detach() if all_ranks else v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=not all_ranks)
    return get_model_state_dict(model, options=options)
