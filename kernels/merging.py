"""Evolutionary model merging (M2N2, Abrantes, Lange, Tang 2025): split-point SLERP of many
parent pairs at once, per-example correctness of many models, and the shared fitness and
attraction that resource competition gives them. Pure torch.

A model is one row of the stack, in the layout's canonical order (kernels.stack.Layout: the
template's parameters in `named_parameters` order, each row-major), so a split point indexes
the same coordinate in every engine.

Scores are 0/1 [K, N] (bool, or float where they are summed often): s[i, j] says whether
model i gets example j right. With `z_j` the number of models that get j right (0 counted as
1) and `w_j = c_j / z_j^alpha`:
    shared fitness   f_i = sum_j s_ij w_j
    attraction       g(a, b) = sum_j max(0, s_bj w_j - s_aj w_j) = sum_j s_bj (1 - s_aj) w_j
Every sum runs over examples, so an owner of some examples can compute its part of every sum
from its own examples alone (`partial_fitness`, `partial_attraction`); the parts add up to the
whole (the federated decomposition).
"""
from __future__ import annotations

import math

import torch

LINEAR_BELOW = 1e-6  # sin(Omega) at or below this: interpolate linearly (nearly parallel parents)


def slerp(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor, split: torch.Tensor | None = None) -> torch.Tensor:
    """Split-point spherical interpolation of parent pairs, row by row.

    a, b [n, D]; w [n] in [0, 1); split [n] ints in [0, D) or None (the whole vector).
    The weight toward b is t_i = w for coordinates i < split and 1 - w from the split on
    (t = w everywhere without a split). The angle is taken once over the whole vectors,
    Omega = arccos(clip(<a/|a|, b/|b|>, -1, 1)), and
        child_i = sin((1 - t_i) Omega) / sin Omega * a_i + sin(t_i Omega) / sin Omega * b_i,
    or (1 - t_i) a_i + t_i b_i where sin Omega <= 1e-6 (or a parent is all zeros).
    """
    n, d = a.shape
    w = w.to(torch.float64).view(-1)
    norms = a.double().norm(dim=1) * b.double().norm(dim=1)
    dot = (a.double() * b.double()).sum(1)
    cos = torch.where(norms > 0, dot / norms.clamp(min=torch.finfo(torch.float64).tiny), torch.ones_like(dot))
    omega = torch.arccos(cos.clamp(-1.0, 1.0))
    sin_o = torch.sin(omega)
    curved = sin_o > LINEAR_BELOW

    def coefficients(t):  # (coefficient of a, coefficient of b) for weights t [n]
        ca = torch.where(curved, torch.sin((1 - t) * omega) / torch.where(curved, sin_o, 1.0), 1 - t)
        cb = torch.where(curved, torch.sin(t * omega) / torch.where(curved, sin_o, 1.0), t)
        return ca.to(a.dtype), cb.to(a.dtype)

    ca, cb = coefficients(w)
    if split is None:
        return ca.view(-1, 1) * a + cb.view(-1, 1) * b
    ca2, cb2 = coefficients(1 - w)
    before = torch.arange(d, device=a.device).view(1, -1) < split.to(a.device).view(-1, 1)
    return torch.where(before, ca.view(-1, 1), ca2.view(-1, 1)) * a + \
        torch.where(before, cb.view(-1, 1), cb2.view(-1, 1)) * b


