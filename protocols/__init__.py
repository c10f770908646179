"""Aggregation protocols: each one's pure math, its state and its event handlers.

Every `Protocol` subclass that sets `name` registers itself (protocols.registry): the built-in
ones below, and any defined in a user's own module. `protocols.get(name)` finds one by name or
by import path ("my_rules.MedianGossip").
"""
from protocols.base import Priority, Protocol, ProtocolConfig
from protocols.registry import ProtocolError, get, names
from protocols.fedavg import FedAvg, FedAvgConfig
from protocols.gossip import Gossip, GossipConfig
from protocols.vc_gossip import VCGossip, VCGossipConfig
from protocols.m2n2 import M2N2, M2N2Config
from protocols.ihomer import IHomer, IHomerConfig
from protocols.fedbuff import FedAsync, FedAsyncConfig, FedBuff, FedBuffConfig

__all__ = ["FedAsync", "FedAsyncConfig", "FedAvg", "FedAvgConfig", "FedBuff", "FedBuffConfig", "Gossip", "GossipConfig", "IHomer", "IHomerConfig", "M2N2", "M2N2Config", "Priority", "Protocol", "ProtocolConfig",
           "ProtocolError", "VCGossip", "VCGossipConfig", "get", "names"]
