"""BF16StateAdamW: stochastic rounding, torch's AdamW steps, half the state, state dicts."""

import pytest
import torch

from search_e1.optim import BF16StateAdamW, round_to_bf16
from search_e1.rounds.base import OptimConfig, make_optimizer


def test_round_to_bf16_keeps_exact_values_and_picks_a_neighbour():
    exact = torch.tensor([0.0, 1.0, -2.5, 3.0e-5, 1.0078125], dtype=torch.bfloat16).float()
    assert torch.equal(round_to_bf16(exact).float(), exact)
    x = torch.randn(10_000) * torch.logspace(-6, 6, 10_000)
    r = round_to_bf16(x, torch.Generator().manual_seed(0)).float()
    down = x.to(torch.bfloat16).float()  # the nearest neighbour; the other one is one bf16 step away
    step = (torch.nextafter(x.abs().to(torch.bfloat16), torch.tensor(float("inf"), dtype=torch.bfloat16)).float()
            - x.abs().to(torch.bfloat16).float())
    assert torch.all((r - x).abs() <= step + 1e-30)
    assert torch.all(torch.sign(r) == torch.sign(x))
    assert not torch.equal(r, down)  # some values went to the farther neighbour


@pytest.mark.parametrize("x", [1.0 + 2.0**-10, -(3.0 + 2.0**-7) * 2.0**-20])
def test_round_to_bf16_is_unbiased(x):
    """1 + 2^-10 lies an eighth of the way from bf16 1.0 to 1.0078125: round-to-nearest gives 1.0
    every time, stochastic rounding goes up one time in eight and averages to x."""
    n = 200_000
    r = round_to_bf16(torch.full((n,), x), torch.Generator().manual_seed(1)).double()
    lo, hi = r.min().item(), r.max().item()
    assert lo != hi and abs(hi - lo) <= abs(x) * 2**-7  # two neighbours, one bf16 step apart
    frac_up = ((r.abs() == max(abs(lo), abs(hi))).double().mean()).item()
    expected = (abs(x) - min(abs(lo), abs(hi))) / abs(hi - lo)
    assert frac_up == pytest.approx(expected, abs=4 * (expected * (1 - expected) / n) ** 0.5)
    assert r.mean().item() == pytest.approx(x, rel=1e-4)


