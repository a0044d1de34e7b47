"""Kernels: each file holds a plain-PyTorch reference, the Triton kernel(s) and the autograd Function.

Model code never imports from here directly; it calls `minilora.ops`, the one place that picks how ops run.
"""

# The label of a token that carries no loss (PyTorch's and Hugging Face's convention). The losses here act on it;
# the data and training code above import this one name.
IGNORE_INDEX = -100
