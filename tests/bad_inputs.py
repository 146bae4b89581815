"""A battery of bad inputs, each run through the real CLI in a subprocess and classified.

Every case is a command line (and the damaged files it needs, made in a scratch directory) with
what a user must get: ``refuse`` (exit status 2 and one line naming the key, file or line: the
listed fragments, case-insensitive) or ``warn`` (the run goes on, and the listed fragments are
logged). The outcome is classified as

* ``clear``: refused with exit 2, no traceback, every fragment named, at most 3 error lines;
* ``handled``: a ``warn`` case whose warning was logged (exit status as the case expects);
* ``vague``: refused without a traceback, but a fragment is missing or the message is long;
* ``traceback``: a Python traceback reached the user;
* ``silent wrong``: exit 0 where a refusal or a warning was owed.

Run it against any checkout (counts per class, then the cases that are not clear or handled)::

    python tests/bad_inputs.py [--pythonpath DIR] [--only NAME,...]

`tests/test_bad_inputs.py` runs every case as a test (the ones that load a model are ``slow``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Case:
    """One bad input: ``argv`` after ``search-e1`` (``{w}`` = the scratch directory), files it needs."""

    name: str
    argv: list[str]
    refuse: list[str] = field(default_factory=list)
    """Fragments the one-line refusal must name (exit status 2)."""
    warn: list[str] = field(default_factory=list)
    """Fragments a logged warning must contain (the run goes on; exit 0 unless ``status``)."""
    setup: Callable[[Path], None] | None = None
    slow: bool = False
    """Loads a model or trains: kept out of the fast default test run."""
    status: int = 0
    """Exit status of a ``warn`` case."""
    accept: bool = False
    """The input is valid by design (documented): handled when the command succeeds."""


# ---------------------------------------------------------------- scratch files
def world(w: Path) -> None:
    """A small demo world (no index) at ``{w}/world``."""
    if not (w / "world" / "corpus.jsonl").is_file():
        _cli(["demo-data", "--out", str(w / "world"), "--size", "20"])


def indexed_world(w: Path) -> None:
    """The small world with its MiniLM index at ``{w}/world/index``."""
    world(w)
    if not (w / "world" / "index" / "index.faiss").is_file():
        _cli(["index", "--corpus", str(w / "world" / "corpus.jsonl"), "--progress", "false"])


def damaged_index(how: str) -> Callable[[Path], None]:
    def make(w: Path) -> None:
        indexed_world(w)
        target = w / "bad" / "index"
        target.mkdir(parents=True, exist_ok=True)
        for f in (w / "world" / "index").iterdir():
            (target / f.name).write_bytes(f.read_bytes())
        if how == "truncated":
            data = (target / "index.faiss").read_bytes()
            (target / "index.faiss").write_bytes(data[: len(data) // 3])
        elif how == "garbage":
            (target / "index.faiss").write_bytes(os.urandom(4096))
        elif how == "meta":
            (target / "meta.json").write_text("{not json")
    return make


def damaged_store(w: Path) -> None:
    """A copy of the world's corpus, indexed, whose converted store's ``store.json`` is broken."""
    world(w)
    (w / "sc").mkdir(exist_ok=True)
    (w / "sc" / "corpus.jsonl").write_bytes((w / "world" / "corpus.jsonl").read_bytes())
    if not (w / "sc" / "index" / "index.faiss").is_file():
        _cli(["index", "--corpus", str(w / "sc" / "corpus.jsonl"), "--progress", "false"])
    (w / "sc" / "corpus.store" / "store.json").write_text("{x")


def run_dir(state: dict | str | None, config: bool = False, checkpoint: str | None = None) -> Callable[[Path], None]:
    """A run directory ``{w}/old_run`` holding ``state`` (a dict, or raw text) and, optionally, a
    config.yaml and a checkpoint whose weights are truncated."""
    def make(w: Path) -> None:
        world(w)
        d = w / "old_run"
        d.mkdir(exist_ok=True)
        (d / "evolver_state.json").write_text(state if isinstance(state, str) else json.dumps(state))
        if not config:
            (d / "config.yaml").unlink(missing_ok=True)
        if checkpoint:
            src = tiny_policy_dir(w)
            ckpt = d / "checkpoints" / checkpoint
            ckpt.mkdir(parents=True, exist_ok=True)
            for f in src.iterdir():
                (ckpt / f.name).write_bytes(f.read_bytes())
            data = (ckpt / "model.safetensors").read_bytes()
            (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    return make


STATE = {"round": 2, "phase": 0, "step_offset": 8, "grpo_batches": 4, "checkpoint": "round_1"}


def edited_corpus(w: Path) -> None:
    """A converted corpus then edited in place: same size, same modification time, other bytes."""
    world(w)
    d = w / "edited"
    d.mkdir(exist_ok=True)
    corpus = d / "corpus.jsonl"
    corpus.write_bytes((w / "world" / "corpus.jsonl").read_bytes())
    _cli(["index", "--corpus", str(corpus), "--progress", "false"])
    st = corpus.stat()
    text = corpus.read_text(encoding="utf-8")
    corpus.write_text(text.replace("founded", "fondued", 1), encoding="utf-8")
    os.utime(corpus, ns=(st.st_atime_ns, st.st_mtime_ns))


def bom_corpus(w: Path) -> None:
    world(w)
    (w / "bom").mkdir(exist_ok=True)
    (w / "bom" / "corpus.jsonl").write_bytes(b"\xef\xbb\xbf" + (w / "world" / "corpus.jsonl").read_bytes())


def tiny_policy_dir(w: Path) -> Path:
    """A random 2-layer Llama with the embedded tokenizer at ``{w}/policy``."""
    path = w / "policy"
    if not (path / "config.json").is_file():
        script = (f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r}); from conftest import make_tiny_policy; "
                  "from transformers import AutoTokenizer; from search_e1.policy import embedded_model_dir; "
                  "tok = AutoTokenizer.from_pretrained(embedded_model_dir()); p = make_tiny_policy(tok); "
                  f"p.model.save_pretrained({str(path)!r}); tok.save_pretrained({str(path)!r})")
        subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, env=_env())
    return path


def damaged_policy(how: str) -> Callable[[Path], None]:
    def make(w: Path) -> None:
        src = tiny_policy_dir(w)
        target = w / f"policy_{how}"
        target.mkdir(exist_ok=True)
        for f in src.iterdir():
            (target / f.name).write_bytes(f.read_bytes())
        if how == "truncated":
            data = (target / "model.safetensors").read_bytes()
            (target / "model.safetensors").write_bytes(data[: len(data) // 2])
        elif how == "random":
            (target / "model.safetensors").write_bytes(os.urandom(2048))
        elif how == "config":
            (target / "config.json").write_text("{oops")
    return make


def gguf(how: str) -> Callable[[Path], None]:
    def make(w: Path) -> None:
        if how == "truncated":
            from search_e1.policy import embedded_gguf_path

            (w / "model.gguf").write_bytes(embedded_gguf_path().read_bytes()[:100_000])
        else:
            (w / "model.gguf").write_bytes(b"not a gguf file at all" * 100)
    return make


def a_file(name: str) -> Callable[[Path], None]:
    def make(w: Path) -> None:
        (w / name).parent.mkdir(parents=True, exist_ok=True)
        (w / name).write_text("I am a file\n")
    return make


# ---------------------------------------------------------------- the cases
def _fit(*extra: str) -> list[str]:
    return ["fit", "--config", "{conf}/quickstart.yaml", "--demo_world.out", "{w}/world", "--demo_world.size", "20",
            "{no_heldout}", "--data.train_files", "[{w}/world/train.jsonl]",
            "--data.val_files", "[{w}/world/val.jsonl]",
            "--data.test_files", "[{w}/world/test.jsonl]", "--data.retriever.corpus", "{w}/world/corpus.jsonl",
            "--data.retriever.index_dir", "{w}/world/index", "--warmup.demonstrations", "null",
            "--evolver.run_dir", "{w}/run", *extra]


def _evaluate(*extra: str) -> list[str]:
    return ["evaluate", *_fit()[1:], *extra]


CASES: list[Case] = [
    # other subcommands
    Case("demo-data size 0", ["demo-data", "--out", "{w}/d", "--size", "0"], refuse=["size", "10"]),
    Case("demo-data out is a file", ["demo-data", "--out", "{w}/afile"], refuse=["afile", "file"],
         setup=a_file("afile")),
    Case("fit without a config", ["fit"], refuse=["--config"]),
    Case("evaluate split foo", _evaluate("--split", "foo"), refuse=["--split", "foo"], setup=world),
    Case("evaluate split train", _evaluate("--split", "train"), refuse=["--split", "train"], setup=world),
    Case("evaluate without test files", _evaluate("--data.test_files", "null"), refuse=["test_files"], setup=world),
    Case("evaluate val without val files", _evaluate("--split", "val", "--data.val_files", "null"),
         refuse=["val_files"], setup=world),
    Case("index embedder batch 0", ["index", "--corpus", "{w}/world/corpus.jsonl", "--embedder.batch_size", "0"],
         refuse=["batch_size", "0"], setup=world),
    Case("index out is a file", ["index", "--corpus", "{w}/world/corpus.jsonl", "--out", "{w}/afile"],
         refuse=["afile"], setup=lambda w: (world(w), a_file("afile")(w))),
    Case("serve log level loud", ["serve", "--config", "{conf}/retrieval/serve-demo.yaml",
                                  "--serve.log_level", "loud"], refuse=["log_level", "loud"]),
    Case("convert truncated gguf", ["convert", "--gguf", "{w}/model.gguf", "--out", "{w}/conv"],
         refuse=["model.gguf"], setup=gguf("truncated")),
    Case("convert not a gguf", ["convert", "--gguf", "{w}/model.gguf", "--out", "{w}/conv"],
         refuse=["model.gguf", "gguf"], setup=gguf("garbage")),
    # damaged artifacts
    Case("truncated index.faiss", _fit("--data.retriever.index_dir", "{w}/bad/index"),
         refuse=["index.faiss", "search-e1 index"], setup=damaged_index("truncated"), slow=True),
    Case("garbage index.faiss", _fit("--data.retriever.index_dir", "{w}/bad/index"),
         refuse=["index.faiss", "search-e1 index"], setup=damaged_index("garbage"), slow=True),
    Case("corrupt meta.json", _fit("--data.retriever.index_dir", "{w}/bad/index"),
         refuse=["meta.json"], setup=damaged_index("meta"), slow=True),
    Case("corrupt corpus store", _fit("--data.retriever.corpus", "{w}/sc/corpus.jsonl", "--data.retriever.index_dir",
                                      "{w}/sc/index"), refuse=["store.json"], setup=damaged_store, slow=True),
    Case("truncated policy weights", _evaluate("--ckpt", "{w}/policy_truncated", "--rollout.backend", "hf"),
         refuse=["policy_truncated", "model.safetensors"], setup=damaged_policy("truncated"), slow=True),
    Case("random policy weights", _evaluate("--ckpt", "{w}/policy_random", "--rollout.backend", "hf"),
         refuse=["policy_random", "model.safetensors"], setup=damaged_policy("random"), slow=True),
    Case("policy config.json not json", _evaluate("--ckpt", "{w}/policy_config", "--rollout.backend", "hf"),
         refuse=["config.json"], setup=damaged_policy("config"), slow=True),
    # settings accepted and failing later, or refused vaguely
    Case("rollout top_k -5", _fit("--rollout.top_k", "-5"), refuse=["top_k", "-5"]),
    Case("grpo mini_batch_size -1", _fit("--grpo.mini_batch_size", "-1"), refuse=["mini_batch_size", "-1"]),
    Case("trainer accelerator tpu", _fit("--trainer.accelerator", "tpu"), refuse=["accelerator", "tpu"], setup=world),
    Case("index_dir is a file", _fit("--data.retriever.index_dir", "{w}/afile"), refuse=["index_dir", "afile"],
         setup=lambda w: (world(w), a_file("afile")(w))),
    Case("demo_world out is a file", _fit("--demo_world.out", "{w}/afile"), refuse=["demo_world.out", "afile"],
         setup=a_file("afile")),
    Case("demo_world size -1", _fit("--demo_world.out", "{w}/fresh", "--demo_world.size", "-1"),
         refuse=["demo_world.size", "-1"]),
    Case("grpo group_size null", _fit("--grpo.group_size", "null"), refuse=["grpo.group_size"]),
    Case("grpo clip_low negative", _fit("--grpo.clip_low", "-0.2"), refuse=["clip_low", "-0.2"]),
    Case("unknown embedder pooling", _fit("--data.retriever.embedder.pooling", "maxish"),
         refuse=["pooling", "maxish"]),
    Case("unknown passage_format", _fit("--data.retriever.embedder.passage_format", "weird"),
         refuse=["passage_format", "weird"]),
    Case("negative lr", _fit("--grpo.optim.lr", "-1e-5"), refuse=["lr", "-1e-05"]),
    # accepted silently with a wrong result
    Case("temperature 0 in training", _fit("--rollout.temperature", "0"), refuse=["temperature", "0"], setup=world),
    Case("run dir without config.yaml", _fit("--evolver.run_dir", "{w}/old_run", "--grpo.optim.lr", "3e-5"),
         refuse=["config.yaml", "accept_config_change"], setup=run_dir(STATE)),
    Case("corpus edited in place", ["index", "--corpus", "{w}/edited/corpus.jsonl", "--progress", "false"],
         warn=["changed since it was converted"], setup=edited_corpus, slow=True),
    # run directories
    Case("corrupt evolver_state.json", _fit("--evolver.run_dir", "{w}/old_run", "--evolver.accept_config_change",
                                            "true"), refuse=["evolver_state.json", "damaged"],
         setup=run_dir("{not json"), slow=True),
    Case("state names a missing checkpoint", _fit("--evolver.run_dir", "{w}/old_run",
                                                  "--evolver.accept_config_change", "true"),
         refuse=["round_1", "does not exist"], setup=run_dir(STATE), slow=True),
    Case("truncated round checkpoint", _fit("--evolver.run_dir", "{w}/old_run", "--evolver.accept_config_change",
                                            "true"), refuse=["model.safetensors", "damaged"],
         setup=run_dir(STATE, checkpoint="round_1"), slow=True),
    # also seen
    Case("http retriever with nothing listening", _fit("--data.retriever.kind", "http", "--data.retriever.http.url",
                                                       "http://127.0.0.1:9/retrieve", "--data.retriever.http.retries",
                                                       "0"), refuse=["http.url",
                                                                     "127.0.0.1:9"], setup=world, slow=True),
    Case("UTF-8 BOM in a corpus", ["index", "--corpus", "{w}/bom/corpus.jsonl", "--progress", "false"], accept=True,
         setup=bom_corpus, slow=True),
]


# ---------------------------------------------------------------- running and classifying
def _env(pythonpath: str | None = None) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           "COLUMNS": "200"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return env


REFUSAL_SECONDS = 300
"""A case still running after this long went on with the long work instead of refusing: ``silent wrong``."""


def _cli(argv: list[str], pythonpath: str | None = None,
         timeout: float = REFUSAL_SECONDS) -> subprocess.CompletedProcess:
    # run from the checkout itself: ``-m`` puts the working directory first on sys.path
    return subprocess.run([sys.executable, "-m", "search_e1.cli", *argv], capture_output=True, text=True,
                          timeout=timeout, env=_env(pythonpath), cwd=pythonpath or ROOT)


def expand(argv: list[str], scratch: Path, checkout: Path) -> list[str]:
    """``{w}`` = the scratch directory, ``{conf}`` = the checkout's conf/, ``{no_heldout}`` = the flags
    that drop the quickstart's held-out world (none for a checkout that has none)."""
    conf = checkout / "conf"
    heldout = "heldout_out" in (conf / "quickstart.yaml").read_text()
    out: list[str] = []
    for a in argv:
        if a == "{no_heldout}":
            out += ["--demo_world.heldout_out", "null", "--data.eval_worlds", "[]"] if heldout else []
        else:
            out.append(a.replace("{w}", str(scratch)).replace("{conf}", str(conf)))
    return out


