"""Fast LoRA (minilora/kernels/fast_lora.py): the hand-written backward equals autograd's.

Reference = the plain composition of LoraLinear modules (what PEFT does), differentiated by autograd.
Tolerances, relative to the largest entry of each reference tensor: float64 1e-10, fp32 1e-5 (against autograd in
the same dtype). fp16/bf16: measured against an fp32 truth, the fast path's error must stay within 2x the error
of autograd run in the same 16-bit dtype, plus 2e-3 (fp16) / 1.6e-2 (bf16) of the largest entry, plus 2 unit
roundoffs of the root-sum-square of the terms of the last sums behind each gradient (`rounding_scales`: where the
terms cancel).
In kernel mode "triton" the SwiGLU step runs the Triton kernel (the interpreter on CPU); in "reference" mode the
same Functions run their PyTorch fallback.
"""
import copy

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn

from minilora import ops
from minilora.kernels.fast_lora import LoRA_MLP, swiglu_backward_inplace
from minilora.linear4bit import dense_weight
from minilora.lora import LoraLinear, lora_weights


# The fast Functions take tensors (`LoraWeights`); these take LoraLinear modules, as the model's layers do.
def apply_lora_mlp(x, gate, up, down):
    return ops.lora_mlp(x, *map(lora_weights, (gate, up, down)))


def apply_lora_qkv(x, q, k, v):
    return ops.lora_projections(x, *map(lora_weights, (q, k, v)))


def apply_lora_o(x, o):
    return ops.lora_projections(x, lora_weights(o))[0]

TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def assert_close_scaled(actual, expected, tol):
    scale = expected.abs().max().item() if expected.numel() else 0.0
    err = (actual.to(expected.dtype) - expected).abs().max().item() if expected.numel() else 0.0
    assert err <= tol * scale + 1e-12, f"max error {err:.3g} exceeds {tol:g} x max |expected| = {tol * scale:.3g}"


def lora(d_in, d_out, r, dtype, bias=False, seed=0):
    torch.manual_seed(seed)
    layer = LoraLinear(nn.Linear(d_in, d_out, bias=bias), r=r, lora_alpha=2 * r)
    nn.init.normal_(layer.lora_B.weight, std=0.5)  # non-zero B, so every term of the backward matters
    layer.base_layer.requires_grad_(False)
    return layer.to(dtype)


def lora_grads(layers):
    out = []
    for layer in layers:
        out += [layer.lora_A.weight.grad, layer.lora_B.weight.grad]
        layer.zero_grad(set_to_none=True)
    return out


def run(fn, layers, x, dys):
    """Outputs and gradients (x, then each layer's A and B) of fn, differentiated by its own backward."""
    x = x.clone().requires_grad_()
    outs = fn(x, *layers)
    outs = outs if isinstance(outs, tuple) else (outs,)
    torch.autograd.backward(outs, [d.to(x.dtype) for d in dys])
    return [o.detach() for o in outs] + [x.grad] + lora_grads(layers)


def check(fast_fn, ref_fn, layers, x, dtype):
    """Compare the fast Function and autograd on the plain composition, output and every gradient.

    fp32/fp64: against autograd in the same dtype. fp16/bf16: both are measured against an fp32 (autograd) truth,
    and the fast path must be about as accurate as autograd in the same 16-bit dtype (2x its error, plus a little).
    """
    truth_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    with torch.no_grad():
        probe = ref_fn(x.to(dtype), *layers)
    shapes = [o.shape for o in (probe if isinstance(probe, tuple) else (probe,))]
    g = torch.Generator().manual_seed(1)
    dys = [torch.randn(s, generator=g, dtype=torch.float64).to(x.device) for s in shapes]
    truth = run(ref_fn, [copy.deepcopy(l).to(truth_dtype) for l in layers], x.to(truth_dtype), dys)
    fast = run(fast_fn, layers, x.to(dtype), dys)
    assert all(t.dtype == dtype for t in fast)
    if dtype in (torch.float32, torch.float64):
        for a, b in zip(fast, truth):
            assert_close_scaled(a, b, TOL[dtype])
        return
    plain = run(ref_fn, [copy.deepcopy(l) for l in layers], x.to(dtype), dys)
    for a, p, b, m in zip(fast, plain, truth, rounding_scales(ref_fn, layers, x, dys)):
        err_fast = (a.to(truth_dtype) - b).abs().max().item()
        err_autograd = (p.to(truth_dtype) - b).abs().max().item()
        allowed = 2 * err_autograd + TOL[dtype] * b.abs().max().item() + 2 * UNIT[dtype] * m + 1e-6
        assert err_fast <= allowed, (err_fast, err_autograd, allowed)


UNIT = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}  # unit roundoff


