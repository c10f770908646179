"""Robust aggregation rules: many models' rows [k, P] -> one row [P], pure functions (the
simulator's server and the Flower bridge's ServerApp call the same ones). Every rule also takes
a batch [..., k, P] -> [..., P] (gossip applies one per receiving node, all at once).

  median         coordinate-wise median (the mean of the two middle values when k is even)
  trimmed_mean   coordinate-wise: drop the floor(trim * k) smallest and largest, average the rest
  krum           Blanchard et al. 2017: the row whose summed squared distance to its k - f - 2
                 nearest other rows is smallest; multi-Krum averages the m best-scored rows
  centered_clip  Karimireddy, He and Jaggi 2021: from a centre v (the last global model),
                 `iters` times v <- v + mean_i (x_i - v) min(1, tau / ||x_i - v||)

All are unweighted: a client's sample count is what an attacker would inflate. Computed in
float64 for the sums; the rows may be float32.
"""
from __future__ import annotations

import torch


def median(rows: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise median of [..., k, P] rows."""
    s = rows.sort(-2).values
    k = rows.shape[-2]
    return s[..., k // 2, :] if k % 2 else \
        (s[..., k // 2 - 1, :].double() + s[..., k // 2, :].double()).div(2).to(rows.dtype)


def trimmed_mean(rows: torch.Tensor, trim: float) -> torch.Tensor:
    """Coordinate-wise mean after dropping floor(trim * k) rows from each end (0 <= trim < 0.5)."""
    k = rows.shape[-2]
    b = int(trim * k)
    if not 0 <= trim < 0.5 or k - 2 * b < 1:
        raise ValueError(f"trimmed mean: trim {trim} leaves no row of {k}")
    s = rows.sort(-2).values
    return s[..., b:k - b, :].double().mean(-2).to(rows.dtype)


def krum_scores(rows: torch.Tensor, f: int) -> torch.Tensor:
    """Krum's score of each row [..., k]: the summed squared distance to its k - f - 2 nearest others."""
    k = rows.shape[-2]
    near = k - f - 2
    if near < 1:
        raise ValueError(f"Krum needs k - f - 2 >= 1 (k = {k} rows, f = {f} Byzantine)")
    x = rows.double()
    sq = (x * x).sum(-1)
    d = (sq[..., :, None] + sq[..., None, :] - 2 * x @ x.transpose(-1, -2)).clamp(min=0)
    d.diagonal(dim1=-2, dim2=-1).fill_(float("inf"))
    return d.topk(near, dim=-1, largest=False).values.sum(-1)


def krum(rows: torch.Tensor, f: int, m: int = 1) -> torch.Tensor:
    """(Multi-)Krum: the mean of the m rows with the lowest Krum scores (ties: the lower index)."""
    scores = krum_scores(rows, f)
    if not 1 <= m <= rows.shape[-2]:
        raise ValueError(f"multi-Krum: m must be from 1 to {rows.shape[-2]}, got {m}")
    order = torch.sort(scores, dim=-1, stable=True).indices[..., :m]
    best = torch.gather(rows, -2, order.unsqueeze(-1).expand(*order.shape, rows.shape[-1]))
    return best.double().mean(-2).to(rows.dtype)


def centered_clip(rows: torch.Tensor, center: torch.Tensor, tau: float, iters: int = 1) -> torch.Tensor:
    """Centered clipping from `center` [..., P]: `iters` steps of v += mean_i clip_tau(x_i - v)."""
    v = center.double().clone()
    x = rows.double()
    for _ in range(iters):
        diff = x - v.unsqueeze(-2)
        norm = diff.norm(dim=-1, keepdim=True)
        scale = torch.where(norm > tau, tau / norm.clamp(min=1e-300), torch.ones_like(norm))
        v = v + (diff * scale).mean(-2)
    return v.to(rows.dtype)


RULES = ("mean", "median", "trimmed_mean", "krum", "multi_krum", "centered_clip")


def aggregate(rule: str, rows: torch.Tensor, center: torch.Tensor, *, trim: float = 0.1, byzantine: float = 0.2,
              tau: float = 1.0, iters: int = 1) -> torch.Tensor:
    """A robust rule (not "mean") over [..., k, P] -> [..., P]. Too few rows for a rule fall back to
    the median: trimmed_mean when trimming leaves none, Krum below k = 3 (f = byzantine * k,
    at most k - 3); centered_clip starts from `center` [..., P]."""
    k = rows.shape[-2]
    if rule == "median":
        return median(rows)
    if rule == "trimmed_mean":
        return trimmed_mean(rows, trim) if k - 2 * int(trim * k) >= 1 else median(rows)
    if rule in ("krum", "multi_krum"):
        if k < 3:  # Krum needs k - f - 2 >= 1
            return median(rows)
        f = min(int(byzantine * k), k - 3)
        return krum(rows, f, 1 if rule == "krum" else k - f)
    if rule == "centered_clip":
        return centered_clip(rows, center, tau, iters)
    raise ValueError(f"unknown robust rule {rule!r}; choose one of {', '.join(RULES[1:])}")
