"""search_e1.distributed: one process (the identities every single-GPU run relies on) and two gloo
processes (the collectives, the ranks' shares, FSDP2 sharding and the full state dict)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from search_e1.distributed import (
    any_rank,
    decoder_layers,
    full_state_dict,
    is_distributed,
    is_sharded,
    max_over_ranks,
    rank_share,
    rank_world,
)


def test_one_process_is_rank_0_of_1_and_its_collectives_are_identities():
    assert rank_world() == (0, 1) and not is_distributed()
    assert max_over_ranks(7) == 7 and any_rank(True) and not any_rank(False)
    assert rank_share(range(5)) == [0, 1, 2, 3, 4] and rank_share("abc") == ["a", "b", "c"]


def test_decoder_layers_and_full_state_dict_of_an_unsharded_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                         num_attention_heads=2, num_key_value_heads=1))
    assert decoder_layers(model) == list(model.model.layers) and len(decoder_layers(model)) == 3
    with pytest.raises(ValueError, match="cannot find the decoder layers of Linear"):
        decoder_layers(nn.Linear(2, 2))
    assert not is_sharded(model)
    state = full_state_dict(model)
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) and not state[k].requires_grad for k, v in model.state_dict().items())


@pytest.mark.slow
def test_two_ranks_share_items_reduce_and_shard(tmp_path):
    """Two gloo processes: disjoint shares covering the items, the maximum and any() over ranks,
    FSDP2 applied once, the full state dict complete on rank 0 (empty on rank 1) or on every rank."""
    out = tmp_path / "seen"
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("fsdp_distributed.py")), str(out)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads(Path(f"{out}.{r}.json").read_text()) for r in (0, 1))
    assert r0["rank_world"] == [0, 2] and r1["rank_world"] == [1, 2]
    assert r0["is_distributed"] and r1["is_distributed"]
    assert r0["share"] == [0, 2, 4, 6] and r1["share"] == [1, 3, 5]
    assert r0["max"] == r1["max"] == 13
    assert r0["any_rank_1"] and r1["any_rank_1"] and not r0["any_none"] and not r1["any_none"]
    assert r0["sharded"] and r1["sharded"]
    assert r0["full_equal"] and r0["full_keys"] > 0 and r1["full_keys"] == 0
    assert r0["everywhere_equal"] and r1["everywhere_equal"]
