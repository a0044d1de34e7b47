"""Exercise 5.3 — reference solution."""


def qkv_backward(x, projections, d_outs):
    dx, dAs, dBs = None, [], []
    for (W, A, B, s), dy in zip(projections, d_outs):
        dyB = dy @ B  # (N, r)
        dAs.append(s * (dyB.T @ x))  # (r, C)
        dBs.append(s * (dy.T @ (x @ A.T)))  # (out, r)
        if dx is None:
            dx = dy @ W  # the one (N, C) buffer
        else:
            dx.addmm_(dy, W)
        dx.addmm_(dyB, A, alpha=s)
    return dx, dAs, dBs
