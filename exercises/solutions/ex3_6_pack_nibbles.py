"""Exercise 3.6 — reference solution."""
import torch


def pack(indices):
    if indices.numel() % 2:
        indices = torch.cat([indices, torch.tensor([7], dtype=torch.uint8)])
    return (indices[0::2] << 4) | indices[1::2]


def unpack(packed, n):
    return torch.stack([packed >> 4, packed & 0xF], dim=1).reshape(-1)[:n]