def run_case(case: Case, scratch: Path, pythonpath: str | None = None) -> tuple[str, subprocess.CompletedProcess]:
    """Run ``case`` in ``scratch`` (its files made first) and classify the outcome."""
    if case.setup is not None:
        case.setup(scratch)
    argv = expand(case.argv, scratch, Path(pythonpath or ROOT))
    try:
        proc = _cli(argv, pythonpath, REFUSAL_SECONDS)
    except subprocess.TimeoutExpired as exc:  # no refusal: the run went on (training, serving...)
        out = lambda b: b.decode(errors="replace") if isinstance(b, bytes) else (b or "")  # noqa: E731
        proc = subprocess.CompletedProcess(exc.cmd, 0, out(exc.stdout), out(exc.stderr) + f"\n[still running after "
                                           f"{REFUSAL_SECONDS} s: stopped]")
        return ("silent wrong" if case.refuse else classify(case, proc)), proc
    return classify(case, proc), proc


def error_lines(text: str) -> list[str]:
    """The lines of ``text`` that report an error (ours: "ERROR"; the parser's: "error:")."""
    return [line for line in text.splitlines() if " ERROR " in line or line.startswith("error:")]


def classify(case: Case, proc: subprocess.CompletedProcess) -> str:
    out = proc.stdout + proc.stderr
    if "Traceback (most recent call last)" in out:
        return "traceback"
    named = lambda frags: all(f.lower() in out.lower() for f in frags)  # noqa: E731
    if case.accept:
        return "handled" if proc.returncode == 0 else "vague"
    if case.warn:
        if proc.returncode == case.status and named(case.warn):
            return "handled"
        return "silent wrong" if proc.returncode == 0 else "vague"
    if proc.returncode == 0:
        return "silent wrong"
    errors = error_lines(out)
    return "clear" if proc.returncode == 2 and named(case.refuse) and 0 < len(errors) <= 3 else "vague"


