"""AdamW with its moments stored in bfloat16: half the optimiser memory, the same update rule.

torch's AdamW keeps two float32 moments per weight, twice the weights' own memory (1.08 GB on the
135M policy, the largest item of a CPU run's resident memory). `BF16StateAdamW` stores both moments
in bfloat16 and runs torch's own AdamW kernel (fused or multi-tensor) on float32 copies of the
moments of a piece of a parameter at a time (`CHUNK` elements: 2 x 16 MB of temporaries), so the
arithmetic of a step is torch's and only the stored moments are rounded. The rounding is stochastic
(`round_to_bf16`): round-to-nearest would freeze the second moment once its per-step change
``(1 - beta2) * (g^2 - v)`` falls under half a bfloat16 step (about 0.2% of ``v``: at
``beta2 = 0.999`` whenever ``g^2 < 3 v``, so ``v`` could never decay); stochastic rounding
keeps every stored moment an unbiased estimate of the float32 one. Megatron-LM's precision-aware
optimizer offers the same trade (``exp_avg_dtype`` / ``exp_avg_sq_dtype``).

`save_optimizer_state` / `load_optimizer_state` carry any optimiser's state (moments and step
counts, by parameter name) across a process or a round boundary with torch's distributed checkpoint,
so the same two calls serve one process and FSDP2 shards.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.optim.adam import adam

from search_e1.errors import UserInputError, first_line

STATE_DTYPES = ("float32", "bfloat16")
"""Names accepted for the optimiser's moment dtype (`OptimConfig.state_dtype`)."""

CHUNK = 1 << 22
"""Elements of a parameter stepped at once (the float32 moments' temporaries: 2 x 16 MB)."""


def round_to_bf16(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Stochastic rounding of float32 ``x`` to bfloat16: each value goes to the bfloat16 neighbour
    above it (in magnitude) with probability equal to how far along the step between its two
    neighbours it lies, else to the one below, so ``E[round_to_bf16(x)] = x``. Values that are
    exactly bfloat16 are kept as they are."""
    if x.dtype != torch.float32:
        raise TypeError(f"round_to_bf16 expects float32, got {x.dtype}")
    bits = torch.randint(0, 1 << 16, x.shape, dtype=torch.int32, device=x.device, generator=generator)
    bits.add_(x.view(torch.int32))  # sign-magnitude: adding to the low bits grows the magnitude either sign
    return bits.bitwise_and_(-65536).view(torch.float32).to(torch.bfloat16)  # truncation is then exact


def _local(t: Tensor) -> Tensor:
    """The local shard of a DTensor (FSDP2), the tensor itself otherwise; both alias the storage."""
    return t.to_local() if hasattr(t, "to_local") else t


class BF16StateAdamW(torch.optim.AdamW):
    """`torch.optim.AdamW` (decoupled weight decay) whose ``exp_avg`` and ``exp_avg_sq`` are bfloat16.

    Each step, per parameter and `CHUNK` elements at a time: the stored moments are widened to
    float32, torch's AdamW (``fused`` or multi-tensor, as given) updates the parameter and the
    float32 moments, and the moments are stored back with `round_to_bf16`. The first step is
    therefore exactly torch's; later steps differ only by the rounding of the stored moments. Under
    FSDP2 the step runs on each rank's shards.

    Args:
        params, lr, betas, eps, weight_decay, fused: as `torch.optim.AdamW` (no ``amsgrad``).
        seed: seed of the stochastic rounding's generator (one per device).
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, fused: bool | None = None, seed: int = 0) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused)
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("BF16StateAdamW does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32,
                                                device=p.device if group["fused"] else "cpu")
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.bfloat16, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.bfloat16, memory_format=torch.preserve_format)
                tensors = [_local(t) for t in (p, p.grad, state["exp_avg"], state["exp_avg_sq"])]
                if all(t.is_contiguous() for t in tensors):  # elementwise: a piece at a time is the same step
                    tensors = [t.view(-1) for t in tensors]
                    pieces = [[t[i : i + CHUNK] for t in tensors] for i in range(0, max(tensors[0].numel(), 1), CHUNK)]
                else:
                    pieces = [tensors]
                before = state["step"].clone()
                for param, grad, stored_m, stored_v in pieces:
                    count = before.clone()  # each piece's call counts the step once
                    m, v = stored_m.float(), stored_v.float()
                    adam([param], [grad], [m], [v], [], [count], fused=group["fused"], foreach=group["foreach"],
                         amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"],
                         eps=group["eps"], maximize=group["maximize"], decoupled_weight_decay=True)
                    gen = self._generator(m.device)
                    stored_m.copy_(round_to_bf16(m, gen))
                    stored_v.copy_(round_to_bf16(v, gen))
                state["step"].copy_(count)
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch casts every loaded floating state to its parameter's dtype; the moments go back to
        bfloat16 (a float32 state dict of `torch.optim.AdamW` loads too, rounded to nearest once)."""
        super().load_state_dict(state_dict)
        for state in self.state.values():
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key] = state[key].to(torch.bfloat16)



def save_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, path: str | Path) -> None:
    """Write the optimiser's per-parameter state (moments, step counts) keyed by parameter name into
    the directory ``path`` with torch's distributed checkpoint (`torch.distributed.checkpoint`):
    under FSDP2 every rank writes its own shards, in one process the whole state. The parameter
    groups' settings are not saved: they come from the config. `load_optimizer_state` reads it back."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    from search_e1.distributed import is_distributed

    names = {p: n for n, p in model.named_parameters()}
    state = {names[p]: dict(s) for p, s in optimizer.state.items() if p in names}
    try:
        with _single_process_notice_off():
            dcp.save({"optimizer": state}, checkpoint_id=str(path), no_dist=not is_distributed())
    except (OSError, CheckpointException) as err:  # a full disk shows as torch's "unexpected pos" inside the latter
        shutil.rmtree(path, ignore_errors=True)
        raise UserInputError(f"cannot write the optimiser state {path} ({write_failure(err)}; "
                             f"{shutil.disk_usage(Path(path).parent).free / 1e9:.1f} GB free there): the run keeps "
                             "its last finished phase: free space, then run the same command") from None


