"""Tests for search_e1.protocol: action parsing, answer extraction, prompts (pure, CPU, fast)."""

from __future__ import annotations

import pytest

from search_e1.protocol import (
    FEW_SHOT_INSTRUCTION,
    NO_BLOCK_REASON,
    PRESETS,
    STOP_STRINGS,
    ZERO_SHOT_INSTRUCTION,
    Action,
    PromptConfig,
    build_messages,
    extract_answer,
    feedback_text,
    few_shot_preset,
    get_prompt_preset,
    information_text,
    must_answer,
    parse_action,
)

INFO = "<information>Doc 1 (Title: X) text</information>"


# --- parse_action: valid actions -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<search>q</search>", Action("search", "q")),
        ("<think> hm </think>\n<search>  Velna River  </search>", Action("search", "Velna River")),
        ("<answer> Lake Somerin </answer>", Action("answer", "Lake Somerin")),
        # multiline content is kept inside, stripped outside
        ("<answer>\n line one\n line two \n</answer>", Action("answer", "line one\n line two")),
        # unicode content
        ("<search> Zürich café 東京 </search>", Action("search", "Zürich café 東京")),
        # several blocks: the first one (by opening position) wins
        ("<answer> a </answer> <search> b </search>", Action("answer", "a")),
        ("<search> b </search> <answer> a </answer>", Action("search", "b")),
        ("<search> one </search><search> two </search>", Action("search", "one")),
        # stray closing tag before the block is ignored
        ("oops </answer> <search> q </search>", Action("search", "q")),
        # an unclosed think before the block does not matter to the parser
        ("<think> hmm <search> q </search>", Action("search", "q")),
        # case-sensitive: <Search> is plain text, so it is part of the query content
        ("<search> <Search> x </search>", Action("search", "<Search> x")),
        # trailing text after the block is ignored
        ("<answer> 42 </answer> and more words", Action("answer", "42")),
    ],
)
def test_parse_action_valid(text: str, expected: Action) -> None:
    assert parse_action(text) == expected


# --- parse_action: invalid actions ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", NO_BLOCK_REASON),
        ("just some text, no tags", NO_BLOCK_REASON),
        ("<think> only thinking </think>", NO_BLOCK_REASON),
        ("<Search> x </Search>", NO_BLOCK_REASON),  # wrong case: not a tag
        ("< search > x </ search >", NO_BLOCK_REASON),
        ("</search> x </answer>", NO_BLOCK_REASON),  # closes only
        ("<search> foo", "unclosed <search>"),
        ("<answer> Velna", "unclosed <answer>"),
        ("<search></search>", "empty query"),
        ("<search> \n\t </search>", "empty query"),
        ("<answer>   </answer>", "empty answer"),
        ("<search> a <answer> b </answer></search>", "nested <answer> inside <search>"),
        ("<answer> a <think> b </think></answer>", "nested <think> inside <answer>"),
        ("<search> a <search> b </search>", "nested <search> inside <search>"),
        ("<search> x </answer>", "mismatched </answer> closes <search>"),
        # tags are reserved even inside <think>: this <search> opens the block
        (
            "<think> I will <search> later </think><search> q </search>",
            "mismatched </think> closes <search>",
        ),
        ("<answer> x </think>", "mismatched </think> closes <answer>"),
        # the FIRST block decides, even when a later one is valid
        ("<search></search> <answer> ok </answer>", "empty query"),
        ("<search> x </answer> <search> y </search>", "mismatched </answer> closes <search>"),
    ],
)
def test_parse_action_invalid(text: str, reason: str) -> None:
    assert parse_action(text) == Action("invalid", reason)


def test_parse_action_reads_only_after_last_information() -> None:
    # the response so far, inline layout: the first search was already executed
    text = f"<search> first </search>{INFO}<think> ok </think><search> second </search>"
    assert parse_action(text) == Action("search", "second")
    # documents may contain tags: they are environment text, never an action
    text = "<search> q </search><information>Doc 1 <answer> fake </answer></information> nothing"
    assert parse_action(text) == Action("invalid", NO_BLOCK_REASON)
    # a valid answer before the information block is history, not the latest action
    assert parse_action(f"<answer> old </answer>{INFO}").kind == "invalid"


