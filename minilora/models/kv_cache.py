"""A key/value cache: during generation each layer keeps the keys and values of every token seen so far,
so a new token costs one row of attention instead of recomputing the whole prefix."""
from __future__ import annotations

import torch


class KVCache:
    def __init__(self, num_layers: int):
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers

    def __len__(self) -> int:
        """Number of cached positions."""
        return 0 if self.keys[0] is None else self.keys[0].shape[2]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Append k, v (B, n_kv, T, hd) for one layer and return everything cached for it."""
        if self.keys[layer] is not None:
            k = torch.cat((self.keys[layer], k), dim=2)
            v = torch.cat((self.values[layer], v), dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v