def main(argv: list[str] | None = None) -> dict[str, int]:
    global REFUSAL_SECONDS
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pythonpath", default=None, help="a checkout whose search_e1 to run (default: the installed one)")
    ap.add_argument("--only", default="", help="comma-separated case names")
    ap.add_argument("--timeout", type=float, default=REFUSAL_SECONDS,
                    help="seconds after which a case that owes a refusal counts as silent wrong")
    args = ap.parse_args(argv)
    REFUSAL_SECONDS = args.timeout
    counts: dict[str, int] = {}
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            if args.only and case.name not in args.only.split(","):
                continue
            scratch = Path(tmp) / "w"
            scratch.mkdir(exist_ok=True)
            verdict, proc = run_case(case, scratch, args.pythonpath)
            counts[verdict] = counts.get(verdict, 0) + 1
            if verdict not in ("clear", "handled"):
                failures.append((case.name, verdict, (error_lines(proc.stdout + proc.stderr) or
                                                      (proc.stdout + proc.stderr).strip().splitlines()[-1:])))
            print(f"{verdict:13s} {case.name}", flush=True)  # noqa: T201
    print(json.dumps(counts))  # noqa: T201
    for name, verdict, lines in failures:
        print(f"--- {name}: {verdict}: {' | '.join(lines)[:300]}")  # noqa: T201
    return counts


if __name__ == "__main__":
    main()
