"""Shared fixtures. Nothing here touches the network: models are built in-process or come from
the embedded packages installed by bin/setup.sh."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


# ---------------------------------------------------------------- policies
@pytest.fixture(scope="session")
def embedded_policy():
    """The embedded SmolLM2-135M-Instruct (converted once into the cache by bin/setup.sh)."""
    from search_e1 import Policy

    return Policy.from_pretrained("embedded").eval()


@pytest.fixture(scope="session")
def smol_tokenizer(embedded_policy):
    return embedded_policy.tokenizer


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
