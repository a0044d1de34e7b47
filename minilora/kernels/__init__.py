"""Kernels: each file holds a plain-PyTorch reference, the Triton kernel(s) and the autograd Function.

Model code never imports from here directly; it calls `minilora.ops`, the one place that picks how ops run.
"""