def rounding_scales(ref_fn, layers, x, dys) -> list[float]:
    """For each tensor `run` returns, the largest root-sum-square of the terms of the last sums behind an entry (0
    for the outputs): x's gradient sums over the outputs of the layers that read x, a LoRA weight gradient over
    tokens and, inside each term, over the rank or the layer's outputs — dB = s Σ_t dy_t (A x_t)ᵀ,
    dA = s Σ_t (Bᵀ dy_t) x_tᵀ. Rounding errors of 16-bit terms add up like a random walk, to about
    u·sqrt(Σ terms²); where the terms nearly cancel (hypothesis found 20 terms of up to 1.8 summing to 0.032) that
    is far more than the tensor's own largest entry suggests."""
    copies = [copy.deepcopy(layer).float() for layer in layers]
    seen = {}
    for i, layer in enumerate(copies):
        layer.register_forward_hook(lambda m, args, out, i=i: seen.__setitem__(("x", i), args[0].detach()))
        layer.register_full_backward_hook(lambda m, g_in, g_out, i=i: seen.__setitem__(("dy", i), g_out[0].detach()))
    outs = run(ref_fn, copies, x.float(), dys)
    dx_squares, scales = 0.0, []
    for i, layer in enumerate(copies):
        A2, B2, W2 = (p.detach() ** 2 for p in (layer.lora_A.weight, layer.lora_B.weight, layer.base_layer.weight))
        s2 = layer.scaling ** 2
        x2 = seen[("x", i)].reshape(-1, A2.shape[1]) ** 2  # (tokens, d_in)
        dy2 = seen[("dy", i)].reshape(-1, B2.shape[0]) ** 2  # (tokens, d_out)
        if torch.equal(seen[("x", i)], x.float()):  # a layer that reads x: its share of x's gradient
            dx_squares = dx_squares + dy2 @ W2 + s2 * dy2 @ B2 @ A2
        scales.append((s2 * (dy2 @ B2).T @ x2).max().sqrt().item())  # dA: terms B_o dy_to x_t
        scales.append((s2 * dy2.T @ (x2 @ A2.T)).max().sqrt().item())  # dB: terms dy_to A_r x_t
    n_outputs = len(outs) - 1 - len(scales)
    return [0.0] * n_outputs + [float(torch.as_tensor(dx_squares).max().sqrt())] + scales


def mlp_ref(x, gate, up, down):
    return down(nn.functional.silu(gate(x)) * up(x))


def qkv_ref(x, q, k, v):
    return q(x), k(x), v(x)


@settings(max_examples=12, deadline=None)
@given(N=st.integers(1, 13), C=st.integers(1, 24), I=st.integers(1, 40), r=st.integers(1, 6),
       dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]), mode=st.sampled_from(["triton",
                                                                                                    "reference"]))
@example(N=10, C=12, I=1, r=1, dtype=torch.bfloat16, mode="triton")  # up's dB: 20 terms of up to 1.8 sum to 0.032
@example(N=1, C=1, I=15, r=1, dtype=torch.float16, mode="triton")  # gate's dA: Bᵀdy_t over 15 outputs cancels
def test_mlp_matches_autograd(N, C, I, r, dtype, mode):
    layers = [lora(C, I, r, dtype, seed=1), lora(C, I, r, dtype, seed=2), lora(I, C, r, dtype, seed=3)]
    x = torch.randn(2, N, C)
    with ops.use_kernels(mode):
        check(apply_lora_mlp, mlp_ref, layers, x, dtype)


@settings(max_examples=10, deadline=None)
@given(N=st.integers(1, 9), C=st.integers(1, 24), nq=st.integers(1, 20), nkv=st.integers(1, 12),
       r=st.integers(1, 5), dtype=st.sampled_from([torch.float32, torch.bfloat16]), bias=st.booleans())
def test_qkv_matches_autograd(N, C, nq, nkv, r, dtype, bias):
    layers = [lora(C, nq, r, dtype, bias, 1), lora(C, nkv, r, dtype, bias, 2), lora(C, nkv, r, dtype, bias, 3)]
    check(apply_lora_qkv, qkv_ref, layers, torch.randn(N, C), dtype)


def test_o_matches_autograd():
    check(apply_lora_o, lambda x, o: o(x), [lora(12, 7, 3, torch.float32)], torch.randn(3, 4, 12), torch.float32)


@pytest.mark.parametrize("mode", ["triton", "reference"])
def test_backward_equals_autograd_in_float64(mode):
    layers = [lora(10, 14, 3, torch.float64, seed=1), lora(10, 14, 3, torch.float64, seed=2),
              lora(14, 10, 3, torch.float64, seed=3)]
    with ops.use_kernels(mode):
        check(apply_lora_mlp, mlp_ref, layers, torch.randn(5, 10, dtype=torch.float64), torch.float64)
    qkv = [lora(10, 8, 2, torch.float64, True, s) for s in (4, 5, 6)]
    check(apply_lora_qkv, qkv_ref, qkv, torch.randn(5, 10, dtype=torch.float64), torch.float64)


