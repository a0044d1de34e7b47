import pytest
import torch

from exercises.conftest import exercise
from minilora.train.adamw8bit import AdamW8bit

pytestmark = pytest.mark.ex4_4
ex = exercise("ex4_4_adam8bit_update")


def _grad(shape, step):
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(shape, generator=g) * torch.rand(shape, generator=g).pow(3) * (1.0 if step == 1 else 0.05)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_three_steps_follow_the_library(weight_decay):
    """Stated tolerance: the parameter to 1e-6 and the 8-bit codes within one level (≥ 99% equal) of
    minilora.train.AdamW8bit after 3 steps; the same arithmetic in another order may move a value across a
    rounding boundary, nothing more."""
    shape = (40, 300)  # 12,000 values: 47 blocks of 256, the last one partial
    start = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 0.1
    ref = torch.nn.Parameter(start.clone())
    opt = AdamW8bit([ref], lr=1e-2, weight_decay=weight_decay)
    param = start.clone()
    state = {"exp_avg_codes": torch.zeros(shape, dtype=torch.uint8), "exp_avg_absmax": torch.zeros(47),
             "exp_avg_sq_codes": torch.zeros(shape, dtype=torch.uint8), "exp_avg_sq_absmax": torch.zeros(47)}
    for step in (1, 2, 3):
        ref.grad = _grad(shape, step)
        opt.step()
        ex.adam8bit_update(param, _grad(shape, step), state, step, lr=1e-2, weight_decay=weight_decay)
        for key in state:
            assert state[key].dtype == opt.state[ref][key].dtype, f"{key} must stay {opt.state[ref][key].dtype}"
        torch.testing.assert_close(param, ref.detach(), rtol=0, atol=1e-6, msg=lambda m: f"step {step}: {m}")
        for key in ("exp_avg_codes", "exp_avg_sq_codes"):
            diff = (state[key].int() - opt.state[ref][key].int()).abs()
            assert diff.max() <= 1 and (diff == 0).float().mean() >= 0.99, f"step {step}: {key} differ"
        for key in ("exp_avg_absmax", "exp_avg_sq_absmax"):
            torch.testing.assert_close(state[key], opt.state[ref][key], rtol=1e-5, atol=0)


def test_the_first_step_moves_every_weight_by_about_lr():
    """Adam's first step is lr · sign(g) (m/√v = g/|g|), the 8-bit states' rounding aside."""
    param = torch.zeros(4096)
    g = torch.randn(4096, generator=torch.Generator().manual_seed(1))
    state = {"exp_avg_codes": torch.zeros(4096, dtype=torch.uint8), "exp_avg_absmax": torch.zeros(16),
             "exp_avg_sq_codes": torch.zeros(4096, dtype=torch.uint8), "exp_avg_sq_absmax": torch.zeros(16)}
    ex.adam8bit_update(param, g, state, 1, lr=1e-2)
    big = g.abs() > 0.1  # away from the smallest levels, where 8 bits are coarse
    assert torch.all((param[big] + 1e-2 * g[big].sign()).abs() < 1e-3)
    assert state["exp_avg_absmax"].max() > 0 and state["exp_avg_sq_codes"].max() > 0, "the state was not written"
