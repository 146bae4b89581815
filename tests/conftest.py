"""Shared fixtures. Nothing here touches the network: models are built in-process or come from
the embedded packages installed by bin/setup.sh.

Retrieval fixtures: a small generated demo world (seed 0, size 100: ~157 passages, 200 questions),
a hashing test encoder (no model), a tiny random BERT with MiniLM's tokenizer (a real HF dir that
loads in a fraction of a second), and the embedded all-MiniLM-L6-v2 with the world indexed once
per session (use those only from tests marked ``@pytest.mark.slow``).

Run::

    OMP_NUM_THREADS=1 python -m pytest tests -q            # everything
    OMP_NUM_THREADS=1 python -m pytest tests -q -m "not slow"
"""

from __future__ import annotations

import json
import os
import re
import zlib
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


# ---------------------------------------------------------------- what is slow
SLOW_FIXTURES = frozenset({"embedded_policy", "minilm", "minilm_index_dir", "demo_retriever"})
"""Fixtures that load the embedded models or index a world with them: their tests are ``slow``."""


def pytest_collection_modifyitems(config, items):
    """Mark ``slow`` every test that uses a `SLOW_FIXTURES` fixture, so that ``-m "not slow"`` never
    loads an embedded model whatever a test file remembers to mark (engines, multi-process runs and
    CLI runs of real models are marked where they are written)."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


# ---------------------------------------------------------------- memory of the suite
def _rss_kb() -> tuple[int, int]:
    """(current, peak) RSS of this process in kB, from /proc (0, 0 where there is none)."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])
    except (OSError, KeyError, ValueError):
        return 0, 0


@pytest.fixture(autouse=True, scope="module")
def _no_engine_outlives_its_module():
    """A vLLM engine built by a test module is shut down when the module ends, and the heap's free
    pages go back to the OS: the next module does not carry the engine's weights and KV pages."""
    yield
    import sys

    if "search_e1.rollout.vllm_backend" in sys.modules:
        sys.modules["search_e1.rollout.vllm_backend"].shutdown_engines()
    from search_e1.memory import release_memory

    release_memory()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """With ``SEARCH_E1_TEST_RSS=FILE``, append each test's RSS after it ran and the peak so far (kB,
    this process; child processes have their own): where the suite's memory goes."""
    yield
    out = os.environ.get("SEARCH_E1_TEST_RSS")
    if out:
        rss, peak = _rss_kb()
        with open(out, "a") as f:
            f.write(f"{item.nodeid}\t{rss}\t{peak}\n")


# ---------------------------------------------------------------- policies
@pytest.fixture(scope="session")
def embedded_policy():
    """The embedded SmolLM2-135M-Instruct (converted once into the cache by bin/setup.sh)."""
    from search_e1 import Policy

    return Policy.from_pretrained("embedded").eval()


@pytest.fixture(scope="session")
def smol_tokenizer():
    """The embedded policy's tokenizer and chat template, without loading its weights."""
    from transformers import AutoTokenizer

    from search_e1.policy import embedded_model_dir

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    if tokenizer.pad_token_id is None:  # as `Policy` sets it
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_script(name: str):
    """A script of ``bin/`` (``name`` without ``.py``) imported as a module, for tests of its functions."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "bin" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_tiny_policy(tokenizer, seed: int = 0, layers: int = 2):
    """A random-init 2-layer Llama with the SmolLM2 tokenizer and chat template."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from search_e1 import Policy

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return Policy(LlamaForCausalLM(cfg).eval(), tokenizer, require_chat_template=True)


@pytest.fixture(scope="session")
def tiny_policy(smol_tokenizer):
    return make_tiny_policy(smol_tokenizer)


# ---------------------------------------------------------------- retrieval
WORLD_SEED = 0
WORLD_SIZE = 100  # ~157 passages, 200 questions: MiniLM indexes it in a few seconds


class HashEmbedder:
    """Bag-of-words hashing encoder (no model): equal texts give equal unit vectors."""

    def __init__(self, dim: int = 256) -> None:
        self._dim = dim

    @property
    def dim(self) -> int:
        return self._dim

    def encode(
        self, texts: list[str], kind: Literal["query", "passage"] = "query", progress: bool = False
    ) -> np.ndarray:
        out = np.zeros((len(texts), self._dim), dtype=np.float32)  # [N, D]
        for i, text in enumerate(texts):
            for tok in re.findall(r"\w+", text.lower()):
                out[i, zlib.crc32(tok.encode()) % self._dim] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)  # [N, 1]
        return out / np.maximum(norms, 1e-12)


@pytest.fixture(scope="session")
def world_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """corpus/train/val/test/world files of the seed-0, size-100 demo world."""
    from search_e1.demo_world import write_world

    return write_world(tmp_path_factory.mktemp("world"), seed=WORLD_SEED, size=WORLD_SIZE)


@pytest.fixture(scope="session")
def world_corpus(world_paths: dict[str, Path]):
    from search_e1.retrieval import load_corpus

    return load_corpus(world_paths["corpus"])


@pytest.fixture(scope="session")
def hash_embedder() -> HashEmbedder:
    return HashEmbedder()


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    from search_e1.retrieval.embedder import resolve_embedder_path

    try:
        return resolve_embedder_path("minilm")
    except FileNotFoundError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    """A 1-layer, 32-d random BERT with MiniLM's tokenizer: a real HF dir that loads in ~0.1 s."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = tmp_path_factory.mktemp("tiny_bert")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=512)
    BertModel(cfg).save_pretrained(out)
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def minilm(minilm_dir: Path):
    """The embedded all-MiniLM-L6-v2, loaded once."""
    from search_e1.retrieval import Embedder, EmbedderConfig

    return Embedder(EmbedderConfig(path="minilm"))


@pytest.fixture(scope="session")
def minilm_index_dir(tmp_path_factory: pytest.TempPathFactory, world_paths, world_corpus, minilm):
    """The demo world indexed with MiniLM (index.faiss + meta.json), built once."""
    from search_e1.retrieval import build_index

    return build_index(world_paths["corpus"], tmp_path_factory.mktemp("minilm_index"),
                       minilm.cfg, progress=False, embedder=minilm, corpus=world_corpus)


@pytest.fixture(scope="session")
def demo_retriever(minilm_index_dir: Path, world_corpus, minilm):
    """A DenseRetriever (MiniLM, Flat index) over the demo world."""
    from search_e1.retrieval import DenseRetriever

    return DenseRetriever.from_index_dir(minilm_index_dir, embedder=minilm, corpus=world_corpus)


@pytest.fixture(scope="session")
def demo_questions(world_paths: dict[str, Path]) -> list[dict]:
    """The demo world's val questions (FlashRAG dicts: id, question, golden_answers, metadata)."""
    with open(world_paths["val"], encoding="utf-8") as f:
        return [json.loads(line) for line in f]
