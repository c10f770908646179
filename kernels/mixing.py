"""Averaging kernels: weighted means of rows, sparse sums of received rows, gossip merges."""
from __future__ import annotations

import torch


def weighted_mean(rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_k w_k x_k / sum_k w_k over the rows of [k, P] -> [P] (FedAvg's aggregate)."""
    w = weights.to(rows.dtype)
    return (w / w.sum()) @ rows


def sum_rows_into(dst: torch.Tensor, src: torch.Tensor, rows: torch.Tensor, n_dst: int) -> torch.Tensor:
    """[n_dst, P]: out[d] = sum of rows[src[e]] over the edges e with dst[e] == d.

    A sparse [n_dst, len(rows)] incidence matrix times the rows, so no [E, P] gather is
    materialised (10,000 nodes x degree 8 would be 80,000 copies of a model).
    """
    if dst.numel() == 0:
        return rows.new_zeros(n_dst, rows.shape[1])
    ind = torch.sparse_coo_tensor(torch.stack([dst, src]), torch.ones_like(dst, dtype=rows.dtype),
                                  (n_dst, rows.shape[0]), check_invariants=False).coalesce()
    return torch.sparse.mm(ind, rows)


def gossip_merge(own: torch.Tensor, received_sum: torch.Tensor, received_count: torch.Tensor,
                 beta: float) -> torch.Tensor:
    """beta * own + (1 - beta) * mean(received), row by row."""
    mean = received_sum / received_count.to(own.dtype).view(-1, 1)
    return beta * own + (1.0 - beta) * mean


def gossip_merge_(own: torch.Tensor, received_sum: torch.Tensor, received_count: torch.Tensor,
                  beta: float) -> torch.Tensor:
    """gossip_merge in place: overwrites both inputs (fresh copies the caller owns) and returns
    `own`, the same numbers with no [n, P] temporaries (the merge's memory peak at scale)."""
    received_sum.div_(received_count.to(own.dtype).view(-1, 1)).mul_(1.0 - beta)
    return own.mul_(beta).add_(received_sum)


def consensus_distance(params: torch.Tensor) -> float:
    """Mean squared distance of the rows from their mean: (1/N) sum_i ||x_i - x_bar||^2."""
    return float(params.var(0, unbiased=False).sum())  # the same sum, one pass per column
