"""faiss indexes: any ``index_factory`` kind, built from a corpus in resumable shards, loaded with
memory-mapping, search-time knobs (nprobe, efSearch) and optionally fp16 sharding over GPUs.

`IndexConfig` names the kind (``"Flat"``, ``"IVF4096,Flat"``, ``"IVF4096,PQ64"``, ``"SQ8"``,
``"HNSW32"``, ``"OPQ64,IVF4096,PQ64"``, ...). `build_index` writes an index directory::

    index.faiss                  the index; row i = corpus row i
    meta.json                    corpus, passage count, dim, embedder settings, IndexConfig;
                                 written last, so an interrupted build never looks complete
    shards/manifest.json         the settings the shards were encoded with (checked on resume)
    shards/shard_00000.npy ...   [n, D] passage vectors of rows k*shard_size ... (shard_dtype);
                                 the shards go once the index is written, unless keep_shards

Passages are encoded shard by shard, each shard written to a temporary name and renamed, so a
killed build resumes at the first missing shard and ends with the same index as an
uninterrupted one (the training sample is seeded). Then the index is trained (trained kinds)
on ``train_sample`` vectors drawn from the shards and every shard is added.

`open_index` loads any faiss file, with meta.json or without (Search-R1's ``e5_Flat.index``):
``IndexConfig.mmap`` maps it (``IO_FLAG_MMAP | IO_FLAG_READ_ONLY``) instead of reading it,
nprobe / efSearch are set where the kind has them, and ``gpu`` clones it onto every visible GPU
(``index_cpu_to_all_gpus``, ``shard`` and ``useFloat16`` from the config). The GPU path needs
faiss-gpu and CUDA and is not exercised by the tests (they run on faiss-cpu).

How it departs from Search-R1: its ``index_builder.py`` holds every vector in memory, trains on
all of them, cannot resume and records no encoder settings; here vectors stream through shards on
disk, training uses a seeded sample, and meta.json carries the encoder settings. Building runs
on CPU (the encoder may use a GPU); GPUs serve search only.

Run::

    from search_e1.retrieval import EmbedderConfig, IndexConfig, build_index
    build_index("demo/world/corpus.jsonl", "demo/world/index_hnsw", EmbedderConfig(),
                index=IndexConfig(factory="HNSW32"))
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from search_e1.errors import UserInputError
from search_e1.progress import progress_bar
from search_e1.retrieval.corpus import PassageSource
from search_e1.retrieval.embedder import Embedder, EmbedderConfig, TextEncoder

if TYPE_CHECKING:  # pragma: no cover
    import faiss

__all__ = ["INDEX_FILE", "META_FILE", "IndexConfig", "IndexConfigError", "IndexMismatchError",
           "apply_search_params", "build_flat_index", "build_index", "encode_shards",
           "import_faiss", "index_to_gpus", "load_index", "new_index", "open_index", "read_meta",
           "save_index", "train_and_add"]

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
META_FILE = "meta.json"
SHARDS_DIR = "shards"
MANIFEST = "manifest.json"
_CHUNK = 4096  # passages per encoder call / vectors per index.add
_SHARD_DTYPES = ("float32", "float16")
# EmbedderConfig fields that change the vectors (a resumed build must not mix them)
VECTOR_FIELDS = ("pooling", "query_prefix", "passage_prefix", "normalize", "passage_format",
                 "max_length", "dtype")


class IndexConfigError(UserInputError):
    """An `IndexConfig` value is invalid or unusable here (the message names the field)."""


class IndexFileError(UserInputError):
    """An index file or its ``meta.json`` that cannot be read (damaged, truncated, another format)."""


_REBUILD = "rebuild the index: search-e1 index --corpus <corpus.jsonl> --out "
"""How an `IndexFileError` message ends (then the index directory)."""


class IndexMismatchError(UserInputError):
    """An index does not belong to this corpus, encoder or set of shards."""


@dataclass
class IndexConfig:
    """Which faiss index to build, and how to load and search it."""

    factory: str = "Flat"
    """faiss index_factory string: Flat (exact), IVF4096,Flat, IVF4096,PQ64, SQ8, HNSW32, ..."""
    metric: Literal["inner_product", "l2"] = "inner_product"
    """Similarity: inner_product (cosine for normalised vectors, as Search-R1) or l2."""
    train_sample: int = 262_144
    """Vectors sampled (seeded) to train IVF/PQ/SQ/OPQ kinds; faiss wants >= 39 per IVF list."""
    train_seed: int = 0
    """Seed of the training sample (the same seed gives the same index)."""
    nprobe: int = 64
    """IVF lists visited per query at search time (more: better recall, slower)."""
    ef_search: int = 128
    """HNSW candidate list size at search time (more: better recall, slower)."""
    mmap: bool = False
    """Memory-map the index file instead of reading it (a 62 GB Flat index starts at once)."""
    gpu: bool = False
    """Search on every visible GPU (needs faiss-gpu + CUDA); kinds faiss can't clone stay on CPU."""
    gpu_fp16: bool = True
    """Store vectors / lookup tables in float16 on the GPUs (halves their memory)."""
    gpu_shard: bool = True
    """Split the index across the GPUs (True) instead of a full copy on each (False)."""
    shard_size: int = 65_536
    """Passages per encoded shard file while building (the unit of resumption)."""
    shard_dtype: Literal["float32", "float16"] = "float32"
    """dtype of the shard files (float16 halves disk; the index gets the rounded vectors)."""
    keep_shards: bool = False
    """Keep the shard files after a build (as big as a Flat index; lets another kind be built
    from them without encoding again)."""

    def __post_init__(self) -> None:
        if not isinstance(self.factory, str) or not self.factory.strip():
            raise IndexConfigError("IndexConfig.factory must be a faiss index_factory string, "
                                   f"e.g. 'Flat' or 'IVF4096,PQ64', got {self.factory!r}")
        if self.metric not in ("inner_product", "l2"):
            raise IndexConfigError(
                f"IndexConfig.metric must be 'inner_product' or 'l2', got {self.metric!r}")
        for name in ("train_sample", "nprobe", "ef_search", "shard_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise IndexConfigError(f"IndexConfig.{name} must be an int > 0, got {value!r}")
        if self.shard_dtype not in _SHARD_DTYPES:
            raise IndexConfigError(f"IndexConfig.shard_dtype must be one of {_SHARD_DTYPES}, "
                                   f"got {self.shard_dtype!r}")


def import_faiss() -> Any:
    """Import faiss, or say which extra installs it."""
    try:
        import faiss
    except ImportError as err:
        raise ImportError(
            "faiss is not installed: pip install 'search-e1[cpu]' (faiss-cpu), "
            "or 'search-e1[gpu]' (faiss-gpu) on CUDA machines"
        ) from err
    return faiss


def _as_matrix(embeddings: np.ndarray) -> np.ndarray:
    if embeddings.ndim != 2 or embeddings.shape[1] == 0:
        raise ValueError(f"embeddings must be [N, D] with D > 0, got shape {embeddings.shape}")
    return np.ascontiguousarray(embeddings, dtype=np.float32)


# ---------------------------------------------------------------- making, saving, loading
def new_index(dim: int, cfg: IndexConfig) -> faiss.Index:
    """An empty index of kind ``cfg.factory`` for ``dim``-d vectors (untrained if it trains)."""
    faiss = import_faiss()
    metric = faiss.METRIC_INNER_PRODUCT if cfg.metric == "inner_product" else faiss.METRIC_L2
    try:
        return faiss.index_factory(int(dim), cfg.factory, metric)
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise IndexConfigError(f"IndexConfig.factory {cfg.factory!r} is not a faiss index for "
                               f"{dim}-d vectors: {reason}") from None


def build_flat_index(embeddings: np.ndarray) -> faiss.Index:
    """An exact inner-product index (``IndexFlatIP``) over ``embeddings`` ``[N, D]``."""
    faiss = import_faiss()
    x = _as_matrix(embeddings)  # [N, D]
    index = faiss.IndexFlatIP(x.shape[1])
    if len(x):
        index.add(x)
    return index


def save_index(index: faiss.Index, path: str | Path) -> Path:
    """Write ``index`` to ``path`` (parents created; via a temporary file, then renamed)."""
    faiss = import_faiss()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    faiss.write_index(index, str(tmp))
    os.replace(tmp, path)
    return path


def load_index(path: str | Path, mmap: bool = False) -> faiss.Index:
    """Read an index file (or ``dir/index.faiss``); ``mmap=True`` maps it instead of reading it."""
    faiss = import_faiss()
    path = Path(path)
    if path.is_dir():
        path = path / INDEX_FILE
    if not path.is_file():
        raise FileNotFoundError(f"faiss index not found: {path} (build it with build_index)")
    flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
    try:
        return faiss.read_index(str(path), flags)
    except RuntimeError as err:  # faiss's C++ exception: the file is truncated or not an index
        reason = str(err).strip().splitlines()[-1][:120] if str(err).strip() else "unreadable"
        raise IndexFileError(f"{path} is damaged or not a faiss index ({reason}); {_REBUILD}{path.parent}") from None


def apply_search_params(index: faiss.Index, cfg: IndexConfig) -> list[str]:
    """Set nprobe / efSearch wherever the index (or its quantizer, or its GPU shards) has them.

    Returns the names that applied (none for Flat or SQ8).
    """
    faiss = import_faiss()
    # GpuParameterSpace also reaches into GPU clones and shards; it falls back to CPU behaviour
    space = faiss.GpuParameterSpace() if hasattr(faiss, "GpuParameterSpace") else \
        faiss.ParameterSpace()
    applied = []
    for name, value in (("nprobe", cfg.nprobe), ("efSearch", cfg.ef_search)):
        try:
            space.set_index_parameter(index, name, value)
        except RuntimeError:  # this kind has no such knob
            continue
        applied.append(name)
    return applied


def index_to_gpus(index: faiss.Index, cfg: IndexConfig) -> faiss.Index:
    """Clone ``index`` onto every visible GPU (sharded and fp16 as configured).

    Needs faiss-gpu and CUDA (untested here: the tests run on faiss-cpu). Kinds faiss cannot put
    on GPUs (HNSW, ...) stay on CPU with a warning.
    """
    faiss = import_faiss()
    if not hasattr(faiss, "StandardGpuResources"):
        raise IndexConfigError("IndexConfig.gpu is true but this faiss has no GPU support "
                               "(faiss-cpu): install faiss-gpu, or set gpu: false")
    ngpu = faiss.get_num_gpus()
    if ngpu < 1:
        raise IndexConfigError("IndexConfig.gpu is true but faiss sees no CUDA GPU "
                               "(check CUDA_VISIBLE_DEVICES), or set gpu: false")
    options = faiss.GpuMultipleClonerOptions()
    options.shard = cfg.gpu_shard
    options.useFloat16 = cfg.gpu_fp16
    try:
        gpu_index = faiss.index_cpu_to_all_gpus(index, co=options, ngpu=ngpu)
    except (RuntimeError, AttributeError) as err:
        log.warning("faiss cannot put a %s index on GPUs (%s): searching on CPU",
                    type(index).__name__, err)
        return index
    log.info("index on %d GPU(s) (shard=%s, fp16=%s)", ngpu, cfg.gpu_shard, cfg.gpu_fp16)
    return gpu_index


def open_index(path: str | Path, cfg: IndexConfig | None = None) -> faiss.Index:
    """Load an index file for searching: mmap, nprobe / efSearch and GPUs from ``cfg``."""
    cfg = cfg or IndexConfig()
    index = load_index(path, mmap=cfg.mmap)
    apply_search_params(index, cfg)
    if cfg.gpu:
        index = index_to_gpus(index, cfg)
        apply_search_params(index, cfg)
    return index


def read_meta(index_dir: str | Path) -> dict[str, Any]:
    """The ``meta.json`` of an index directory (FileNotFoundError naming it when absent,
    `IndexFileError` when it is not a JSON object)."""
    path = Path(index_dir) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"index metadata not found: {path} (build it with build_index)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise IndexFileError(f"{path} is damaged ({err}); {_REBUILD}{path.parent}") from None
    if not isinstance(meta, dict):
        raise IndexFileError(f"{path} is damaged (not a JSON object); {_REBUILD}{path.parent}")
    return meta


# ---------------------------------------------------------------- building
def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _write_npy(path: Path, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` atomically: a temporary file, fsync, rename."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _shard_bounds(n: int, shard_size: int) -> list[tuple[int, int]]:
    return [(a, min(a + shard_size, n)) for a in range(0, n, shard_size)]


def _check_manifest(shards_dir: Path, manifest: dict[str, Any]) -> None:
    """Refuse shards encoded with other settings; write the manifest of a fresh directory."""
    path = shards_dir / MANIFEST
    if not path.is_file():
        shards_dir.mkdir(parents=True, exist_ok=True)
        _write_json(path, manifest)
        return
    old = json.loads(path.read_text(encoding="utf-8"))
    if old.get("embedder", {}).get("path") != manifest["embedder"]["path"]:
        log.warning("shards in %s were encoded with embedder %s, now %s", shards_dir,
                    old.get("embedder", {}).get("path"), manifest["embedder"]["path"])
    flat_old = {**{k: v for k, v in old.items() if k != "embedder"}, **old.get("embedder", {})}
    flat_new = {**{k: v for k, v in manifest.items() if k != "embedder"}, **manifest["embedder"]}
    bad = [f"{k}={flat_new[k]!r} (shards: {flat_old.get(k)!r})" for k in flat_new
           if k != "path" and flat_old.get(k) != flat_new[k]]
    if bad:
        raise IndexMismatchError(f"{path}: the shards there were encoded with other settings: "
                                 f"{', '.join(bad)}; use the same settings to resume, or delete "
                                 f"{shards_dir} to encode again")


def _shard_done(path: Path, rows: int, dtype: str) -> bool:
    if not path.is_file():
        return False
    arr = np.load(path, mmap_mode="r")
    if arr.ndim != 2 or arr.shape[0] != rows or arr.dtype != np.dtype(dtype):
        raise IndexMismatchError(f"{path} holds {arr.shape} {arr.dtype}, expected {rows} rows "
                                 f"of {dtype}: delete it to encode that shard again")
    return True


def encode_shards(
    source: PassageSource,
    encoder: Callable[[], TextEncoder],
    shards_dir: str | Path,
    embedder_cfg: EmbedderConfig,
    cfg: IndexConfig,
    progress: bool = True,
) -> list[Path]:
    """Encode every passage of ``source`` into ``shards_dir/shard_XXXXX.npy``, skipping shards
    already there; returns the shard paths in row order.

    ``encoder()`` is called only when some shard is missing (a finished encoding loads no model).
    """
    shards_dir = Path(shards_dir)
    n = len(source)
    settings = {k: getattr(embedder_cfg, k) for k in ("path", *VECTOR_FIELDS)}
    _check_manifest(shards_dir, {"num_passages": n, "shard_size": cfg.shard_size,
                                 "shard_dtype": cfg.shard_dtype, "embedder": settings})
    bounds = _shard_bounds(n, cfg.shard_size)
    paths = [shards_dir / f"shard_{k:05d}.npy" for k in range(len(bounds))]
    todo = [k for k, (a, b) in enumerate(bounds) if not _shard_done(paths[k], b - a,
                                                                    cfg.shard_dtype)]
    if not todo:
        return paths
    done = n - sum(bounds[k][1] - bounds[k][0] for k in todo)
    if done:
        log.info("resuming: %d of %d shards already encoded in %s", len(bounds) - len(todo),
                 len(bounds), shards_dir)
    enc = encoder()
    with progress_bar(n, "encoding passages", progress, completed=done) as advance:
        for k in todo:
            a, b = bounds[k]
            parts = []
            for start in range(a, b, _CHUNK):
                stop = min(start + _CHUNK, b)
                texts = source.texts_for_embedding(start, stop, embedder_cfg.passage_format)
                vectors = _as_matrix(enc.encode(texts, "passage"))  # [stop - start, D]
                if len(vectors) != stop - start:
                    raise ValueError(f"the encoder returned {len(vectors)} vectors for "
                                     f"{stop - start} passages")
                parts.append(vectors.astype(cfg.shard_dtype))
                advance(stop - start)
            _write_npy(paths[k], np.concatenate(parts))  # [b - a, D]
    return paths


def _training_sample(shards: list[np.ndarray], cfg: IndexConfig) -> np.ndarray:
    """``min(train_sample, N)`` vectors drawn without replacement (seeded), in row order."""
    sizes = np.array([len(s) for s in shards], dtype=np.int64)  # [S]
    starts = np.concatenate([[0], np.cumsum(sizes)])  # [S+1]
    n = int(starts[-1])
    k = min(cfg.train_sample, n)
    rows = np.sort(np.random.default_rng(cfg.train_seed).choice(n, size=k, replace=False))  # [k]
    which = np.searchsorted(starts, rows, side="right") - 1  # [k] shard of each row
    parts = [np.asarray(shards[s][rows[which == s] - starts[s]], dtype=np.float32)
             for s in np.unique(which).tolist()]
    return np.ascontiguousarray(np.concatenate(parts))  # [k, D]


def train_and_add(
    shards: list[Path], dim: int, cfg: IndexConfig, progress: bool = True
) -> faiss.Index:
    """A ``cfg.factory`` index trained on a sample of the shard vectors, holding all of them."""
    arrays = [np.load(p, mmap_mode="r") for p in shards]  # each [n_k, D]
    for path, arr in zip(shards, arrays, strict=True):
        if arr.shape[1] != dim:
            raise IndexMismatchError(f"{path} holds {arr.shape[1]}-d vectors, expected {dim}")
    index = new_index(dim, cfg)
    n = sum(len(a) for a in arrays)
    if not index.is_trained and n:
        sample = _training_sample(arrays, cfg)
        if cfg.factory.upper().startswith("OPQ") and len(sample) < dim:
            # faiss aborts the whole process (not an exception) when an OPQ matrix trains on fewer
            # vectors than dimensions
            raise IndexConfigError(f"IndexConfig.factory {cfg.factory!r}: OPQ needs at least {dim} training "
                                   f"vectors, the corpus gives {len(sample)}; use a factory without OPQ")
        log.info("training %s on %d vectors", cfg.factory, len(sample))
        try:
            index.train(sample)
        except RuntimeError as err:
            raise IndexConfigError(
                f"IndexConfig.factory {cfg.factory!r}: training on {len(sample)} vectors failed "
                f"({str(err).strip().splitlines()[-1]}); raise IndexConfig.train_sample or use "
                "fewer IVF lists / PQ centroids") from None
    with progress_bar(n, "adding vectors", progress, unit="vectors") as advance:
        for arr in arrays:
            for start in range(0, len(arr), _CHUNK):
                chunk = np.ascontiguousarray(arr[start : start + _CHUNK], dtype=np.float32)
                index.add(chunk)  # [<=_CHUNK, D]
                advance(len(chunk))
    return index


def _open_source(corpus_path: str | Path, progress: bool) -> PassageSource:
    from search_e1.retrieval.store import open_corpus_store

    return open_corpus_store(corpus_path, progress=progress)


def build_index(
    corpus_path: str | Path,
    out_dir: str | Path,
    embedder_cfg: EmbedderConfig | None = None,
    progress: bool = True,
    *,
    embedder: TextEncoder | None = None,
    corpus: PassageSource | None = None,
    index: IndexConfig | None = None,
) -> Path:
    """Encode every passage of ``corpus_path`` and write ``out_dir/index.faiss`` + ``meta.json``.

    ``index`` picks the kind and the build knobs (shard size and dtype, training sample); the
    encoder's batch size and dtype are ``embedder_cfg.batch_size`` / ``.dtype``. A killed run
    called again resumes from the shards in ``out_dir/shards``. ``embedder`` (an already loaded
    encoder matching ``embedder_cfg``) and ``corpus`` (``corpus_path`` as a `CorpusStore` or
    `Corpus`) only save loading them; by default the corpus is the memory-mapped store beside
    the jsonl (converted on first use). Returns ``out_dir``.
    """
    cfg = embedder_cfg or EmbedderConfig()
    icfg = index or IndexConfig()
    source = corpus if corpus is not None else _open_source(corpus_path, progress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / META_FILE).unlink(missing_ok=True)  # an interrupted rebuild must not look complete
    start = time.perf_counter()

    def make_encoder() -> TextEncoder:  # loads the model only when something is left to encode
        return embedder if embedder is not None else Embedder(cfg)

    shards = encode_shards(source, make_encoder, out / SHARDS_DIR, cfg, icfg, progress)
    encoded = time.perf_counter()
    dim = np.load(shards[0], mmap_mode="r").shape[1] if shards else make_encoder().dim
    save_index(train_and_add(shards, dim, icfg, progress), out / INDEX_FILE)
    seconds = time.perf_counter() - start
    _write_json(out / META_FILE, {
        "corpus": str(Path(corpus_path).resolve()), "num_passages": len(source),
        "corpus_hash": getattr(source, "content_hash", None), "dim": int(dim),
        "embedder": dataclasses.asdict(cfg), "index": icfg.factory, "metric": icfg.metric,
        "index_config": dataclasses.asdict(icfg), "build_seconds": round(seconds, 3),
        "encode_seconds": round(encoded - start, 3),
    })
    if not icfg.keep_shards:
        shutil.rmtree(out / SHARDS_DIR, ignore_errors=True)
    log.info("indexed %d passages (%s, %d shards) in %.1f s into %s", len(source), icfg.factory,
             math.ceil(len(source) / icfg.shard_size), seconds, out)
    return out
