"""A gossip protocol of your own: merge with a coordinate-wise trimmed mean of the models
received, so a few extreme neighbours cannot drag a node's model away."""
from dataclasses import dataclass

import torch

from protocols import Gossip, GossipConfig


@dataclass
class TrimmedConfig(GossipConfig):
    trim: float = 0.25  # share of the received models dropped at each end, per coordinate

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.trim < 0.5:
            raise ValueError(f"protocol.trim must be in [0, 0.5), got {self.trim}")


class TrimmedMeanGossip(Gossip):
    name = "trimmed_gossip"  # defining the class registers it
    config = TrimmedConfig
    receives = "models"      # merge() gets every received model, not their sum

    def merge(self, own, received, count):
        # own [n, P]; received [n, k, P], NaN beyond count[i] models (NaN sorts last)
        ranked = received.sort(dim=1).values
        slot = torch.arange(received.shape[1], device=own.device).view(1, -1, 1)
        cut = (self.cfg.trim * count).floor().view(-1, 1, 1)
        keep = (slot >= cut) & (slot < count.view(-1, 1, 1) - cut)
        trimmed = torch.where(keep, ranked, 0.0).sum(1) / keep.sum(1)
        return self.cfg.beta * own + (1 - self.cfg.beta) * trimmed
