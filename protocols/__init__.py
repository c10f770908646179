"""Aggregation protocols: each one's pure math plus its event handlers.

`PROTOCOLS` maps a name to (Protocol class, config dataclass); `protocol=<name>` picks one.
"""
from protocols.base import Context, Protocol
from protocols.fedavg import FedAvg, FedAvgConfig
from protocols.gossip import Gossip, GossipConfig
from protocols.vc_gossip import VCGossip, VCGossipConfig

PROTOCOLS = {
    "fedavg": (FedAvg, FedAvgConfig),
    "gossip": (Gossip, GossipConfig),
    "vc_gossip": (VCGossip, VCGossipConfig),
}

__all__ = ["PROTOCOLS", "Context", "FedAvg", "FedAvgConfig", "Gossip", "GossipConfig", "Protocol",
           "VCGossip", "VCGossipConfig"]
