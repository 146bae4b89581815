"""Tests for search_e1.rewards: normalisation, EM, F1, format check, reward registry (pure, CPU)."""

from __future__ import annotations

import importlib

import pytest

from search_e1.rewards import (
    REWARDS,
    RewardConfig,
    compute_reward,
    exact_match,
    f1_score,
    get_reward_fn,
    is_well_formed,
    normalize_answer,
    register_reward,
)

# --- normalize_answer ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("An apple.", "apple"),
        ("the the", ""),  # both are articles
        ("THE Beatles!", "beatles"),
        ("  New\t\nYork   City ", "new york city"),
        ("Theatre", "theatre"),  # 'the' only as a whole word
        ("another anthem", "another anthem"),  # 'an' only as a whole word
        ("U.S.A.", "usa"),
        ("rock-'n'-roll", "rocknroll"),  # punctuation removed, not replaced by a space
        ("a", ""),
        ("Ünïcode Café", "ünïcode café"),  # lowercases non-ASCII; accents kept
        ("1,000", "1000"),
    ],
)
def test_normalize_answer(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


def test_normalize_answer_matches_torchmetrics_squad() -> None:
    # ONE normalisation, but it must agree with SQuAD's (as implemented by torchmetrics)
    squad = importlib.import_module("torchmetrics.functional.text.squad")
    reference = getattr(squad, "_normalize_text", None)  # private: skip if torchmetrics renames it
    if reference is None:
        pytest.skip("torchmetrics.functional.text.squad._normalize_text not available")
    for s in ["An apple.", "THE  the Beatles!", "U.S.A. - a nation", "Ünïcode, Café", "the-end"]:
        assert normalize_answer(s) == reference(s)


# --- exact_match ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pred", "golds", "expected"),
    [
        ("An apple.", ["apple"], 1.0),
        ("apple", "An Apple", 1.0),  # a single gold string is one answer
        ("apple", "a", 0.0),  # not matched character by character
        ("apples", ["apple"], 0.0),
        ("red apple", ["apple"], 0.0),
        ("Paris", ["London", "paris!"], 1.0),  # max over golds
        (None, ["apple"], 0.0),
        ("apple", [], 0.0),
        ("", [""], 1.0),
        ("the", ["a"], 1.0),  # both normalise to ""
        ("Ünïcode", ["ünïcode"], 1.0),
        ("Ünïcode", ["unicode"], 0.0),  # accents are not stripped
    ],
)
def test_exact_match(pred: str | None, golds: list[str] | str, expected: float) -> None:
    assert exact_match(pred, golds) == expected


def test_exact_match_accepts_tuple_and_generator_golds() -> None:
    assert exact_match("x", ("y", "x")) == 1.0
    assert exact_match("x", (g for g in ["y", "X."])) == 1.0


# --- f1_score ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pred", "golds", "expected"),
    [
        # common = {red, dog} = 2; P = 2/3, R = 2/2 = 1; F1 = 2*(2/3)/(2/3+1) = 0.8
        ("big red dog", ["red dog"], 0.8),
        # P = 1, R = 1/3 ("the" dropped: gold tokens new york city); F1 = 2*(1/3)/(4/3) = 0.5
        ("York", ["the New York City"], 0.5),
        # tokens counted with multiplicity: pred [x, x], gold [x]: common = 1, P = 1/2, R = 1,
        # F1 = 2*(1/2)/(3/2) = 2/3
        ("x x", ["x"], 2 / 3),
        # max over golds: vs "cat" 0, vs "red dog" 0.8
        ("big red dog", ["cat", "red dog"], 0.8),
        ("cat", ["dog"], 0.0),
        (None, ["dog"], 0.0),
        ("", [""], 1.0),  # both empty
        ("the", ["dog"], 0.0),  # pred empty after normalisation, gold not
        ("dog", ["a"], 0.0),  # gold empty after normalisation, pred not
        ("dog", [], 0.0),
        ("An apple.", "apple", 1.0),
    ],
)
def test_f1_score(pred: str | None, golds: list[str] | str, expected: float) -> None:
    assert f1_score(pred, golds) == pytest.approx(expected, abs=1e-12)


def test_f1_bounded_by_em() -> None:
    # exact match implies F1 = 1; F1 = 1 on non-empty tokens implies the same bag of tokens
    for pred, gold in [("The Velna River", "velna river"), ("river velna", "velna river")]:
        assert f1_score(pred, [gold]) == 1.0
    assert exact_match("river velna", ["velna river"]) == 0.0  # order matters for EM only


# --- is_well_formed ------------------------------------------------------------------------------

