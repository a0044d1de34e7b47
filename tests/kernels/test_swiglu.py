"""Triton SwiGLU/GeGLU vs the PyTorch references: outputs and gradients, odd shapes, fp32/fp16/bf16.

On CPU the kernels run in the Triton interpreter (conftest sets TRITON_INTERPRET=1); the same tests marked `gpu` run
compiled on CUDA.

Tolerances. The truth is the reference evaluated in float64 on the very same (rounded) inputs. The kernels compute in
fp32 and round once on store, so every element must lie within ONE unit in the last place (ulp) of the output dtype
at the truth's magnitude, plus a small absolute slack for values near zero (fp32 arithmetic inside the kernel:
1e-5 · max|truth|). fp32 outputs: rtol = atol = 1e-5 (relative to max|truth|). The interpreter rounds fp32 -> bf16
by truncation (torch rounds to nearest), which is still within one ulp.
"""
import pytest
import torch
from helpers.ulp import DEVICES, DTYPES, assert_within_ulp
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from minilora import ops
from minilora.kernels.swiglu import geglu_fast, geglu_reference, swiglu_fast, swiglu_reference

# The interpreter evaluates sigmoid as 1 / (1 + exp(-x)) in numpy: exp overflows to inf for very negative x and the
# result is still the correct 0. numpy warns about it; that warning says nothing about the kernel.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")




ACTS = {
    "silu": (lambda g, u, **kw: swiglu_fast(g, u, **kw), lambda g, u: swiglu_reference(g, u)),
    "gelu": (lambda g, u, **kw: geglu_fast(g, u, "none", **kw), lambda g, u: geglu_reference(g, u, "none")),
    "gelu_tanh": (lambda g, u, **kw: geglu_fast(g, u, "tanh", **kw), lambda g, u: geglu_reference(g, u, "tanh")),
}


def _check(act, shape, dtype, device, seed, inplace):
    fast, ref = ACTS[act]
    gen = torch.Generator().manual_seed(seed)
    g0 = (torch.randn(shape, generator=gen) * 3).to(dtype)
    u0 = torch.randn(shape, generator=gen).to(dtype)
    dh = torch.randn(shape, generator=gen).to(dtype)
    # truth: the reference in float64 on the same rounded inputs
    g64, u64 = g0.double().requires_grad_(), u0.double().requires_grad_()
    h64 = ref(g64, u64)
    h64.backward(dh.double())
    # kernel: gate/up as non-leaf tensors (like a projection's output), so the backward may reuse their memory
    gl = g0.to(device).requires_grad_()
    ul = u0.to(device).requires_grad_()
    h = fast(gl * 1, ul * 1, inplace_backward=inplace)
    h.backward(dh.to(device))
    assert h.dtype == dtype and h.shape == g0.shape
    # GELU's tail: 1 + erf(g/√2) cancels for g ≪ 0, so fp32 arithmetic leaves an absolute error of a few fp32 ulps
    # of |g·u| (|g|·|u|·2^-24 per rounding) on values far smaller than that; SwiGLU has no such cancellation
    atol = float((g64 * u64).abs().max() * dh.double().abs().max().clamp_min(1) * 2**-21) if act.startswith("gelu") else 1e-30
    assert_within_ulp(h, h64, dtype, atol=atol)
    assert_within_ulp(gl.grad, g64.grad, dtype, atol=atol)
    assert_within_ulp(ul.grad, u64.grad, dtype, atol=atol)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=10, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate])  # no shrinking: slow in the interpreter
@given(act=st.sampled_from(sorted(ACTS)), dtype=st.sampled_from(DTYPES),
       shape=st.sampled_from([(3, 423, 7), (1, 1), (5, 1029), (2, 3, 17), (4097,)]),
       seed=st.integers(0, 2**16), inplace=st.booleans())
def test_matches_reference(device, act, dtype, shape, seed, inplace):
    _check(act, shape, dtype, device, seed, inplace)


@pytest.mark.parametrize("device", DEVICES)
def test_odd_shape_all_dtypes(device):
    for dtype in DTYPES:
        _check("silu", (3, 423, 73), dtype, device, 0, None)


def test_backward_reuses_input_buffers():
    g = torch.randn(5, 33).requires_grad_()
    u = torch.randn(5, 33).requires_grad_()
    gate, up = g * 1, u * 1  # non-leaf: default is to write the gradients into these buffers
    gate_ptr, up_ptr = gate.data_ptr(), up.data_ptr()
    seen = {}
    gate.register_hook(lambda grad: seen.update(dgate=grad.data_ptr()))
    up.register_hook(lambda grad: seen.update(dup=grad.data_ptr()))
    swiglu_fast(gate, up).sum().backward()
    assert seen == {"dgate": gate_ptr, "dup": up_ptr}


def test_leaf_inputs_are_never_overwritten():
    g = torch.randn(4, 9).requires_grad_()
    u = torch.randn(4, 9).requires_grad_()
    g_before, u_before = g.detach().clone(), u.detach().clone()
    swiglu_fast(g, u).sum().backward()
    assert torch.equal(g.detach(), g_before) and torch.equal(u.detach(), u_before)


def test_reuse_is_caught_if_someone_else_saved_the_input():
    g = torch.randn(4, 9).requires_grad_()
    u = torch.randn(4, 9).requires_grad_()
    gate, up = g * 1, u * 1
    other = gate * gate  # saves gate for its own backward
    with pytest.raises(RuntimeError, match="inplace"):
        (swiglu_fast(gate, up).sum() + other.sum()).backward()


def test_only_one_input_needs_grad():
    g = torch.randn(3, 10).requires_grad_()
    u = torch.randn(3, 10)
    swiglu_fast(g * 1, u).sum().backward()
    g64 = g.detach().double().requires_grad_()
    swiglu_reference(g64, u.double()).sum().backward()
    torch.testing.assert_close(g.grad.double(), g64.grad, rtol=1e-5, atol=1e-5)


def test_through_the_ops_switch():
    g, u = torch.randn(3, 7, 11), torch.randn(3, 7, 11)
    with ops.use_kernels("triton"):
        h = ops.swiglu(g, u)
        h2 = ops.geglu(g, u, "tanh")
    torch.testing.assert_close(h, swiglu_reference(g, u), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h2, geglu_reference(g, u, "tanh"), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gradcheck_reference_float64(approximate):
    g = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    u = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(swiglu_reference, (g, u))
    assert torch.autograd.gradcheck(lambda a, b: geglu_reference(a, b, approximate), (g, u))


def test_bad_input_errors():
    g = torch.randn(4, 6)
    with pytest.raises(ValueError, match="same shape"):
        swiglu_fast(g, torch.randn(4, 5))
    with pytest.raises(TypeError, match="same dtype"):
        swiglu_fast(g, torch.randn(4, 6, dtype=torch.float16))
    with pytest.raises(ValueError, match="not contiguous"):
        swiglu_fast(torch.randn(6, 4).t(), torch.randn(4, 6))
    with pytest.raises(TypeError, match="float64"):
        swiglu_fast(g.double(), g.double())
    with pytest.raises(TypeError, match="dtype"):
        swiglu_fast(torch.ones(4, 6, dtype=torch.int32), torch.ones(4, 6, dtype=torch.int32))
    with pytest.raises(ValueError, match="approximate"):
        geglu_fast(g, g, "erf")


def test_empty_input():
    h = swiglu_fast(torch.empty(0, 8), torch.empty(0, 8))
    assert h.shape == (0, 8)


def test_offsets_are_int64_for_tensors_past_2_31_elements():
    """A (2**31)-element tensor does not fit a CPU test, so this checks the code instead: every kernel turns its
    program id into int64 before multiplying it by a block size or stride, so offsets past 2**31 cannot wrap."""
    import inspect

    from minilora.kernels import rmsnorm, rope, swiglu
    kernels = [swiglu._glu_forward_kernel, swiglu._glu_backward_kernel, rope._rope_kernel,
               rmsnorm._rms_norm_forward_kernel, rmsnorm._rms_norm_backward_kernel]
    for kernel in kernels:
        source = inspect.getsource(getattr(kernel, "fn", kernel))
        uses = source.count("tl.program_id(")
        assert uses and ".to(tl.int64)" in source, kernel
        for line in source.splitlines():
            if "tl.program_id(" in line and "pid_t" not in line and "group" not in line:
                assert ".to(tl.int64)" in line, f"{line.strip()} — cast the program id to int64"


def test_missing_triton_gives_a_clear_error():
    """Without Triton (macOS/Windows have no wheels) the modules still import, the references still run, and the
    fast paths explain what to do."""
    import subprocess
    import sys
    code = ("import sys; sys.modules['triton'] = None; sys.modules['triton.language'] = None\n"
            "import torch\n"
            "from minilora.kernels import rmsnorm, rope, swiglu\n"
            "assert swiglu.swiglu_reference(torch.ones(2), torch.ones(2)).shape == (2,)\n"
            "try:\n"
            "    swiglu.swiglu_fast(torch.ones(2), torch.ones(2))\n"
            "except ImportError as err:\n"
            "    print(err)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Linux only" in out.stdout and "use_kernels('reference')" in out.stdout
