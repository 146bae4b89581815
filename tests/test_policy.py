"""Policy: loading errors, GGUF conversion round trip, the shared log-prob function."""

from __future__ import annotations

import math

import pytest
import torch

from search_e1.policy import (
    Policy,
    PolicyConfig,
    PolicyLoadError,
    convert_gguf,
    embedded_gguf_path,
    logprobs_from_logits,
    position_ids_from_mask,
)


def test_logprobs_and_entropy_hand_derived():
    # logits = log([1, 2, 3]) -> p = [1/6, 2/6, 3/6]
    logits = torch.log(torch.tensor([[1.0, 2.0, 3.0]]))
    lp, ent = logprobs_from_logits(logits, torch.tensor([2]), with_entropy=True)
    assert lp.item() == pytest.approx(math.log(0.5), abs=1e-6)
    # H = -(1/6 ln 1/6 + 1/3 ln 1/3 + 1/2 ln 1/2) = 1.011404...
    assert ent.item() == pytest.approx(1.0114043, abs=1e-6)
    # temperature 2 on logits [0, 2 ln 2]: p = [1/3, 2/3]; log p[1] = ln(2/3)
    lp2, _ = logprobs_from_logits(torch.tensor([[0.0, 2 * math.log(2.0)]]), torch.tensor([1]), 2.0)
    assert lp2.item() == pytest.approx(math.log(2 / 3), abs=1e-6)


def test_chunked_logprobs_match_unchunked():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 50, generator=g)
    targets = torch.randint(0, 50, (3, 7), generator=g)
    ref = torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)
    ref_ent = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)
    lp, ent = logprobs_from_logits(logits, targets, with_entropy=True, chunk_size=4)
    torch.testing.assert_close(lp, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent, ref_ent, atol=1e-5, rtol=0)


def test_token_logprobs_start_scores_only_later_columns(tiny_policy):
    torch.manual_seed(3)
    ids = torch.randint(3, 300, (2, 12))
    mask = torch.ones_like(ids)
    loss_mask = torch.zeros(2, 12)
    loss_mask[:, 7:] = 1.0
    with torch.no_grad():
        full, ent = tiny_policy.token_logprobs(ids, mask, loss_mask, with_entropy=True)
        part, ent_part = tiny_policy.token_logprobs(ids, mask, loss_mask, with_entropy=True, start=5)
    assert torch.allclose(part, full, atol=1e-6) and torch.allclose(ent_part, ent, atol=1e-5)
    assert (full[:, :7] == 0).all() and (full[:, 7:] < 0).all()  # masked columns are exactly 0
    with torch.no_grad():
        unmasked, _ = tiny_policy.token_logprobs(ids, mask, start=5)
    assert (unmasked[:, :5] == 0).all() and (unmasked[:, 5:] < 0).all()


def test_position_ids_skip_left_padding():
    assert position_ids_from_mask(torch.tensor([[0, 0, 1, 1, 1]])).tolist() == [[0, 0, 0, 1, 2]]


def test_token_logprobs_match_slow_reference_and_ignore_padding(tiny_policy):
    torch.manual_seed(0)
    ids = torch.randint(3, 200, (1, 9))
    slow = []
    with torch.no_grad():
        for t in range(1, 9):  # one forward per prefix: the slowest possible reference
            logits = tiny_policy.model(ids[:, :t]).logits[0, -1]
            slow.append(torch.log_softmax(logits, -1)[ids[0, t]].item())
        fast, ent = tiny_policy.token_logprobs(ids, torch.ones_like(ids), with_entropy=True)
    assert torch.allclose(fast[0, 1:], torch.tensor(slow), atol=1e-5)
    assert (ent[0, 1:] > 0).all()
    # the same row left-padded by 3 gives the same log-probs on its real tokens
    pad = tiny_policy.tokenizer.pad_token_id
    padded = torch.cat([torch.full((1, 3), pad), ids], 1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones_like(ids)], 1)
    with torch.no_grad():
        lp_pad, _ = tiny_policy.token_logprobs(padded, mask)
    assert torch.allclose(lp_pad[0, 4:], fast[0, 1:], atol=1e-5)


def test_reference_is_frozen_copy(tiny_policy):
    ref = tiny_policy.reference()
    p, q = next(tiny_policy.model.parameters()), next(ref.model.parameters())
    assert torch.equal(p, q) and p.data_ptr() != q.data_ptr()
    assert not any(x.requires_grad for x in ref.parameters()) and not ref.training
    with torch.no_grad():
        p.add_(1.0)  # training the policy leaves the reference unchanged
    assert not torch.equal(p, q)
    with torch.no_grad():
        p.sub_(1.0)


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(PolicyLoadError, match="does not exist"):
        Policy.from_pretrained(tmp_path / "nope")
    with pytest.raises(PolicyLoadError, match="without config.json"):
        Policy.from_pretrained(tmp_path)
    txt = tmp_path / "model.bin"
    txt.write_text("x")
    with pytest.raises(PolicyLoadError, match="not a .gguf"):
        Policy.from_pretrained(txt)
    from transformers import BertConfig

    BertConfig(
        vocab_size=10,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=1,
        intermediate_size=8,
        architectures=["BertModel"],
    ).save_pretrained(tmp_path / "bert")
    with pytest.raises(PolicyLoadError, match="not a causal language model"):
        Policy.from_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="PolicyConfig.dtype"):
        PolicyConfig(dtype="float8")


def test_missing_chat_template_is_reported(tiny_policy):
    import copy

    tok = copy.deepcopy(tiny_policy.tokenizer)
    tok.chat_template = None
    with pytest.raises(PolicyLoadError, match="no chat template"):
        Policy(tiny_policy.model, tok, require_chat_template=True)
    Policy(tiny_policy.model, tok, require_chat_template=False)  # allowed when not required


@pytest.mark.slow
def test_gguf_conversion_round_trip(tmp_path, embedded_policy):
    """GGUF -> HF directory -> load: same tokenizer, same chat template, same logits."""
    from transformers import AutoModelForCausalLM

    gguf = embedded_gguf_path()
    out = convert_gguf(gguf, tmp_path / "converted")
    assert (out / "config.json").is_file() and not list(
        tmp_path.glob("converted.*")
    )  # no temp left
    converted = Policy.from_pretrained(out)
    direct = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    text = "<|im_start|>user\nWho wrote the Odyssey?<|im_end|>\n"
    ids = converted.tokenizer(text, return_tensors="pt").input_ids
    assert ids.tolist() == embedded_policy.tokenizer(text, return_tensors="pt").input_ids.tolist()
    assert converted.tokenizer.chat_template == embedded_policy.tokenizer.chat_template
    with torch.no_grad():
        a, b = direct(ids).logits, converted.model(ids).logits
    assert (a - b).abs().max().item() < 1e-5
    assert converted.eos_token_ids == [converted.tokenizer.convert_tokens_to_ids("<|im_end|>")]
