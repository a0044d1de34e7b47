"""Cross-entropy kernel (minilora/kernels/cross_entropy.py) against the PyTorch reference.

On CPU the Triton kernels run in the interpreter (conftest sets TRITON_INTERPRET=1) at small sizes; the `gpu`
tests run the same checks compiled. Tolerances (loss; gradient):
  fp32: 1e-5 rel; 1e-6 abs — both compute in fp32, only the summation order differs.
  fp16: 1e-4 rel; one fp16 ulp (1e-3 rel) + 1e-6 abs — the gradient is stored in fp16 by both.
  bf16: 1e-4 rel; one bf16 ulp (8e-3 rel, 1.6e-2 to allow the interpreter's truncating cast) + 1e-5 abs.
"""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minilora.kernels.cross_entropy import MAX_CHUNK, cross_entropy_fast, cross_entropy_reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
GRAD_TOL = {torch.float32: (1e-5, 1e-6), torch.float16: (2e-3, 1e-6), torch.bfloat16: (1.6e-2, 1e-5)}
LOSS_TOL = dict(rtol=1e-4, atol=1e-5)


def make(N, V, dtype, seed=0, ignore_every=3, device="cpu", spread=4.0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(N, V, generator=g) * spread).to(dtype).to(device)
    labels = torch.randint(0, V, (N,), generator=g)
    if ignore_every:
        labels[::ignore_every] = -100
    return logits, labels.to(device)


def compare(logits, labels, *, num_items=None, logit_scale=None, softcap=None, grad_scale=1.0):
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    loss_fast = cross_entropy_fast(a, labels, -100, num_items, logit_scale, softcap)
    loss_ref = cross_entropy_reference(b, labels, -100, num_items, logit_scale, softcap)
    torch.testing.assert_close(loss_fast, loss_ref, **LOSS_TOL)
    (loss_fast * grad_scale).backward()
    (loss_ref * grad_scale).backward()
    rtol, atol = GRAD_TOL[logits.dtype]
    assert a.grad.dtype == logits.dtype  # the gradient keeps the logits' dtype: no fp32 copy
    torch.testing.assert_close(a.grad.float(), b.grad.float(), rtol=rtol, atol=atol)


@settings(max_examples=20, deadline=None)
@given(N=st.integers(1, 9), V=st.integers(2, 700), dtype=st.sampled_from(DTYPES),
       scale=st.sampled_from([None, 0.5, 1.7]), softcap=st.sampled_from([None, 3.0, 30.0]),
       ignore_every=st.sampled_from([0, 2, 3]), seed=st.integers(0, 1000))
def test_matches_reference_on_odd_shapes(N, V, dtype, scale, softcap, ignore_every, seed):
    logits, labels = make(N, V, dtype, seed, ignore_every)
    compare(logits, labels, logit_scale=scale, softcap=softcap, grad_scale=0.7)


def test_chunked_path_for_vocab_over_65536():
    V = MAX_CHUNK + 1500  # two chunks: 65536 + 1500 columns
    logits, labels = make(3, V, torch.float32, ignore_every=0)
    labels[0] = V - 1  # a label in the second chunk
    labels[1] = 5  # one in the first
    labels[2] = -100
    compare(logits, labels, softcap=20.0)


def test_num_items_makes_gradient_accumulation_exact():
    logits, labels = make(8, 50, torch.float32, ignore_every=3)
    total = (labels != -100).sum()
    whole = logits.clone().requires_grad_()
    cross_entropy_fast(whole, labels).backward()
    parts = logits.clone().requires_grad_()
    for half in (slice(0, 3), slice(3, 8)):  # uneven micro-batches with different token counts
        view = parts[half]
        cross_entropy_fast(view, labels[half], num_items=total).backward()
    torch.testing.assert_close(parts.grad, whole.grad, rtol=1e-5, atol=1e-7)


def test_all_ignored_gives_zero_loss_and_gradient():
    logits, labels = make(4, 30, torch.float32)
    labels[:] = -100
    x = logits.clone().requires_grad_()
    loss = cross_entropy_fast(x, labels)
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(x.grad) == 0


def test_int32_labels_and_custom_ignore_index():
    logits, labels = make(5, 40, torch.float32, ignore_every=0)
    labels[2] = 7
    a = cross_entropy_fast(logits, labels.int(), ignore_index=7)
    b = cross_entropy_reference(logits, labels, ignore_index=7)
    torch.testing.assert_close(a, b)