def write_failure(err: BaseException) -> str:
    """The first line of what failed inside a checkpoint write (`CheckpointException` wraps each
    rank's exception with its stack; its own first line names only the ranks)."""
    failures = getattr(err, "failures", None)
    if failures:
        err = next(iter(failures.values()))[0]
    return first_line(err)


def saved_optimizer_steps(path: str | Path) -> int:
    """The step count of a `save_optimizer_state` directory (one scalar read, not the moments)."""
    import torch.distributed.checkpoint as dcp

    from search_e1.distributed import is_distributed

    meta = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    key = next((k for k in meta if k.endswith(".step")), None)
    if key is None:
        return 0
    name = key.removeprefix("optimizer.").removesuffix(".step")
    item = meta[key]
    template = {"optimizer": {name: {"step": torch.zeros(tuple(item.size), dtype=item.properties.dtype)}}}
    with _single_process_notice_off():
        dcp.load(template, checkpoint_id=str(path), no_dist=not is_distributed())
    return int(template["optimizer"][name]["step"])


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, path: str | Path) -> None:
    """Restore `save_optimizer_state`'s directory into ``optimizer`` (built over ``model``'s
    parameters, before its first step), resharded when the number of ranks changed. Each state
    tensor is allocated once, as the optimiser would (a parameter-shaped moment like its parameter,
    sharded alike; a step count on the parameter's device for fused kernels, else on the CPU), and
    read in place, so loading costs no more memory than the state itself."""
    import torch.distributed.checkpoint as dcp

    from search_e1.distributed import is_distributed

    meta = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    template: dict[str, dict[str, Tensor]] = {}
    params = {n: p for n, p in model.named_parameters()}
    owner = {p: g for g in optimizer.param_groups for p in g["params"]}
    for key, item in meta.items():
        name, _, field = key.removeprefix("optimizer.").rpartition(".")
        p = params.get(name)
        if p is None or p not in owner or not hasattr(item, "size"):
            continue
        dtype, size = item.properties.dtype, tuple(item.size)
        if size == tuple(p.shape):
            value = torch.zeros_like(p, dtype=dtype)
        else:
            on_device = owner[p].get("fused") or owner[p].get("capturable")
            value = torch.zeros(size, dtype=dtype, device=p.device if on_device else "cpu")
        template.setdefault(name, {})[field] = value
    missing = [n for n, p in params.items() if p in owner and n not in template]
    if missing:
        raise ValueError(f"optimiser state {path} holds no state for {len(missing)} parameter(s) "
                         f"(first: {missing[0]}): it belongs to another model")
    with _single_process_notice_off():
        dcp.load({"optimizer": template}, checkpoint_id=str(path), no_dist=not is_distributed())
    for name, state in template.items():
        optimizer.state[params[name]] = state


@contextmanager
def _single_process_notice_off() -> Iterator[None]:
    """torch's checkpoint warns on every single-process save and load that it assumes one process,
    which is what we asked for (``no_dist``): nothing to act on, so it stays off the console."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield
