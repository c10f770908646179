"""Averaging kernels: weighted means of rows, sums of received rows, gossip merges, consensus distance."""
from __future__ import annotations

import numpy as np
import torch

from kernels.stack import row_blocks


def weighted_mean(rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_k w_k x_k / sum_k w_k over the rows of [k, P] -> [P] (FedAvg's aggregate)."""
    w = weights.to(rows.dtype)
    return (w / w.sum()) @ rows


def sum_rows_into(dst: torch.Tensor, src: torch.Tensor, rows: torch.Tensor, n_dst: int) -> torch.Tensor:
    """[n_dst, P]: out[d] = sum of rows[src[e]] over the edges e with dst[e] == d, added in
    increasing src order (a receiver's sum does not depend on the order the edges came in)."""
    out = rows.new_zeros(n_dst, rows.shape[1])
    add_messages_into(out, dst.cpu().numpy(), [(rows, np.ones(dst.numel(), bool), src.cpu().numpy())])
    return out


def add_messages_into(buffer: torch.Tensor, dst: np.ndarray, parts: list, block: int = 1 << 19) -> np.ndarray:
    """buffer[d] += the messages addressed to d: for each part (rows [k, W], which [E] bool
    selecting its edges, row [E] index into rows) in list order, the sum of its rows sent to d
    in increasing row order (from zero), these sums added part after part, then added to d.

    Exactly the numbers of a sparse incidence matrix product per part (sum_rows_into's old
    form) and an indexed +=, but receiver block by receiver block (about `block` numbers
    each): as fast as the product alone, and a wave allocates nothing of size [receivers, W]
    (the product's output, the gathered and scattered running sums). Slot k of a block adds
    the k-th message of every receiver that has one, so the Python loop runs over blocks and
    slots, never nodes. (A (receiver, row) pair repeated within a part, which a graph never
    sends, is added once per repeat; the product added 2 x row once.) Returns the distinct
    receivers, sorted.
    """
    if len(dst) == 0:
        return np.unique(dst)
    part = np.concatenate([np.full(int(w.sum()), i) for i, (_, w, _) in enumerate(parts)])
    rowid = np.concatenate([r[w] for _, w, r in parts])
    uniq, local = np.unique(np.concatenate([dst[w] for _, w, _ in parts]), return_inverse=True)
    order = np.lexsort((rowid, part, local))
    part, rowid, local = part[order], rowid[order], local[order]
    pair = local * len(parts) + part
    rank = np.arange(len(pair)) - np.searchsorted(pair, pair)  # k: the k-th message of (receiver, part)
    span = max(1, block // max(1, buffer.shape[1]))
    blk = local // span
    order = np.lexsort((local, rank, part, blk))  # groups (block, part, slot), receivers in order
    part, rowid, local, rank, blk = part[order], rowid[order], local[order], rank[order], blk[order]
    key = (blk * len(parts) + part) * (int(rank.max()) + 1) + rank
    starts = np.flatnonzero(np.diff(key)) + 1
    dev = buffer.device
    acc = total = None
    for lo, hi in zip([0, *starts], [*starts, len(key)]):
        b, i, k = int(blk[lo]), int(part[lo]), int(rank[lo])
        nb = min(span, len(uniq) - b * span)
        if k == 0:  # a new part of this block (or a new block)
            if total is not None and int(blk[lo - 1]) == b:
                acc = total if acc is None else acc.add_(total)
            elif total is not None:
                _flush(buffer, uniq, int(blk[lo - 1]), span, total if acc is None else acc.add_(total))
                acc = None
            total = buffer.new_zeros(nb, buffer.shape[1])
        got = parts[i][0].index_select(0, torch.as_tensor(rowid[lo:hi], device=dev))
        if hi - lo == nb:  # every receiver of the block has a k-th message (in order)
            total.add_(got)
        else:
            to = torch.as_tensor(local[lo:hi] - b * span, device=dev)
            total.index_copy_(0, to, total.index_select(0, to).add_(got))
    _flush(buffer, uniq, int(blk[-1]), span, total if acc is None else acc.add_(total))
    return uniq


def _flush(buffer: torch.Tensor, uniq: np.ndarray, b: int, span: int, acc: torch.Tensor) -> None:
    """buffer[receivers of block b] += acc."""
    idx = torch.as_tensor(uniq[b * span:b * span + len(acc)], device=buffer.device)
    buffer.index_copy_(0, idx, buffer.index_select(0, idx).add_(acc))


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


def consensus_distance(params: torch.Tensor, block: int = 1 << 18) -> float:
    """Mean squared distance of the rows from their mean: (1/N) sum_i ||x_i - x_bar||^2.

    Two passes over blocks of rows (about `block` numbers each, one reused buffer, nothing of
    size [N, P] allocated): the mean of the rows' offsets from the first row (block sums added
    in float64), then the squared deviations from the mean, summed in float64. Offsets make
    equal rows give exactly 0. About 3x faster than a per-column Welford variance and more
    accurate (relative error ~1e-10 against float64, where Welford in float32 gives ~1e-7).
    """
    n, p = params.shape
    if n == 0:
        return float("nan")
    blocks = row_blocks(n, p, block)
    buf = torch.empty(blocks[0].stop, p, dtype=torch.float32, device=params.device)
    first = params[0].to(torch.float32, copy=True)
    total = torch.zeros(p, dtype=torch.float64, device=params.device)
    for s in blocks:
        total += torch.sub(params[s].float(), first, out=buf[:s.stop - s.start]).sum(0)  # 16-bit rows: upcast
    centre = first + (total / n).float()
    dist = torch.zeros((), dtype=torch.float64, device=params.device)
    for s in blocks:
        dist += torch.sub(params[s].float(), centre, out=buf[:s.stop - s.start]).square_().sum(dtype=torch.float64)
    return float(dist / n)
