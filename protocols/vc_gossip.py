"""Variance-corrected gossip (Tian, Al-Ars, Kitsak, Hofstee 2024, arXiv 2404.04616).

Averaging k uncorrelated models shrinks each layer's weight variance (by beta^2 +
(1-beta)^2/k per merge), which stalls decentralized learning from independent initial models.
After the gossip merge, every corrected tensor is rescaled about its mean to the mean
variance of the RECEIVED models (self excluded), so the variance set at initialisation
survives merging.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.variance import segment_indicator, segment_moments, variance_correct
from protocols.gossip import Gossip, GossipConfig, merge


def vc_merge(own: torch.Tensor, received_sum: torch.Tensor, received_var_sum: torch.Tensor,
             count: torch.Tensor, beta: float, indicator: torch.Tensor, corrected: torch.Tensor, *,
             eps: float = 1e-8, unbiased: bool = False) -> torch.Tensor:
    """The variance-corrected merge, row by row (any number of rows).

    own [n, P]; received_sum [n, P] and received_var_sum [n, L]: sums over the k received
    models of their parameters and of their per-tensor variances; count [n] = k; indicator
    [P, L] maps coordinates to tensors (kernels.variance.segment_indicator).
    W_bar = beta * own + (1 - beta) * mean(received); then each tensor with corrected[l] is
    rescaled about its mean to v* = received_var_sum / k.
    """
    merged = merge(own, received_sum, count, beta)
    target = received_var_sum.double() / count.to(torch.float64).view(-1, 1)
    return variance_correct(merged, target, indicator, corrected, eps=eps, unbiased=unbiased)


def corrected_tensors(layout, correct_biases: bool, device=None) -> torch.Tensor:
    """[L] bool: which tensors the correction rescales (weights only, or all of them)."""
    return torch.tensor([True] * layout.n_tensors if correct_biases else list(layout.is_weight()),
                        device=device)


@dataclass
class VCGossipConfig(GossipConfig):
    correct_biases: bool = False  # the paper-era code corrects weights only
    eps: float = 1e-8             # relative floor: v is floored at eps * v*
    estimator: str = "population"  # population (N) | unbiased (N-1), for target and current alike

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.eps < 1:
            raise ValueError(f"protocol.eps must be in [0, 1), got {self.eps}")
        if self.aggregator != "mean":
            raise ValueError(f"protocol.aggregator: vc_gossip merges the mean of what arrives and corrects its "
                             f"variance; robust rules run with protocol=gossip (got {self.aggregator!r})")
        if self.estimator not in ("population", "unbiased"):
            raise ValueError(f"protocol.estimator must be one of population, unbiased; got {self.estimator!r}")


class VCGossip(Gossip):
    """Gossip whose sends carry each model's per-tensor variances (L extra columns) and whose
    merge applies `vc_merge`."""
    name = "vc_gossip"
    config = VCGossipConfig

    def __init__(self, cfg, world):
        super().__init__(cfg, world)
        lay = world.layout
        self.indicator = segment_indicator(lay.sizes, world.device)
        self.corrected = corrected_tensors(lay, cfg.correct_biases, world.device)
        self.unbiased = cfg.estimator == "unbiased"

    def message(self, rows):
        # the receiver could compute these from the model itself; sending them along saves
        # recomputing per edge (bytes_sent counts the parameters only)
        _, var = segment_moments(rows, self.indicator, unbiased=self.unbiased)
        return torch.cat([rows, var.to(rows.dtype)], dim=1)

    def merge(self, own, received, count):
        p = self.world.layout.size
        return vc_merge(own, received[:, :p], received[:, p:], count, self.cfg.beta, self.indicator,
                        self.corrected, eps=self.cfg.eps, unbiased=self.unbiased)
