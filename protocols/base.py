"""What every protocol is: a registered class with a typed config, its own state, and its math.

A protocol has two halves. Its math (aggregate, merge) is pure functions of tensors,
batch-size agnostic: the simulator calls them on thousands of rows, the Flower bridge on one.
Its orchestration is event handlers that the engine calls with waves of node ids.

Writing one (in the package or in your own module):

    @dataclass
    class MyConfig(ProtocolConfig):   # the options: types and defaults are the schema
        trim: float = 0.1

    class MyProtocol(Protocol):
        name = "my_protocol"          # defining the class registers it
        config = MyConfig
        def bind(self): ...           # register event handlers with self.engine
        def start(self): ...          # schedule the first events

The protocol is built from its config and the scenario's World (data, owners, graph and links,
speeds, model template, task). `attach` joins it to an engine: it builds the state
(`init_state`; default: a Fleet, one model per node, in `self.fleet`) and calls `bind`.
A protocol that defines `merge` (a per-node merge of received models) runs on the Flower
bridge's relay too; `merge_received` applies it to one node's inbox as the bridge does.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np
import torch

from protocols import registry


class Priority(enum.IntEnum):
    """The order of event kinds due at one simulated instant (lower first; the engine runs one
    wave per kind)."""
    TOPOLOGY = 5    # the graph is re-drawn (topology.dynamic)
    RECEIVE = 10    # a message reaches its destination (gossip delivery, FedAvg upload)
    DISPATCH = 20   # a client gets its work (FedAvg download)
    TRAINED = 30    # local training ends
    WAKE = 35       # an asynchronous node wakes up
    ROUND = 40      # a synchronous round starts
    DEADLINE = 50   # a round's deadline passes
    CLOCK = 1000    # the evaluation clock of asynchronous protocols, after everything else


@dataclass
class ProtocolConfig:
    """Base of every protocol's config dataclass. `name` is filled in with the protocol's
    registered name (or import path); subclasses add the options, with defaults, and check
    their values in `__post_init__` (raise ValueError naming the key: protocol.<option>)."""
    name: str = ""


class Protocol:
    name: ClassVar[str] = ""                 # the registry key: protocol=<name>
    config: ClassVar[type] = ProtocolConfig  # the options (a ProtocolConfig dataclass)
    uses_graph: ClassVar[bool] = True        # False: clients talk only to a server (world.server_*)
    columns: ClassVar[tuple[str, ...]] = ()  # the metrics.csv columns extra_metrics() adds
    receives: ClassVar[str] = "sum"          # merge sees "sum": summed messages; "models": each one
    merge: ClassVar[Callable | None] = None  # a per-node merge rule (see Gossip.merge), if any

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            registry.register(cls)

    @classmethod
    def needs_graph(cls, cfg) -> bool:
        """Does this configuration use the topology (else only the server links)?"""
        return cls.uses_graph

    @classmethod
    def template(cls, cfg, data):
        """A model of the protocol's own kind for this data (a BatchedModel), or None: the
        config's `model`. iHOMER's nodes learn classifier chains over a label partition."""
        return None

    @classmethod
    def supports_attack(cls, cfg) -> bool:
        """Does this protocol model Byzantine clients (the scenario's `attack`)?"""
        return False

    @classmethod
    def supports_faults(cls, cfg) -> bool:
        """Does this protocol model availability, lost messages and changing graphs?"""
        return False

    @classmethod
    def supports_storage(cls, cfg) -> bool:
        """Can its Fleet keep the node stack in a 16-bit dtype (sim.storage)? It must read
        models through Fleet.rows (float32) and write them through Fleet.set_params."""
        return False

    @classmethod
    def independent_init(cls, cfg) -> bool:
        """Does every node start from its own random model (else one shared model)?"""
        return False

    def __init__(self, cfg: ProtocolConfig, world):
        self.cfg = cfg
        self.world = world
        self.bytes_sent = 0
        self.lost = 0      # messages lost (topology.loss, failed links, offline receivers)
        self.dropouts = 0  # participations that ended because a node went offline or its message was lost

    # the simulation
    def attach(self, engine, on_round: Callable[[int, float], None]) -> None:
        """Join an engine: build the state, then register the event handlers."""
        self.engine = engine
        self.on_round = on_round  # call on_round(r, t) when round r ends at simulated time t
        self.init_state()
        self.bind()

    def init_state(self) -> None:
        """The default state: a Fleet (one model per node, on the node's own data)."""
        self.fleet = self.world.fleet(independent=self.independent_init(self.cfg))

    def bind(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    @property
    def model_bytes(self) -> int:
        """Bytes of one model on the wire (float32 parameters)."""
        return self.world.model_bytes

    def models(self) -> torch.Tensor:
        """The models to evaluate, one row each [k, P] (all nodes; FedAvg: the global model)."""
        return self.fleet.params

    def evaluate(self, rows: torch.Tensor, nodes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The task's metrics of rows [k, P] of models() on the held-out test set; `nodes` names
        the rows when they are a sample of models() (None: all of them)."""
        return self.world.evaluate(rows)

    def train_loss(self) -> float:
        """Mean last local training loss (NaN when there is none)."""
        fleet = getattr(self, "fleet", None)
        return fleet.train_loss() if fleet is not None else math.nan

    def prequential_metrics(self) -> dict[str, float]:
        """The pooled test-then-train columns when task.prequential is on ({} otherwise)."""
        fleet = getattr(self, "fleet", None)
        return fleet.prequential_metrics() if fleet is not None else {}

    def extra_metrics(self) -> dict[str, float]:
        """The protocol's own metrics.csv columns (keys: `columns`)."""
        return {}

    def server_message(self, kind: str, t: float, nodes: np.ndarray, counter, **payload) -> None:
        """A model between the server and each node (kind "download": to them; else from them),
        arriving as event `kind` after the node's server link delay. A lost message (World.transmit)
        arrives as event "lost" at the time it would have arrived: the server learns of it then,
        so a client lost again and again cannot hold the clock at one instant."""
        arrive = t + self.world.server_delay(nodes, self.model_bytes)
        if self.world.faulty:
            server = np.full_like(nodes, -1)
            src, dst = (server, nodes) if kind == "download" else (nodes, server)
            ok, when = self.world.transmit(src, dst, t, arrive, np.broadcast_to(counter, nodes.shape))
            payload = {k: np.broadcast_to(v, nodes.shape) for k, v in payload.items()}
            self.lost += int((~ok).sum())
            self.engine.schedule("lost", arrive[~ok], nodes[~ok], **{k: v[~ok] for k, v in payload.items()})
            nodes, arrive = nodes[ok], when[ok]
            payload = {k: v[ok] for k, v in payload.items()}
        self.engine.schedule(kind, arrive, nodes, **payload)

    def fault_metrics(self, t: float) -> dict[str, float]:
        """The fault columns of metrics.csv, when the scenario has faults."""
        out = {"messages_lost": float(self.lost), "dropouts": float(self.dropouts)}
        if self.world.availability is not None:
            out["online_fraction"] = self.world.availability.share(t)
        if self.world.dynamic is not None:
            out["graph_version"] = float(getattr(self, "version", self.world.graph_version(t)))
        return out

    def start_clock(self, round_time: float) -> None:
        """Asynchronous protocols: a round is `round_time` simulated seconds."""
        self._round_time = round_time
        self._tick = 0
        self.engine.on("tick", self._on_tick, Priority.CLOCK)
        self.engine.schedule("tick", round_time, -1)

    def _on_tick(self, t: float, nodes: np.ndarray, payload: dict) -> None:
        self._tick += 1
        self.engine.schedule("tick", (self._tick + 1) * self._round_time, -1)
        self.on_round(self._tick, t)

    # the per-node merge rule, shared with the Flower relay
    def message(self, rows: torch.Tensor) -> torch.Tensor:
        """What a send carries per model [n, width]: the parameters (subclasses may append
        statistics the receiver wants summed over its inbox)."""
        return rows

    def relay_problem(self) -> str | None:
        """Why this configuration cannot run on the Flower relay as it runs in the simulator
        (None: it can). The relay runs synchronous rounds: train, send, merge."""
        return None

    def merge_received(self, own: torch.Tensor, received: torch.Tensor) -> torch.Tensor:
        """One node's merge: own [P] and its k received models [k, P] -> merged [P]. The same
        `message` and `merge` the simulator applies to whole waves."""
        msgs = self.message(received)
        inbox = msgs.sum(0, keepdim=True) if self.receives == "sum" else msgs.unsqueeze(0)
        return self.merge(own.view(1, -1), inbox, torch.tensor([len(received)]))[0]