GOOD = (
    "<think> need a fact </think>\n<search> q1 </search>\n\n<information>Doc 1</information>\n\n"
    "<think> again </think><search> q2 </search><information>Doc 2</information>"
    "<think> done </think>\n<answer> Velna </answer>"
)


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (GOOD, True),
        ("<answer> x </answer>", True),  # answering without search or think is allowed
        ("<think> a </think><answer> x </answer>", True),
        # chat-template text between blocks is not checked
        (
            "<search> q </search><|im_end|>\n<|im_start|>user\n<information>d</information>"
            "<|im_end|>\n<|im_start|>assistant\n<answer> x </answer>",
            True,
        ),
        ("<answer> x </answer>  \n", True),
        # failures
        ("", False),
        ("plain text answer", False),
        ("<think> a </think>", False),  # no answer
        ("<answer> x </answer><think> after </think>", False),  # answer not last
        ("<answer> x </answer><answer> y </answer>", False),  # two answers
        ("<answer> </answer>", False),  # empty answer
        (
            "<search> </search><information>d</information><answer> x </answer>",
            False,
        ),  # empty query
        ("<search> q </search><answer> x </answer>", False),  # search without information
        (
            "<search> q </search><think> t </think><information>d</information><answer> x </answer>",
            False,
        ),
        ("<information>d</information><answer> x </answer>", False),  # information without search
        ("<think> a <search> q </search></think><answer> x </answer>", False),  # nested
        ("<think> a </search><answer> x </answer>", False),  # mismatched close
        ("</think><answer> x </answer>", False),  # stray close
        ("<think> unclosed <answer> x </answer>", False),  # unclosed think => nested answer
        ("<answer> x </answer><think>", False),  # left open at the end
        ("<answer> x <answer> y </answer>", False),
    ],
)
def test_is_well_formed(response: str, expected: bool) -> None:
    assert is_well_formed(response) is expected


# --- registry, config, compute_reward ------------------------------------------------------------


def test_registry_contains_em_and_f1_and_refuses_duplicates() -> None:
    assert REWARDS["em"] is exact_match and REWARDS["f1"] is f1_score
    with pytest.raises(ValueError, match="already registered"):
        register_reward("em")(lambda p, g: 0.0)
    assert REWARDS["em"] is exact_match  # unchanged by the refused registration
    with pytest.raises(ValueError, match="unknown reward 'bleu'"):
        get_reward_fn("bleu")


def test_register_new_reward() -> None:
    @register_reward("length")
    def length_reward(pred: str | None, golds: object) -> float:
        return float(len(pred or ""))

    try:
        assert compute_reward("<answer>abc</answer>", ["x"], RewardConfig(name="length")) == 3.0
    finally:
        REWARDS.pop("length")  # keep the global registry clean


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "bleu"}, "RewardConfig.name"),
        ({"format_weight": -0.1}, "RewardConfig.format_weight"),
        ({"format_weight": float("nan")}, "RewardConfig.format_weight"),
        ({"format_weight": float("inf")}, "RewardConfig.format_weight"),
    ],
)
def test_reward_config_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RewardConfig(**kwargs)


@pytest.mark.parametrize(
    ("response", "golds", "cfg", "expected"),
    [
        (GOOD, ["velna"], RewardConfig(), 1.0),
        (GOOD, ["somerin"], RewardConfig(), 0.0),
        # well formed and correct: 1 + 0.2
        (GOOD, ["velna"], RewardConfig(format_weight=0.2), 1.2),
        # well formed, wrong: 0 + 0.2
        (GOOD, ["somerin"], RewardConfig(format_weight=0.2), 0.2),
        # correct but not well formed (search without information): 1 + 0
        (
            "<search> q </search><answer> Velna </answer>",
            ["velna"],
            RewardConfig(format_weight=0.2),
            1.0,
        ),
        # f1: pred "big red dog" vs "red dog" = 0.8, plus format 0.1
        ("<answer> big red dog </answer>", ["red dog"], RewardConfig("f1", 0.1), 0.9),
        # no answer: 0 even with a gold answer inside a document
        (
            "<search> q </search><information><answer> velna </answer></information>",
            ["velna"],
            RewardConfig(),
            0.0,
        ),
        # the last answer counts
        ("<answer> wrong </answer> <answer> Velna </answer>", ["velna"], RewardConfig(), 1.0),
    ],
)
def test_compute_reward(
    response: str, golds: list[str], cfg: RewardConfig, expected: float
) -> None:
    assert compute_reward(response, golds, cfg) == pytest.approx(expected, abs=1e-12)