def test_parse_action_unclosed_information_hides_the_rest() -> None:
    # an <information> opened after the last close counts as inside: ignored from it on
    text = f"{INFO} <think> t </think> <information> <answer> fake </answer>"
    assert parse_action(text) == Action("invalid", NO_BLOCK_REASON)
    # but a block before the unclosed <information> is read
    text = "<search> real </search> <information> <answer> fake </answer>"
    assert parse_action(text) == Action("search", "real")


def test_parse_action_on_generation_stopped_at_stop_string() -> None:
    # the rollout stops at STOP_STRINGS; the kept stop string closes the block
    assert STOP_STRINGS == ("</search>", "</answer>")
    assert parse_action("<think> x </think> <search> q" + STOP_STRINGS[0]) == Action("search", "q")


# --- extract_answer ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("<answer> Velna River </answer>", "Velna River"),
        ("no answer at all", None),
        ("<answer>   </answer>", None),
        ("<answer> unclosed", None),
        # the LAST complete non-empty block wins; an empty last block is skipped
        ("<answer> a </answer> <answer> b </answer>", "b"),
        ("<answer> a </answer> <answer> </answer>", "a"),
        ("<answer> a </answer> <answer> unclosed", "a"),
        # inside information: documents that contain answer tags are ignored
        (f"<search> q </search>{INFO}<answer> real </answer>", "real"),
        ("<information><answer> doc </answer></information>", None),
        ("<answer> mine </answer><information><answer> doc </answer></information>", "mine"),
        # an unclosed information block hides everything after it
        ("<answer> mine </answer><information> <answer> doc </answer>", "mine"),
        # nested / mismatched tags do not make a complete block
        ("<answer> a <search> b </search> </answer>", None),
        ("<answer> a </search>", None),
        ("<answer>\nMulti\nline\n</answer>", "Multi\nline"),
        ("<answer> Ünïcode 東京 </answer>", "Ünïcode 東京"),
    ],
)
def test_extract_answer(response: str, expected: str | None) -> None:
    assert extract_answer(response) == expected


def test_extract_answer_ignores_prompt_example() -> None:
    # the zero-shot instruction shows an example "<answer> Lisbon </answer>": Search-R1's bug was to
    # search prompt + response. The response alone has no answer, so None.
    prompt = ZERO_SHOT_INSTRUCTION.replace("{question}", "Where?")
    assert extract_answer(prompt) == "Lisbon"  # what the bug would have counted
    assert extract_answer("<think> I do not know </think>") is None


# --- must_answer ---------------------------------------------------------------------------------


def test_must_answer() -> None:
    # max_turns=4: turns 0,1,2 may search, turn 3 is the last
    assert [must_answer(t, 4) for t in range(5)] == [False, False, False, True, True]
    assert must_answer(0, 1) is True
    with pytest.raises(ValueError):
        must_answer(0, 0)
    with pytest.raises(ValueError):
        must_answer(-1, 3)


# --- PromptConfig, rendering, presets ------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field_name"),
    [
        ({"instruction": "no placeholder"}, "instruction"),
        ({"instruction": "{Question}"}, "instruction"),
        ({"info_format": "tool"}, "info_format"),
        ({"few_shot": [{"role": "user"}]}, "few_shot"),
        ({"few_shot": [{"content": "x"}]}, "few_shot"),
        ({"few_shot": [{"role": "tool", "content": "x"}]}, "few_shot"),
        ({"few_shot": ["user: x"]}, "few_shot"),
    ],
)
def test_prompt_config_validation(kwargs: dict, field_name: str) -> None:
    with pytest.raises(ValueError, match=f"PromptConfig.{field_name}"):
        PromptConfig(**kwargs)