def test_gradient_is_written_into_the_logits():
    x = torch.randn(4, 33).requires_grad_()
    h = x * 1.0  # a non-leaf, as the logits out of lm_head are
    cross_entropy_fast(h, torch.tensor([1, 2, 3, -100])).backward()
    # h's own memory now holds dL/dh (= x.grad here): the gradient needed no new (N, V) buffer
    torch.testing.assert_close(h.detach(), x.grad, rtol=0, atol=0)


def test_inplace_grad_false_keeps_the_logits():
    logits, labels = make(4, 33, torch.float32)
    h = logits.clone().requires_grad_()
    kept = h.detach().clone()
    cross_entropy_fast(h * 1.0, labels, inplace_grad=False).backward()
    torch.testing.assert_close(h.detach(), kept)


def test_row_strided_logits_are_handled():
    wide = torch.randn(6, 80)
    logits = wide[:, :50]  # rows 80 apart, unit stride along the vocabulary
    labels = torch.tensor([0, 49, -100, 3, 4, 5])
    compare(logits, labels)


@settings(max_examples=6, deadline=None)
@given(N=st.integers(1, 4), V=st.integers(2, 9), scale=st.sampled_from([None, 0.8]),
       softcap=st.sampled_from([None, 2.5]))
def test_reference_gradcheck_float64(N, V, scale, softcap):
    logits = torch.randn(N, V, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, V, (N,))
    labels[0] = -100
    assert torch.autograd.gradcheck(
        lambda z: cross_entropy_reference(z, labels, -100, 2.0, scale, softcap), (logits,))


# --- bad input ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make_bad, error, match", [
    (lambda l, y: (l.T, y[:3]), ValueError, "unit stride"),
    (lambda l, y: (l, y[:2]), ValueError, "one label per token"),
    (lambda l, y: (l, y.float()), TypeError, "int64 or int32"),
    (lambda l, y: (l.double(), y), TypeError, "float32, float16 and bfloat16"),
    (lambda l, y: (l[None], y), ValueError, "2-D"),
    (lambda l, y: (l, torch.full_like(y, 3)), ValueError, r"lie in \[0, 3\)"),
    (lambda l, y: (l, torch.full_like(y, -5)), ValueError, "ignore_index"),
])
def test_bad_input_is_refused(make_bad, error, match):
    logits, labels = torch.randn(5, 3), torch.tensor([0, 1, 2, -100, 1])
    bad_logits, bad_labels = make_bad(logits, labels)
    with pytest.raises(error, match=match):
        cross_entropy_fast(bad_logits, bad_labels)


def test_non_positive_num_items_is_refused():
    with pytest.raises(ValueError, match="num_items must be positive"):
        cross_entropy_fast(torch.randn(2, 3), torch.tensor([0, 1]), num_items=0)


def test_non_positive_softcap_is_refused():
    with pytest.raises(ValueError, match="softcap"):
        cross_entropy_fast(torch.randn(2, 3), torch.tensor([0, 1]), softcap=0.0)


# --- compiled on the GPU --------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N, V", [(3, 423), (257, 32000), (64, 128256), (5, 200_003)])
def test_gpu_matches_reference(N, V, dtype):
    logits, labels = make(N, V, dtype, device="cuda")
    compare(logits, labels)
    compare(logits, labels, logit_scale=0.5, softcap=30.0, num_items=11)


@pytest.mark.gpu
def test_gpu_offsets_past_int32():
    N, V = 16_400, 131_072  # N·V = 2.15e9 > 2**31 - 1: the last rows start past a 32-bit offset
    assert (N - 1) * V > 2**31
    logits = torch.randn(N, V, device="cuda", dtype=torch.bfloat16)
    labels = torch.full((N,), -100, device="cuda")
    tail = slice(N - 4, N)
    labels[tail] = torch.randint(0, V, (4,), device="cuda")  # only the last rows carry loss
    z = logits[tail].float()
    ref_loss = torch.nn.functional.cross_entropy(z, labels[tail], reduction="sum") / N
    expected_grad = (torch.softmax(z, -1) - torch.nn.functional.one_hot(labels[tail], V)) / N
    x = logits.requires_grad_()
    loss = cross_entropy_fast(x, labels, num_items=N)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-7)
    loss.backward()  # the gradient lands in the logits' own memory
    torch.testing.assert_close(x.detach()[tail].float(), expected_grad, rtol=1.6e-2, atol=1e-9)
    assert torch.count_nonzero(x.detach()[: N - 4]) == 0  # ignored rows: zero gradient
