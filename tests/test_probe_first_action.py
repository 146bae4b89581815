"""bin/probe_first_action.py: the probability of a tag after a prefix, against step-by-step softmax."""

from __future__ import annotations

import pytest
import torch
from conftest import load_script, make_tiny_policy


@pytest.fixture(scope="module")
def probe():
    return load_script("probe_first_action")


def test_tag_probability_is_the_product_of_next_token_probabilities(probe, smol_tokenizer):
    model = make_tiny_policy(smol_tokenizer).model
    prefix, tag = [5, 9, 11], [17, 23]
    with torch.no_grad():
        got = probe.tag_probability(model, prefix, tag, temperature=0.7)
        first = torch.softmax(model(torch.tensor([prefix])).logits[0, -1] / 0.7, -1)[17]
        second = torch.softmax(model(torch.tensor([prefix + [17]])).logits[0, -1] / 0.7, -1)[23]
    assert got == pytest.approx(float(first * second), rel=1e-5)
    assert 0 < got < 1
