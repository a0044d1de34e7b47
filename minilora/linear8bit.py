"""Linear8bit: a frozen linear layer stored as LLM.int8-style row-wise int8 codes, dequantized just in time.

The weight W (out, in) becomes int8 codes (1 byte a parameter) and one float32 scale per output row
(`minilora.quant.int8`). Columns of W that hold a value |w| ≥ `threshold` (input features with outliers) are
taken out of the int8 part and kept in the weight's own dtype (16-bit for a 16-bit model) as a small slice W_out:

    y = x · dequant(codes)ᵀ + x[:, outliers] · W_outᵀ (+ bias)        (the int8 part is 0 in the outlier columns)

Differences from bitsandbytes' Linear8bitLt, on purpose: LLM.int8 also quantizes the *activations* and picks the
outlier columns from them at run time (|x| ≥ 6), multiplying int8 by int8; here the activations stay in floating
point, the choice of columns is fixed when the layer is built (from the weight, or given), and the matmul runs on
the dequantized weight. It is the same storage (codes + row scales + a 16-bit slice), and the forward is exact
given that storage. Like Linear4bit, the backward dequantizes again instead of keeping W alive since forward
(`_Int8DequantMatmul` saves no tensor of its own), and `LoraLinear(Linear8bit(...))` works: `.weight` is the frozen
int8 code tensor, so LoRA's A and B are float32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .linear4bit import QuantizedLinear, replace_block_linears
from .quant.int8 import dequantize_rowwise_int8, quantize_rowwise_int8


class _Int8DequantMatmul(torch.autograd.Function):
    """y = x Wᵀ + x[..., cols] W_outᵀ + b with W rebuilt from int8 codes in forward AND backward."""

    @staticmethod
    def forward(ctx, x, bias, codes, scales, cols, w_out):
        W = dequantize_rowwise_int8(codes, scales, x.dtype)  # (out, in), lives only for this matmul
        y = F.linear(x, W, bias)
        if cols.numel():
            y = y + F.linear(x.index_select(-1, cols), w_out.to(x.dtype))
        ctx.quant = (codes, scales, cols, w_out)  # the layer's own tensors: alive anyway, nothing new is kept
        ctx.has_bias, ctx.in_features = bias is not None, x.shape[-1]
        return y

    @staticmethod
    def backward(ctx, grad_out):
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            codes, scales, cols, w_out = ctx.quant
            grad_x = grad_out @ dequantize_rowwise_int8(codes, scales, grad_out.dtype)  # dequantized again
            if cols.numel():
                grad_x = grad_x.index_add(-1, cols, grad_out @ w_out.to(grad_out.dtype))
        if ctx.has_bias and ctx.needs_input_grad[1]:
            grad_bias = grad_out.reshape(-1, grad_out.shape[-1]).sum(0)
        return grad_x, grad_bias, None, None, None, None


class Linear8bit(QuantizedLinear):
    """A frozen nn.Linear stored as int8 codes + row scales (+ outlier columns). Build one with `from_linear`."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, *, threshold: float = 0.0,
                 device=None, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.in_features, self.out_features, self.threshold = in_features, out_features, float(threshold)
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype), requires_grad=False) \
            if bias else None
        self._store(torch.zeros(out_features, in_features, device=device, dtype=dtype))

    @classmethod
    def from_linear(cls, linear: nn.Linear, threshold: float = 0.0,
                    outlier_columns: torch.Tensor | None = None) -> "Linear8bit":
        """Quantize `linear`'s weight. Outlier columns: those with any |w| ≥ threshold (threshold > 0), or the
        indices given (e.g. the input features whose activations exceeded 6 on calibration data)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"Linear8bit.from_linear needs an nn.Linear, got {type(linear).__name__}")
        if threshold < 0:
            raise ValueError(f"threshold must be ≥ 0 (0 = no outlier columns), got {threshold}")
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.in_features, layer.out_features, layer.threshold = linear.in_features, linear.out_features, threshold
        layer.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        layer._store(linear.weight.detach(), outlier_columns)
        return layer

    def _store(self, w: torch.Tensor, cols: torch.Tensor | None = None) -> None:
        """Quantize the dense (out, in) weight into this layer's tensors."""
        if tuple(w.shape) != (self.out_features, self.in_features):
            raise ValueError(f"a weight of shape {tuple(w.shape)} does not fit Linear8bit(in={self.in_features}, "
                             f"out={self.out_features}): expected (out, in)")
        if cols is None:
            codes, scales, cols = quantize_rowwise_int8(w, self.threshold)
        else:  # given columns: leave them out of the int8 part (their values may be small)
            cols = torch.as_tensor(cols, dtype=torch.int64, device=w.device).unique()
            if cols.numel() and not (0 <= int(cols.min()) and int(cols.max()) < self.in_features):
                raise ValueError(f"outlier column indices must lie in [0, {self.in_features}), got {cols.tolist()}")
            codes, scales, _ = quantize_rowwise_int8(w.index_fill(1, cols, 0.0))
        self.weight = nn.Parameter(codes, requires_grad=False)  # int8 (out, in): 1 byte a parameter
        self.weight_dtype = w.dtype
        self.register_buffer("scales", scales)  # float32 (out,)
        self.register_buffer("outlier_idx", cols)  # int64 (n_outliers,)
        self.register_buffer("weight_outliers", w.index_select(1, cols).clone())  # (out, n_outliers), w's dtype
        # (floating buffers keep their dtype through model.half() / .to(bfloat16): QuantizedLinear._apply)

    # --- use ---------------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():
            raise TypeError(f"Linear8bit needs a floating-point input, got {x.dtype}")
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input's last dimension is {x.shape[-1]}, but this layer takes {self.in_features}")
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return _Int8DequantMatmul.apply(x, bias, self.weight, self.scales, self.outlier_idx, self.weight_outliers)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The dense (out, in) weight this layer computes with (the outlier columns put back)."""
        dtype = self.weight_dtype if dtype is None else dtype
        w = dequantize_rowwise_int8(self.weight, self.scales, dtype)
        return w.index_copy(1, self.outlier_idx, self.weight_outliers.to(dtype))

    def _requantize(self, w: torch.Tensor) -> None:  # add_to_weight (merging LoRA): the same outlier columns
        self._store(w.to(self.weight_dtype), self.outlier_idx)

    @property
    def nbytes(self) -> int:
        """Bytes of the stored weight: codes + row scales + outlier indices and columns."""
        return sum(t.numel() * t.element_size() for t in (self.weight, self.scales, self.outlier_idx,
                                                          self.weight_outliers))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"outlier_columns={self.outlier_idx.numel()}, "
                f"bits_per_param={8 * self.nbytes / (self.in_features * self.out_features):.3f}")


@torch.no_grad()
def quantize_model_8bit(model: nn.Module, threshold: float = 0.0, skip=("lm_head",)) -> nn.Module:
    """Replace every nn.Linear inside ``model.model.layers`` by a frozen int8 `Linear8bit`, in place; returns model.

    As `quantize_model` (NF4): embeddings, norms and the head stay as they are; `skip` lists layer names (the last
    part, e.g. "down_proj", or a full dotted name) to leave in full precision.
    """
    return replace_block_linears(model, lambda linear: Linear8bit.from_linear(linear, threshold), skip,
                                 "quantize_model_8bit")