def _net_and_data(seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
    x = torch.randn(256, 16)
    y = (x[:, :4].sum(1, keepdim=True)).sin()
    return net, x, y


def _train(net, opt, x, y, steps):
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _first_step_pair(fused: bool):
    """torch's AdamW and BF16StateAdamW on two copies of one net after one step, which must leave
    equal weights (the moments are rounded only when stored)."""
    (net_a, x, y), (net_b, _, _) = _net_and_data(), _net_and_data()
    ref = torch.optim.AdamW(net_a.parameters(), lr=3e-3, weight_decay=0.1, fused=fused)
    opt = BF16StateAdamW(net_b.parameters(), lr=3e-3, weight_decay=0.1, fused=fused)
    _train(net_a, ref, x, y, 1)
    _train(net_b, opt, x, y, 1)
    for a, b in zip(net_a.parameters(), net_b.parameters(), strict=True):
        assert torch.equal(a, b)
    return net_a, ref, net_b, opt, x, y


@pytest.mark.parametrize("fused", [True, False])
def test_bf16_state_adamw_follows_torch_adamw(fused):
    """First step: exactly torch's (the moments are rounded only when stored). 200 steps: the same
    loss curve within 2%, weights within 2% of their norm, half the state memory."""
    net_a, ref, net_b, opt, x, y = _first_step_pair(fused)
    la = _train(net_a, ref, x, y, 199)
    lb = _train(net_b, opt, x, y, 199)
    assert la[-1] < 0.2 * la[0]  # it learns: the comparison is not between two flat lines
    assert lb[-1] == pytest.approx(la[-1], rel=0.02)
    for a, b in zip(net_a.parameters(), net_b.parameters(), strict=True):
        assert (a - b).norm() <= 0.02 * a.norm()
    for s_ref, s in zip(ref.state.values(), opt.state.values(), strict=True):
        assert s["exp_avg"].dtype == s["exp_avg_sq"].dtype == torch.bfloat16
        assert s["exp_avg"].nbytes * 2 == s_ref["exp_avg"].nbytes
        assert int(s["step"]) == int(s_ref["step"]) == 200
        assert torch.all(s["exp_avg_sq"] >= 0)


def test_bf16_state_adamw_steps_large_parameters_in_pieces(monkeypatch):
    """Parameters longer than `CHUNK` are stepped a piece at a time (7 elements here, uneven last
    piece): the first step is still exactly torch's, the step counter counts steps, not pieces."""
    import search_e1.optim as optim

    monkeypatch.setattr(optim, "CHUNK", 7)
    net_a, ref, net_b, opt, x, y = _first_step_pair(fused=True)
    _train(net_a, ref, x, y, 9)
    _train(net_b, opt, x, y, 9)
    for a, b in zip(net_a.parameters(), net_b.parameters(), strict=True):
        assert (a - b).norm() <= 0.01 * a.norm()
    assert all(int(s["step"]) == 10 for s in opt.state.values())


def test_bf16_second_moment_keeps_moving_where_round_to_nearest_freezes():
    """A constant gradient g after the second moment settled at g^2/4: each step adds
    0.001 * (g^2 - v), under half a bf16 step of v, so round-to-nearest storage never moves;
    stochastic rounding follows the float32 moment (the bias-corrected moment here)."""
    p = torch.nn.Parameter(torch.zeros(4096))
    opt = BF16StateAdamW([p], lr=0.0, betas=(0.9, 0.999))
    p.grad = torch.full_like(p, 2.0)
    opt.step()  # creates the state
    state = opt.state[p]
    state["exp_avg_sq"].fill_(1.0)  # g^2/4
    state["step"].fill_(10_000.0)  # bias corrections ~ 1
    v = torch.ones(4096, dtype=torch.float64)
    for _ in range(300):
        opt.step()
        v = 0.999 * v + 0.001 * 4.0
    rtn = torch.ones((), dtype=torch.bfloat16)
    for _ in range(300):
        rtn = (0.999 * rtn.float() + 0.001 * 4.0).to(torch.bfloat16)
    assert rtn.item() == 1.0  # round-to-nearest storage: frozen
    stored = state["exp_avg_sq"].double().mean().item()
    assert v[0].item() == pytest.approx(1.0 + 3.0 * (1 - 0.999**300), rel=1e-9)  # 1.78
    assert stored == pytest.approx(v[0].item(), rel=0.01)


def test_state_dict_round_trip_keeps_bf16_moments():
    net, x, y = _net_and_data()
    opt = BF16StateAdamW(net.parameters(), lr=1e-3)
    _train(net, opt, x, y, 3)
    saved = opt.state_dict()
    fresh = BF16StateAdamW(net.parameters(), lr=1e-3)
    fresh.load_state_dict(saved)
    for s_old, s_new in zip(opt.state.values(), fresh.state.values(), strict=True):
        assert s_new["exp_avg"].dtype == torch.bfloat16
        assert torch.equal(s_new["exp_avg"], s_old["exp_avg"]) and torch.equal(s_new["exp_avg_sq"], s_old["exp_avg_sq"])
        assert int(s_new["step"]) == 3
    _train(net, fresh, x, y, 1)  # and it steps on


def test_fused_adamw_takes_the_same_steps_as_the_multi_tensor_one():
    """`OptimConfig.fused` (the default) changes how AdamW computes, not what: three steps of the
    fused and the foreach implementation leave the same weights (float32 summation order only)."""
    torch.manual_seed(0)
    nets = [torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    x, y = torch.randn(8, 16), torch.randn(8, 4)
    start = [p.detach().clone() for p in nets[0].parameters()]
    opts = [make_optimizer(net, OptimConfig(lr=1e-2, weight_decay=0.1, fused=fused))["optimizer"]
            for net, fused in zip(nets, (True, False), strict=True)]
    assert opts[0].defaults["fused"] and not opts[1].defaults["fused"]
    for _ in range(3):
        for net, opt in zip(nets, opts, strict=True):
            torch.nn.functional.mse_loss(net(x), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    moved = min((a - b).abs().max().item() for a, b in zip(nets[0].parameters(), start, strict=True))
    assert moved > 1e-3  # every tensor took real steps
    assert max((a - b).abs().max().item() for a, b in zip(nets[0].parameters(), nets[1].parameters(),
                                                           strict=True)) <= 1e-6


def test_make_optimizer_picks_the_state_dtype():
    net = torch.nn.Linear(4, 4)
    assert type(make_optimizer(net, OptimConfig(lr=1e-3))["optimizer"]) is torch.optim.AdamW
    assert isinstance(make_optimizer(net, OptimConfig(lr=1e-3, state_dtype="bfloat16"))["optimizer"], BF16StateAdamW)
    with pytest.raises(ValueError, match="state_dtype"):
        OptimConfig(state_dtype="float16")


@pytest.mark.slow
def test_bf16_state_adamw_steps_fsdp2_shards(tmp_path):
    """Under FSDP2 (gloo, 2 CPU processes) the step runs on each rank's shards: the first step
    equals torch's AdamW on an unsharded copy exactly, the next four stay within 1e-3; the sharded
    state written by save_optimizer_state loads into a fresh optimiser bit for bit."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "diffs.json"
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("fsdp_optim.py")), str(out)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    diffs = result["diffs"]
    assert diffs[0] == 0.0
    assert 0 < max(diffs) <= 1e-3
    assert result["restored"] is True and result["saved_steps"] == 5  # shards saved and read back exactly


def test_a_failed_optimiser_state_write_is_one_clear_error(tmp_path, monkeypatch):
    """A full disk fails inside torch's checkpoint writer ("unexpected pos", wrapped per rank in a
    `CheckpointException`, no `Exception`): the user gets the directory, the writer's own line and
    the free space, and no half-written state is left behind."""
    from search_e1.errors import UserInputError
    from search_e1.optim import save_optimizer_state

    net, x, y = _net_and_data()
    opt = BF16StateAdamW(net.parameters(), lr=1e-3)
    _train(net, opt, x, y, 1)

    def full_disk(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", full_disk)
    target = tmp_path / "checkpoints" / ".optimizer_grpo"
    with pytest.raises(UserInputError) as caught:
        save_optimizer_state(net, opt, target)
    message = str(caught.value)
    assert str(target) in message and "unexpected pos 704 vs 598" in message and "GB free there" in message
    assert "\n" not in message and not target.exists()
