"""Counter-based random numbers: the same (seed, node, counter) always gives the same draw.

Per-node randomness is keyed by node id and a per-node counter, never by the order in which
nodes are batched together, so a batched run draws exactly what an unbatched run draws.
The mixer is splitmix64 on int64 tensors (multiplication wraps two's-complement).
"""
from __future__ import annotations

import hashlib
import math

import torch

_M1 = -4658895280553007687  # 0xbf58476d1ce4e5b9 as int64
_M2 = -7723592293110705685  # 0x94d049bb133111eb as int64
_GOLDEN = -7046029254386353131  # 0x9e3779b97f4a7c15 as int64


def _shr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> s).bitwise_and_((1 << (64 - s)) - 1)


def mix64_(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser, in place (one temporary at a time: large draws stay small)."""
    x ^= _shr(x, 30)
    x *= _M1
    x ^= _shr(x, 27)
    x *= _M2
    x ^= _shr(x, 31)
    return x


def derive_seed(seed: int, *names: str | int) -> int:
    """A 63-bit seed for one named stream of a run (stable across processes and platforms)."""
    h = hashlib.blake2b(repr((int(seed),) + names).encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little") >> 1


def counter_uniform(seed: int, *counters: torch.Tensor) -> torch.Tensor:
    """float64 uniforms in [0, 1), one per element of the broadcast of `counters` (int64)."""
    dev = counters[0].device if counters else None
    x = torch.full((), int(seed) & ((1 << 63) - 1), dtype=torch.int64, device=dev)
    for c in counters:
        x = mix64_(x + _GOLDEN + c.to(torch.int64))  # `+` gives a fresh tensor to mix in place
    return _shr(x, 11).to(torch.float64).mul_(1.0 / (1 << 53))


def counter_normal(seed: int, *counters: torch.Tensor) -> torch.Tensor:
    """float64 standard normals keyed like `counter_uniform` (Box-Muller on two uniforms)."""
    u1 = counter_uniform(seed, *counters, torch.zeros((), dtype=torch.long))
    u2 = counter_uniform(seed, *counters, torch.ones((), dtype=torch.long))
    return torch.sqrt(-2.0 * torch.log1p(-u1)) * torch.cos(2.0 * math.pi * u2)