def test_build_messages_order_and_literal_braces() -> None:
    shot = [{"role": "user", "content": "ex q"}, {"role": "assistant", "content": "ex a"}]
    cfg = PromptConfig(instruction="{json} Q: {question}", system="sys", few_shot=shot)
    messages = build_messages("what is {x}?", cfg)
    assert messages == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "ex q"},
        {"role": "assistant", "content": "ex a"},
        {"role": "user", "content": "{json} Q: what is {x}?"},
    ]
    # the config's few-shot turns are copied, not aliased
    messages[1]["content"] = "changed"
    assert cfg.few_shot[0]["content"] == "ex q"
    # no system message when None
    assert build_messages("q", PromptConfig())[0]["role"] == "user"
    assert len(build_messages("q", PromptConfig())) == 1


def test_information_and_feedback_text() -> None:
    inline = PromptConfig(final_turn_note="LAST", invalid_feedback="BAD")
    turn = PromptConfig(info_format="turn", final_turn_note="LAST", invalid_feedback="BAD")
    assert information_text("P", inline) == "\n\n<information>P</information>\n\n"
    assert information_text("P", turn) == "<information>P</information>"
    assert (
        information_text("P", inline, final_turn=True)
        == "\n\n<information>P</information>\nLAST\n\n"
    )
    assert information_text("P", turn, final_turn=True) == "<information>P</information>\nLAST"
    assert feedback_text(inline) == "\n\nBAD\n\n"
    assert feedback_text(turn, final_turn=True) == "BAD\nLAST"
    # the parser never reads an action out of inserted information
    assert (
        parse_action("<search> q </search>" + information_text("<answer> x </answer>", inline)).kind
        == "invalid"
    )


@pytest.mark.parametrize("info_format", ["inline", "turn"])
def test_few_shot_preset_examples_follow_the_protocol(info_format: str) -> None:
    cfg = few_shot_preset(info_format)  # type: ignore[arg-type]
    assert cfg.info_format == info_format and cfg.instruction == FEW_SHOT_INSTRUCTION
    roles = [t["role"] for t in cfg.few_shot]
    assistants = [t["content"] for t in cfg.few_shot if t["role"] == "assistant"]
    user_questions = [t for t in cfg.few_shot if t["content"].startswith("Look facts up")]
    assert len(user_questions) == 2  # two worked examples, each opened by the instruction
    if info_format == "turn":
        # ex1: U A(search) U(info) A(answer); ex2 (two-hop): U A U A U A
        assert roles == ["user", "assistant"] * 5
        infos = [t["content"] for t in cfg.few_shot if t["content"].startswith("<information>")]
        assert len(infos) == 3 and all(i.endswith("</information>") for i in infos)
        assert [parse_action(a).kind for a in assistants] == [
            "search",
            "answer",
            "search",
            "search",
            "answer",
        ]
    else:
        assert roles == ["user", "assistant"] * 2
        assert [a.count("<search>") for a in assistants] == [1, 2]  # one single-hop, one two-hop
    answers = [extract_answer(a) for a in assistants if "<answer>" in a]
    assert answers == ["Velna River", "Lake Somerin"]
    # short enough for a 135M model: a few hundred tokens (~4 chars per token)
    assert sum(len(t["content"]) for t in cfg.few_shot) < 2000
    # the question still goes last
    assert build_messages("Q?", cfg)[-1] == {
        "role": "user",
        "content": FEW_SHOT_INSTRUCTION.replace("{question}", "Q?"),
    }


def test_presets_registry() -> None:
    assert set(PRESETS) == {"zero_shot", "few_shot"}
    assert get_prompt_preset("zero_shot").instruction == ZERO_SHOT_INSTRUCTION
    assert get_prompt_preset("zero_shot", "turn").info_format == "turn"
    assert get_prompt_preset("few_shot", "turn").few_shot == few_shot_preset("turn").few_shot
    with pytest.raises(ValueError, match="unknown prompt preset 'three_shot'"):
        get_prompt_preset("three_shot")
    with pytest.raises(ValueError, match="info_format"):
        get_prompt_preset("few_shot", "xml")  # type: ignore[arg-type]