@settings(max_examples=5, deadline=None)
@given(N=st.integers(1, 3), C=st.integers(1, 4), I=st.integers(1, 5))
def test_reference_gradcheck_float64(N, C, I):
    gate, up, down = lora(C, I, 2, torch.float64, seed=1), lora(C, I, 2, torch.float64, seed=2), \
        lora(I, C, 2, torch.float64, seed=3)
    params = [gate.lora_A.weight, gate.lora_B.weight, down.lora_A.weight]
    x = torch.randn(N, C, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *_: mlp_ref(x, gate, up, down), (x, *params))


def test_swiglu_backward_reuses_its_three_buffers():
    for mode in ("triton", "reference"):
        dh, e, g = torch.randn(3, 7), torch.randn(3, 7), torch.randn(3, 7)
        ptrs = [t.data_ptr() for t in (dh, e, g)]
        expected_h = nn.functional.silu(e) * g
        with ops.use_kernels(mode):
            h, de, dg = swiglu_backward_inplace(dh, e, g, use_kernel=mode == "triton")
        assert [t.data_ptr() for t in (h, de, dg)] == ptrs
        torch.testing.assert_close(h, expected_h)


def test_nf4_base_is_dequantized_just_in_time():
    from minilora.linear4bit import Linear4bit
    torch.manual_seed(0)
    layers = []
    for d_in, d_out in [(64, 128), (64, 128), (128, 64)]:
        layer = LoraLinear(Linear4bit.from_linear(nn.Linear(d_in, d_out, bias=False)), r=4, lora_alpha=8)
        nn.init.normal_(layer.lora_B.weight, std=0.5)
        layers.append(layer)
    assert dense_weight(layers[0].base_layer, torch.float32).shape == (128, 64)
    x = torch.randn(5, 64)
    xf, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_f = apply_lora_mlp(xf, *layers)
    out_f.sum().backward()
    grads_f = lora_grads(layers)
    out_r = mlp_ref(xr, *layers)
    out_r.sum().backward()
    torch.testing.assert_close(out_f, out_r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xf.grad, xr.grad, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads_f, lora_grads(layers)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# --- bad input ------------------------------------------------------------------------------------------------
def test_refuses_dropout_merged_and_plain_layers():
    a, b, c = lora(4, 6, 2, torch.float32), lora(4, 6, 2, torch.float32), lora(6, 4, 2, torch.float32)
    x = torch.randn(2, 4)
    with pytest.raises(TypeError, match="LoraLinear"):
        apply_lora_mlp(x, nn.Linear(4, 6), b, c)
    a.lora_dropout = nn.Dropout(0.1)
    with pytest.raises(ValueError, match="lora_dropout=0"):
        apply_lora_mlp(x, a, b, c)
    a.lora_dropout = nn.Identity()
    b.merge()
    with pytest.raises(ValueError, match="merged"):
        apply_lora_mlp(x, a, b, c)


def test_refuses_trainable_base_bias_and_integer_input():
    q = lora(4, 6, 2, torch.float32, bias=True)
    q.base_layer.bias.requires_grad_(True)
    with pytest.raises(ValueError, match="trainable parameter"):
        apply_lora_o(torch.randn(2, 4), q)
    with pytest.raises(TypeError, match="floating-point"):
        apply_lora_o(torch.ones(2, 4, dtype=torch.long), lora(4, 6, 2, torch.float32))


def test_second_backward_is_refused():
    layers = [lora(4, 6, 2, torch.float32), lora(4, 6, 2, torch.float32), lora(6, 4, 2, torch.float32)]
    out = LoRA_MLP.apply(torch.randn(3, 4, requires_grad=True), False,
                         *(p for w in map(lora_weights, layers) for p in ((w.weight, w.bias), w.A, w.B, w.scaling)))
    out.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="only once"):
        out.sum().backward()


def test_dense_weight_explains_unusable_layers():
    with pytest.raises(TypeError, match="nn.Linear or a Linear4bit"):
        dense_weight(nn.ReLU(), torch.float32)


# --- compiled on the GPU --------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_mlp_and_qkv_match_autograd(dtype):
    layers = [lora(256, 688, 16, dtype, seed=s).cuda() for s in (1, 2)] + [lora(688, 256, 16, dtype, seed=3).cuda()]
    check(apply_lora_mlp, mlp_ref, layers, torch.randn(2, 77, 256, device="cuda"), dtype)
    qkv = [lora(256, n, 8, dtype, seed=s).cuda() for s, n in ((1, 256), (2, 64), (3, 64))]
    check(apply_lora_qkv, qkv_ref, qkv, torch.randn(130, 256, device="cuda"), dtype)
