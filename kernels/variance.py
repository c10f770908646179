"""Per-tensor statistics of node stacks and the variance correction of merged models.

Each parameter tensor of a row is a contiguous segment of the flat [N, P] stack. A segment
indicator matrix S [P, L] (S[p, l] = 1 when coordinate p belongs to tensor l) turns per-tensor
sums of every row into one matrix product, x @ S (float64), with no Python loop over nodes.
Per-tensor values go back to coordinates by broadcasting over each tensor's column range in
place (one short loop over the L tensors): the same numbers as v @ S.T, a one-hot expansion,
without the [N, P] float64 temporaries it would allocate.
"""
from __future__ import annotations

import torch


def segment_indicator(sizes, device=None, dtype=torch.float64) -> torch.Tensor:
    """S [P, L] for tensors of the given sizes (in row order)."""
    sizes = torch.as_tensor(sizes, device=device)
    seg = torch.repeat_interleave(torch.arange(len(sizes), device=device), sizes)
    return torch.nn.functional.one_hot(seg, len(sizes)).to(dtype)


def segment_spans(indicator: torch.Tensor) -> list[tuple[int, int]]:
    """The column range [start, stop) of each tensor of an indicator S [P, L]."""
    stops = indicator.sum(0).long().cumsum(0).tolist()
    return list(zip([0] + stops[:-1], stops))


def segment_moments(x: torch.Tensor, indicator: torch.Tensor, *,
                    unbiased: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance [n, L] (in the indicator's dtype) of every tensor of every row of
    x [n, P]. Two passes (mean, then centred squares) so large tensors lose no precision; the
    centring and squaring happen in one float64 copy of x."""
    xd = x.to(indicator.dtype, copy=True)
    size = indicator.sum(0)
    mean = (xd @ indicator) / size
    for l, (a, b) in enumerate(segment_spans(indicator)):
        xd[:, a:b].sub_(mean[:, l:l + 1])
    var = (xd.mul_(xd) @ indicator) / (size - 1 if unbiased else size).clamp(min=1)
    return mean, var


def variance_correct(merged: torch.Tensor, target_var: torch.Tensor, indicator: torch.Tensor,
                     corrected: torch.Tensor, *, eps: float = 1e-8,
                     unbiased: bool = False) -> torch.Tensor:
    """Rescale each corrected tensor of each row about its mean to the target variance:
    W <- (W - mu) * sqrt(v* / v) + mu  (Tian et al. 2024).

    merged [n, P]; target_var [n, L]; corrected [L] bool (which tensors to touch). The current
    variance is floored at eps * v*, so a constant tensor (v = 0) gives no NaN and a
    vanishing one is not blown up without bound; where v* = v = 0 the tensor is left alone.
    """
    mean, var = segment_moments(merged, indicator, unbiased=unbiased)
    target = target_var.to(var.dtype)
    floor = torch.maximum(var, eps * target)
    scale = torch.where(floor > 0, torch.sqrt(target / floor.clamp(min=1e-300)), torch.ones_like(var))
    scale = torch.where(corrected.view(1, -1), scale, torch.ones_like(scale))
    # (W - mu) * s + mu = W * s + mu * (1 - s), tensor by tensor over its column range
    shift = mean * (1 - scale)
    out = torch.empty_like(merged)
    for l, (a, b) in enumerate(segment_spans(indicator)):
        out[:, a:b] = merged[:, a:b].to(scale.dtype, copy=True).mul_(scale[:, l:l + 1]).add_(shift[:, l:l + 1])
    return out
