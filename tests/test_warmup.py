"""The warm-up: demonstration encoding and its loss mask, bad input, the loss and its accumulation."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from conftest import make_tiny_policy

from search_e1.protocol import PromptConfig
from search_e1.rollout import RolloutConfig
from search_e1.rounds.base import OptimConfig
from search_e1.rounds.warmup import (
    DemonstrationError,
    WarmupConfig,
    WarmupModule,
    collate_demonstrations,
    demonstration_nll,
    load_demonstrations,
    nll_backward,
)

PROMPT = PromptConfig(instruction="Q: {question}", system="S", info_format="turn")


def write_lines(path, lines) -> str:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return str(path)


SEARCH = {"role": "assistant", "content": "<search> Vel </search>"}
INFO = {"role": "user", "content": "<information>D</information>"}
ANSWER = {"role": "assistant", "content": "<answer> X </answer>"}
SHAPE_B = {"question": "Who?", "messages": [SEARCH, INFO, ANSWER]}  # the rollout's prompt
SHAPE_A = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q: Who?"}, SEARCH]}


def test_loss_mask_by_hand(tmp_path, smol_tokenizer):
    path = write_lines(tmp_path / "demos.jsonl", [SHAPE_B, "", SHAPE_A])  # a blank line is skipped
    examples = load_demonstrations(path, smol_tokenizer, PROMPT, RolloutConfig())
    assert [e.where for e in examples] == [f"{path}:1", f"{path}:3"]
    batch = collate_demonstrations(examples, smol_tokenizer.pad_token_id)
    # SmolLM2's template; 1 = <|im_start|>, 2 = <|im_end|> (also the pad token), 198 = "\n".
    prompt = [1, 9690, 198, 67, 2, 198,  # <|im_start|> system \n S <|im_end|> \n
              1, 4093, 198, 65, 42, 6244, 47, 2, 198,  # <|im_start|> user \n Q : ␣Who ? <|im_end|> \n
              1, 520, 9531, 198]  # <|im_start|> ass istant \n            (19 tokens, mask 0)
    search = [44, 7916, 46, 22010, 22577, 7916, 46]  # < search > ␣Vel ␣</ search >  (mask 1)
    info = [2, 198, 1, 4093, 198,  # <|im_end|> \n <|im_start|> user \n       (template glue, mask 0)
            44, 14243, 46, 52, 9617, 14243, 46,  # < information > D </ information >  (mask 0)
            2, 198, 1, 520, 9531, 198]  # <|im_end|> \n <|im_start|> ass istant \n  (glue, mask 0)
    answer = [44, 11247, 46, 2273, 22577, 11247, 46]  # < answer > ␣X ␣</ answer >  (mask 1; no <|im_end|>)
    row0 = prompt + search + info + answer  # 51 tokens
    row1 = prompt + search + [2] * (len(row0) - 26)  # shape (a) with the same messages, right-padded
    mask0 = [0] * 19 + [1] * 7 + [0] * 18 + [1] * 7
    mask1 = [0] * 19 + [1] * 7 + [0] * 25
    assert batch["input_ids"].tolist() == [row0, row1]
    assert batch["loss_mask"].tolist() == [mask0, mask1]
    assert batch["attention_mask"].tolist() == [[1] * 51, [1] * 26 + [0] * 25]
    assert batch["prompt_lengths"].tolist() == [19, 19]


@pytest.mark.parametrize("third, needle", [
    ('{"question": "Who?", "messages": [', "invalid JSON"),
    ('["not an object"]', "expected a JSON object"),
    ({"question": "Who?"}, "missing field 'messages'"),
    ({"question": "Who?", "messages": "hi"}, "expected a non-empty list"),
    ({"question": "Who?", "messages": [{"role": "user", "content": "Q: Who?"}, INFO]}, "no assistant message"),
    ({"question": "Who?", "messages": [{"role": "tool", "content": "x"}, ANSWER]}, "unknown role 'tool'"),
    ({"question": "Who?", "messages": [ANSWER, {"role": "user", "content": 3}]}, "messages[1]"),
    ({"messages": [ANSWER]}, "field 'question'"),
    ({"question": "Who?", "messages": [ANSWER, {"role": "system", "content": "S"}, ANSWER]}, "system message"),
    ({"question": "Who?", "messages": [SEARCH, INFO] * 20 + [ANSWER]}, "longer than rollout.max_total_tokens"),
])
def test_bad_demonstration_names_file_and_line(tmp_path, smol_tokenizer, third, needle):
    path = write_lines(tmp_path / "bad.jsonl", [SHAPE_B, SHAPE_A, third])
    with pytest.raises(DemonstrationError, match="bad.jsonl:3: ") as err:
        load_demonstrations(path, smol_tokenizer, PROMPT, RolloutConfig(max_total_tokens=300))
    assert needle in str(err.value)


def test_missing_or_empty_file_and_max_examples(tmp_path, smol_tokenizer):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_demonstrations(tmp_path / "nope.jsonl", smol_tokenizer, PROMPT, RolloutConfig())
    with pytest.raises(DemonstrationError, match="empty.jsonl: no demonstrations"):
        load_demonstrations(write_lines(tmp_path / "empty.jsonl", [""]), smol_tokenizer, PROMPT, RolloutConfig())
    path = write_lines(tmp_path / "d.jsonl", [SHAPE_B, SHAPE_A, "not read: max_examples stops before"])
    assert len(load_demonstrations(path, smol_tokenizer, PROMPT, RolloutConfig(), max_examples=2)) == 2


@pytest.mark.parametrize("field, value", [("steps", 0), ("micro_batch_size", 0), ("max_examples", -1),
                                          ("demonstrations", " ")])
def test_config_refuses_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"WarmupConfig.{field}"):
        WarmupConfig(**{field: value})


@pytest.mark.parametrize("field, value", [("lr", 0.0), ("weight_decay", -0.1), ("warmup_steps", -1),
                                          ("max_grad_norm", -1.0)])
def test_optim_config_refuses_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"OptimConfig.{field} must be"):
        OptimConfig(**{field: value})


@pytest.fixture(scope="module")
def world_demos(world_paths, smol_tokenizer):
    """The first 8 oracle demonstrations of the seed-0 demo world (one- and two-hop)."""
    return load_demonstrations(world_paths["demonstrations"], smol_tokenizer, PROMPT, RolloutConfig(), max_examples=8)


def test_micro_batches_add_up_to_the_full_batch(smol_tokenizer, world_demos):
    policy = make_tiny_policy(smol_tokenizer, seed=1)
    batch = collate_demonstrations(world_demos[:4], smol_tokenizer.pad_token_id)
    assert len(set(batch["attention_mask"].sum(-1).tolist())) > 1  # rows of different lengths

    def grads(micro: int):
        policy.zero_grad(set_to_none=True)
        loss, tokens = nll_backward(policy, batch, micro, lambda loss: loss.backward())
        return loss, tokens, [p.grad.clone() for p in policy.parameters()]

    full_loss, full_tokens, full = grads(4)
    micro_loss, micro_tokens, micro = grads(1)
    assert full_tokens == micro_tokens == float(batch["loss_mask"].sum())
    assert abs(full_loss - micro_loss) < 1e-5
    assert max((a - b).abs().max().item() for a, b in zip(full, micro, strict=True)) <= 1e-5
    assert max(g.abs().max().item() for g in full) > 1e-3  # the gradients are not trivially zero


def test_warmup_steps_lower_the_nll_of_the_demonstrations(smol_tokenizer, world_demos):
    torch.manual_seed(0)
    policy = make_tiny_policy(smol_tokenizer, seed=2)
    before = demonstration_nll(policy, world_demos)
    config = WarmupConfig(steps=6, optim=OptimConfig(lr=1e-2), batch_size=4, micro_batch_size=2)
    module = WarmupModule(policy, world_demos, config)
    loader = module.train_dataloader()
    assert len(loader) == 6 and sum(b["input_ids"].shape[0] for b in loader) == 24  # 3 passes over 8
    L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False).fit(module)
    after = demonstration_nll(policy, world_demos)
    assert before > 10.0  # about log(vocabulary) = 10.8 for a random model
    assert after < before - 1.5, (before, after)