def slerp_pair(a: torch.Tensor, b: torch.Tensor, w: float, split: int | None = None,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """`slerp` of one pair a, b [D] with Python scalars, for loops that make one child at a time:
    a handful of vector operations instead of `slerp`'s per-coordinate weights (the dot
    product and norms accumulate in the parents' dtype; a test holds it to `slerp`)."""
    na, nb = float(torch.linalg.vector_norm(a)), float(torch.linalg.vector_norm(b))
    cos = float(torch.dot(a, b)) / (na * nb) if na > 0 and nb > 0 else 1.0
    omega = math.acos(min(1.0, max(-1.0, cos)))
    sin_o = math.sin(omega)

    def coefficients(t):
        if sin_o > LINEAR_BELOW:
            return math.sin((1 - t) * omega) / sin_o, math.sin(t * omega) / sin_o
        return 1 - t, t

    out = torch.empty_like(a) if out is None else out
    s = a.shape[0] if split is None else int(split)
    for lo, hi, t in ((0, s, w), (s, a.shape[0], 1 - w)):
        if hi > lo:
            ca, cb = coefficients(t)
            torch.mul(a[lo:hi], ca, out=out[lo:hi]).add_(b[lo:hi], alpha=cb)
    return out


def niche_weights(scores: torch.Tensor, alpha: float, capacity: torch.Tensor | None = None) -> torch.Tensor:
    """w_j = c_j / z_j^alpha (float64 [..., N]) with z_j = sum_i s_ij over the rows of scores
    [..., K, N] (0 counted as 1); capacity c_j defaults to 1."""
    z = scores.sum(-2).to(torch.float64).clamp(min=1.0)
    w = z.pow(-alpha)
    return w if capacity is None else w * capacity.to(torch.float64)


def shared_fitness(scores: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """f_i = sum_j s_ij w_j: scores [..., K, N] bool, weights [..., N] -> float64 [..., K]."""
    return (scores.to(torch.float64) * weights.unsqueeze(-2)).sum(-1)


def attraction(scores: torch.Tensor, a: torch.Tensor | int, weights: torch.Tensor) -> torch.Tensor:
    """g(a, b) for every row b: sum_j s_bj (1 - s_aj) w_j. scores [K, N] with one parent index a
    -> [K]; or batched scores [n, K, N], a [n], weights [n, N] -> [n, K]."""
    if scores.dim() == 2:
        rare = (1 - scores[a].to(torch.float64)) * weights
        return scores.to(torch.float64) @ rare
    rows = scores[torch.arange(len(scores), device=scores.device), a]
    rare = (1 - rows.to(torch.float64)) * weights
    return (scores.to(torch.float64) * rare.unsqueeze(1)).sum(-1)


def partial_fitness(scores: torch.Tensor, weights: torch.Tensor, owner: torch.Tensor, n_owners: int) -> torch.Tensor:
    """Each owner's share of the shared fitness: [n_owners, K], summing to shared_fitness.
    scores [K, N], weights [N] (z over the same K rows, which each owner computes from its own
    examples), owner [N] the owner of each example."""
    parts = torch.zeros(scores.shape[0], n_owners, dtype=torch.float64, device=scores.device)
    parts.index_add_(1, owner, scores.to(torch.float64) * weights)
    return parts.T


def partial_attraction(scores: torch.Tensor, weights: torch.Tensor, owner: torch.Tensor, n_owners: int,
                       chunk: int = 4096) -> torch.Tensor:
    """Each owner's share of the whole attraction matrix G[a, b] = g(a, b): [n_owners, K, K],
    summing to `attraction_matrix`."""
    k, n = scores.shape
    parts = torch.zeros(n_owners, k, k, dtype=torch.float64, device=scores.device)
    s = scores.to(torch.float64)
    for lo in range(0, n, chunk):  # per example: the outer product (1 - s_a) (s_b w), one owner each
        sl = slice(lo, lo + chunk)
        outer = (1 - s[:, sl]).T.unsqueeze(2) * (s[:, sl] * weights[sl]).T.unsqueeze(1)
        parts.index_add_(0, owner[sl], outer)
    return parts


def attraction_matrix(scores: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """G[a, b] = g(a, b) for every pair of rows of scores [K, N]: [K, K] float64."""
    s = scores.to(torch.float64)
    return (1 - s) @ (s * weights).T


@torch.no_grad()
def correctness(model, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                max_elements: int = 1 << 22) -> torch.Tensor:
    """Which examples each model gets right: params [K, D] on a shared set x [N, F], y [N] ->
    bool [K, N] (the task's per-example correctness), chunked over models."""
    chunk = max(1, max_elements // max(1, x.numel()))
    out = torch.empty(params.shape[0], x.shape[0], dtype=torch.bool, device=params.device)
    for lo in range(0, params.shape[0], chunk):
        out[lo:lo + chunk] = model.task.correct(model.logits(params[lo:lo + chunk], x), y)
    return out


class Scorer:
    """Per-example correctness of one model at a time on a fixed set x [N, F], y [N] (bool [N]).

    For a Linear/ReLU chain it multiplies into buffers it keeps: on a CPU, a fresh [N, H]
    activation per call (page faults) costs about as much as the product itself, and a
    multiclass output layer is padded to a multiple of 8 classes (weights 0, bias -inf, so a
    padded class never wins): BLAS kernels run several times slower for, say, 10 columns than
    for 16. Other models go through `correctness`.
    """

    def __init__(self, model, x: torch.Tensor, y: torch.Tensor):
        self.model, self.x, self.y = model, x, y
        self.buffers = None
        if model.chain is not None:
            layers = model._chain_layers(torch.zeros(model.layout.size, device=x.device))
            widths = [w.shape[0] for w, _ in layers]
            self.classes = widths[-1]
            if model.task.name == "multiclass":
                widths[-1] += -widths[-1] % 8
            self.buffers = [torch.empty(x.shape[0], k, device=x.device) for k in widths]
            self.last_w = torch.zeros(widths[-1], layers[-1][0].shape[1], device=x.device)
            self.last_b = torch.full((widths[-1],), -math.inf, device=x.device)

    @torch.no_grad()
    def __call__(self, row: torch.Tensor) -> torch.Tensor:
        if self.buffers is None:
            return correctness(self.model, row.unsqueeze(0), self.x, self.y)[0]
        h = self.x
        layers = self.model._chain_layers(row)
        for k, ((w, b), out) in enumerate(zip(layers, self.buffers)):
            if k == len(layers) - 1:
                self.last_w[:self.classes] = w
                self.last_b[:self.classes] = b
                w, b = self.last_w, self.last_b
            h = torch.addmm(b, h, w.t(), out=out)
            if k < len(layers) - 1:
                h.relu_()
        return self.model.task.correct(h.unsqueeze(0), self.y)[0]


def pack_scores(scores: torch.Tensor) -> torch.Tensor:
    """bool [..., N] -> uint8 [..., ceil(N / 8)], eight examples per byte (what a score row
    costs to keep or send); `unpack_scores` inverts it."""
    n = scores.shape[-1]
    pad = (-n) % 8
    s = torch.nn.functional.pad(scores.to(torch.uint8), (0, pad)).view(*scores.shape[:-1], -1, 8)
    bits = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8, device=scores.device)
    return (s * bits).sum(-1, dtype=torch.uint8)


def unpack_scores(packed: torch.Tensor, n: int) -> torch.Tensor:
    """uint8 [..., ceil(N / 8)] -> bool [..., N]."""
    bits = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8, device=packed.device)
    return ((packed.unsqueeze(-1) & bits) != 0).flatten(-2)[..., :n]
