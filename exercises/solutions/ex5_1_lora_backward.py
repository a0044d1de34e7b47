"""Exercise 5.1 — reference solution."""


def lora_backward(x, W, A, B, s, dy):
    dyB = dy @ B  # (N, r)
    dx = dy @ W + s * (dyB @ A)  # (N, in)
    dA = s * (dyB.T @ x)  # (r, in)
    dB = s * (dy.T @ (x @ A.T))  # (out, r)
    return dx, dA, dB
