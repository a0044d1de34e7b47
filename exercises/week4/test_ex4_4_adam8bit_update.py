import math

import pytest
import torch

from exercises.conftest import exercise
from minilora.quant.dynamic8 import dequantize_blockwise_8bit, dynamic_map, quantize_blockwise_8bit
from minilora.train.adamw8bit import AdamW8bit

pytestmark = pytest.mark.ex4_4
ex = exercise("ex4_4_adam8bit_update")


MISTAKES = {  # the usual slips, each with what to do instead
    "no bias correction": "divide m by (1 − β1^step) and √v by √(1 − β2^step): early steps are otherwise too small",
    "L2 weight decay": "AdamW's decay is decoupled: shrink the parameter by (1 − lr·wd), do not add wd·param to g",
    "weight decay after the update": "shrink the parameter by (1 − lr·wd) BEFORE the Adam step, as step 3 says",
    "betas swapped": "β1 (0.9) is m's decay and β2 (0.999) is v's",
    "v on the signed map": "v ≥ 0 is stored with the UNSIGNED map, dynamic_map(False) (one more fraction bit)",
    "v from g, not g squared": "v averages g², the squared gradient",
    "state not written back": "copy the requantized codes and absmax INTO the state's tensors with .copy_ — "
                              "assigning a new tensor to a local name leaves the caller's state as it was",
}


def adam8bit_step(param, grad, state, step, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                     mistake=None):
    """One 8-bit Adam step as the stub describes it, or with one named `mistake` (one of MISTAKES)."""
    beta1, beta2 = (betas[1], betas[0]) if mistake == "betas swapped" else betas
    signed_v = mistake == "v on the signed map"
    maps = {"exp_avg": dynamic_map(True), "exp_avg_sq": dynamic_map(signed_v)}
    m = dequantize_blockwise_8bit(state["exp_avg_codes"], state["exp_avg_absmax"], maps["exp_avg"], 256)
    v = dequantize_blockwise_8bit(state["exp_avg_sq_codes"], state["exp_avg_sq_absmax"], maps["exp_avg_sq"], 256)
    g = grad.float()
    if mistake == "L2 weight decay":
        g = g + weight_decay * param
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * (g if mistake == "v from g, not g squared" else g * g)
    c1, c2 = (1.0, 1.0) if mistake == "no bias correction" else (1 - beta1 ** step, 1 - beta2 ** step)
    if mistake not in ("L2 weight decay", "weight decay after the update"):
        param.mul_(1 - lr * weight_decay)
    param.sub_(lr / c1 * m / (v.sqrt() / math.sqrt(c2) + eps))
    if mistake == "weight decay after the update":
        param.mul_(1 - lr * weight_decay)
    for name, value in (("exp_avg", m), ("exp_avg_sq", v)):
        codes, absmax = quantize_blockwise_8bit(value, maps[name], 256, rounding="grid")
        if mistake == "state not written back":
            state = dict(state)  # a new dict entry, not the caller's tensors
            state[f"{name}_codes"], state[f"{name}_absmax"] = codes, absmax
        else:
            state[f"{name}_codes"].copy_(codes)
            state[f"{name}_absmax"].copy_(absmax)


def name_the_mistake(got_param, got_state, before_param, before_state, grad, step, **hyper):
    """The mistakes in MISTAKES whose step, from the same starting point, gives the learner's parameter and state."""
    found = []
    for mistake, fix in MISTAKES.items():
        param, state = before_param.clone(), {k: v.clone() for k, v in before_state.items()}
        adam8bit_step(param, grad, state, step, **hyper, mistake=mistake)
        same_state = all(torch.equal(got_state[k], state[k]) for k in ("exp_avg_codes", "exp_avg_sq_codes"))
        if torch.allclose(got_param, param, rtol=0, atol=1e-7, equal_nan=True) and same_state:
            found.append(f"{mistake} ({fix})")
    return ("Your step matches a known mistake: " + "; or ".join(found)) if found else \
        "Follow the stub's four steps in order: dequantize, update m and v, update the parameter, requantize"


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
        before_param, before_state = param.clone(), {k: v.clone() for k, v in state.items()}
        ex.adam8bit_update(param, _grad(shape, step), state, step, lr=1e-2, weight_decay=weight_decay)
        for key in state:
            assert state[key].dtype == opt.state[ref][key].dtype, f"{key} must stay {opt.state[ref][key].dtype}"
        problems = []
        if not torch.allclose(param, ref.detach(), rtol=0, atol=1e-6):
            problems.append(f"the parameter differs by up to {(param - ref.detach()).abs().max().item():.3g}")
        for key in ("exp_avg_codes", "exp_avg_sq_codes"):
            diff = (state[key].int() - opt.state[ref][key].int()).abs()
            if not (diff.max() <= 1 and (diff == 0).float().mean() >= 0.99):
                problems.append(f"{int((diff > 1).sum())} of {diff.numel()} {key} are more than one level off")
        for key in ("exp_avg_absmax", "exp_avg_sq_absmax"):
            if not torch.allclose(state[key], opt.state[ref][key], rtol=1e-5, atol=0):
                problems.append(f"{key} differs")
        if problems:
            hint = name_the_mistake(param, state, before_param, before_state, _grad(shape, step), step, lr=1e-2,
                                    weight_decay=weight_decay)
            pytest.fail(f"step {step}: " + "; ".join(problems) + f". {hint}")


def test_the_first_step_moves_every_weight_by_about_lr():
    """Adam's first step is lr · sign(g) (m/√v = g/|g|), the 8-bit states' rounding aside."""
    param = torch.zeros(4096)
    g = torch.randn(4096, generator=torch.Generator().manual_seed(1))
    state = {"exp_avg_codes": torch.zeros(4096, dtype=torch.uint8), "exp_avg_absmax": torch.zeros(16),
             "exp_avg_sq_codes": torch.zeros(4096, dtype=torch.uint8), "exp_avg_sq_absmax": torch.zeros(16)}
    before_param, before_state = param.clone(), {k: v.clone() for k, v in state.items()}
    ex.adam8bit_update(param, g, state, 1, lr=1e-2)
    big = g.abs() > 0.1  # away from the smallest levels, where 8 bits are coarse
    moved = torch.all((param[big] + 1e-2 * g[big].sign()).abs() < 1e-3)
    written = state["exp_avg_absmax"].max() > 0 and state["exp_avg_sq_codes"].max() > 0
    if not (moved and written):
        what = "the state was not written" if not written else "a weight did not move by about lr · sign(g)"
        pytest.fail(f"step 1: {what}. {name_the_mistake(param, state, before_param, before_state, g, 1, lr=1e-2)}")
