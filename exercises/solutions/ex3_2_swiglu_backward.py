"""Exercise 3.2 — reference solution."""
import torch


def silu_derivative(g):
    s = torch.sigmoid(g)
    return s * (1 + g * (1 - s))  # d/dg [g s] = s + g s (1 − s)


def swiglu_backward(dh, g, u):
    s = torch.sigmoid(g)
    return dh * u * s * (1 + g * (1 - s)), dh * g * s
