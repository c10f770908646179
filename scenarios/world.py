"""The one assembly: a resolved RunConfig -> the World both engines run.

The World is everything a scenario fixes before any event happens: the data and its owners
(plus each node's fixed validation split and, for a stream, arrival rates), the graph with its
link attributes, each client's link to a server, compute speeds, the model template and the
task. The simulator and the Flower bridge build it with the same code and the same seeds, so
node i is the same node in both. Protocols build their state from it.

Every random choice is drawn from its own named stream of the run's seed (kernels.random
.derive_seed), so adding a stream never shifts another.
"""
from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from functools import cached_property

import networkx as nx
import numpy as np
import torch
from torch import nn

import protocols
from clients import availability as online
from clients.attacks import Attack
from clients.datasets import Dataset, available_memory_bytes, load_dataset
from clients.fleet import Fleet
from clients.nodes import NodeData
from clients.partition import partition
from clients.profiles import Distribution, compute_speeds
from kernels import MLP, BatchedModel, LeNet, LogisticRegression, SmallCNN, init_stack
from kernels.random import counter_uniform, derive_seed
from protocols.registry import ProtocolError, import_object
from scenarios.schema import ConfigError, RunConfig, first_line
from topologies import TopologyError, attach_links, build_graph, check_graph, edge_arrays, link_delay
from topologies.dynamic import Dynamic


def rng(seed: int, name: str) -> np.random.Generator:
    """The run's named random stream."""
    return np.random.default_rng(derive_seed(seed, name))


@dataclass(eq=False)
class World:
    cfg: RunConfig
    data: Dataset
    owner: np.ndarray             # owner[k]: the node training on row k of data.X_train (-1: none)
    val_owner: np.ndarray | None  # val_owner[k]: the node whose validation split holds row k (-1: none)
    graph: nx.Graph               # the topology (no edges for star protocols: they use the server links)
    topology_name: str            # as the summary names it ("server" for star protocols)
    server_latency: np.ndarray    # [N] seconds, each client's link to a server
    server_bandwidth: np.ndarray  # [N] bytes/s
    speeds: np.ndarray            # [N] samples/s
    stream_rates: np.ndarray | None  # [N] rows/s reaching each node (None: all rows at t = 0)
    model: BatchedModel           # the template, its row layout and the task
    protocol_class: type
    given_weights: bool = False   # a module passed to assemble(): every node starts from its weights
    attack: Attack | None = None  # Byzantine clients (clients.attacks)
    byzantine: np.ndarray | None = None  # bool [N]: which nodes attack
    availability: online.OnlineProcess | None = None  # nodes online and offline (None: always online)
    dynamic: Dynamic | None = None  # the graph re-drawn every dynamic.every seconds

    @property
    def faulty(self) -> bool:
        """Does anything fail: nodes going offline, lost messages, failing links, a changing graph?"""
        t = self.cfg.topology
        return self.availability is not None or t.loss > 0 or t.failures is not None or self.dynamic is not None

    @property
    def n(self) -> int:
        return self.cfg.nodes

    @property
    def seed(self) -> int:
        return self.cfg.seed

    @property
    def device(self) -> torch.device:
        return torch.device(self.cfg.device)

    @property
    def layout(self):
        return self.model.layout

    @property
    def task(self):
        return self.model.task

    @property
    def model_bytes(self) -> int:
        """Bytes of one model on the wire (float32 parameters)."""
        return self.layout.size * 4

    @cached_property
    def edges(self) -> dict[str, np.ndarray]:
        """The graph as sorted directed edge arrays (topologies.edge_arrays)."""
        return edge_arrays(self.graph)

    def attacked(self, rows: torch.Tensor, nodes: np.ndarray, reference: torch.Tensor, counter,
                 honest: tuple | None = None) -> torch.Tensor:
        """The models [k, P] that nodes [k] send, the attackers' rows rewritten (clients.attacks)
        against `reference` (the model they started from: [P]); `counter` keys the noise (a
        round, or one count per row). Unchanged without an attack."""
        if self.attack is None:
            return rows
        dev = rows.device
        return self.attack.apply(rows, torch.as_tensor(self.byzantine[nodes], device=dev), reference,
                                 derive_seed(self.seed, "attack"), torch.as_tensor(nodes, device=dev), counter,
                                 honest=honest)

    # faults: who is online, which messages arrive, which graph holds
    def online(self, nodes: np.ndarray, t) -> np.ndarray:
        """bool: is each node online at t?"""
        if self.availability is None:
            return np.ones(len(nodes), dtype=bool)
        return self.availability.online(nodes, t)

    def online_through(self, nodes: np.ndarray, t0, t1) -> np.ndarray:
        """bool: was each node online all the time from t0 to t1?"""
        if self.availability is None:
            return np.ones(len(nodes), dtype=bool)
        return self.availability.online_through(nodes, t0, t1)

    def next_online(self, nodes: np.ndarray, t) -> np.ndarray:
        """The first time >= t each node is online (+inf: never again)."""
        if self.availability is None:
            return np.broadcast_to(np.asarray(t, dtype=np.float64), np.shape(nodes)).copy()
        return self.availability.next_online(nodes, t)

    def transmit(self, src: np.ndarray, dst: np.ndarray, sent: float, arrive: np.ndarray, counter: np.ndarray,
                 edges: tuple[int, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Which of these messages arrive, and when: (ok [m] bool, arrival times [m]).

        A message is lost with probability topology.loss (drawn from (src, dst, counter): the
        same message is lost in every run of the seed), over a failed link (graph messages:
        `edges` = (graph version, edge indices), the link down when it is sent), or when its
        receiver is offline on arrival (availability.messages=drop); with messages=hold it
        arrives when the receiver is back. dst = -1 is the server (always online)."""
        ok = np.ones(len(src), dtype=bool)
        if len(src) == 0:
            return ok, arrive
        loss = self.cfg.topology.loss
        if loss > 0:
            u = counter_uniform(derive_seed(self.seed, "loss"), *(torch.tensor(np.asarray(a, dtype=np.int64))
                                                                  for a in (src, dst, counter)))
            ok &= u.numpy() >= loss
        if edges is not None and self.cfg.topology.failures is not None:
            ok &= self._link_process(edges[0]).online(edges[1], sent)
        if self.availability is not None:
            to_node = dst >= 0
            if self.availability.messages == "hold":
                back = self.availability.next_online(np.where(to_node, dst, 0), arrive)
                arrive = np.where(to_node, back, arrive)
                ok &= np.isfinite(arrive)
            else:
                ok &= ~to_node | self.availability.online(np.where(to_node, dst, 0), arrive)
        return ok, arrive

    def graph_version(self, t: float) -> int:
        """Which graph holds at simulated time t (0: always, for a fixed graph)."""
        return 0 if self.dynamic is None else self.dynamic.version(t)

    def edges_at(self, version: int) -> dict[str, np.ndarray]:
        """The directed edge arrays of a version of the graph (topologies.dynamic)."""
        if version == 0:
            return self.edges
        return self._recent("_versions", version,
                            lambda: edge_arrays(linked_graph(self.cfg, drawn_graph(self.cfg, self.dynamic, version),
                                                             version)))

    def _link_process(self, version: int) -> online.Sessions:
        def make():
            e = self.edges_at(version)
            pairs = np.stack([np.minimum(e["src"], e["dst"]), np.maximum(e["src"], e["dst"])], axis=1)
            return online.link_sessions(self.cfg.topology.failures, pairs, self.n,
                                        derive_seed(self.seed, "link-failures"))
        return self._recent("_links", version, make)

    def _recent(self, name: str, version: int, make):
        """A per-graph-version value, built once; the run moves forward, so only the last
        three versions are kept."""
        cache = self.__dict__.setdefault(name, {})
        if version not in cache:
            if len(cache) > 2:
                cache.pop(min(cache))
            cache[version] = make()
        return cache[version]

    def server_delay(self, nodes: np.ndarray, n_bytes: float) -> np.ndarray:
        """Seconds for `n_bytes` to cross each node's link to the server (either way)."""
        return link_delay(self.server_latency[nodes], self.server_bandwidth[nodes], n_bytes)

    def protocol(self):
        """The scenario's protocol, built from its config and this world (no engine yet)."""
        return self.protocol_class(self.cfg.protocol, self)

    def initial_models(self, independent: bool) -> torch.Tensor:
        """[N, P] first models: one random draw per node, or one shared draw; or, for a module
        given to assemble(), its own weights in every row."""
        if self.given_weights:
            return self.template_row().expand(self.n, -1).clone()
        return init_stack(self.model.module, self.layout, self.n, derive_seed(self.seed, "init"),
                          independent=independent, device=self.device)

    def initial_row(self, node: int, independent: bool) -> torch.Tensor:
        """Row `node` of initial_models(independent) [P], without drawing the others."""
        if self.given_weights:
            return self.template_row()
        rows = node + 1 if independent else 1  # row i of init_stack does not depend on N
        return init_stack(self.model.module, self.layout, rows, derive_seed(self.seed, "init"),
                          independent=independent, device=self.device)[-1]

    def template_row(self) -> torch.Tensor:
        """The template module's own weights as one float32 row [P]."""
        params = dict(self.model.module.named_parameters())
        return self.layout.flatten(params).detach().to(self.device, torch.float32)

    def node_data(self, only=None) -> NodeData:
        """The nodes' data on the device, ready for batched training (`only`: these nodes).
        All nodes' is built once and kept (a checkpoint refers to it instead of storing it)."""
        if only is None:
            if "_all_nodes" not in self.__dict__:
                self._all_nodes = self._node_data(None)
            return self._all_nodes
        return self._node_data(only)

    def _node_data(self, only) -> NodeData:
        return NodeData(self.model, self.data.X_train, self.data.y_train, self.owner, self.n, self.speeds,
                        self.cfg.train, self.seed, val_owner=self.val_owner, stream_rates=self.stream_rates,
                        only=only, device=self.device)

    def fleet(self, independent: bool) -> Fleet:
        """The default protocol state: one model per node."""
        return Fleet(self.node_data(), self.initial_models(independent), prequential=self.cfg.task.prequential,
                     storage=getattr(torch, self.cfg.sim.storage))

    @cached_property
    def test_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(X, y) on the device: the first eval.max_test rows of the held-out test split."""
        m = self.cfg.eval.max_test
        return (torch.as_tensor(self.data.X_test[:m], dtype=torch.float32, device=self.device),
                torch.as_tensor(self.data.y_test[:m], dtype=self.task.label_dtype, device=self.device))

    def evaluate(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every model row [k, P] on the held-out test set (its first eval.max_test rows):
        the task's metrics, {metric: [k]}."""
        return self.model.evaluate(rows, *self.test_set)


def build_model(cfg: RunConfig, data: Dataset) -> nn.Module:
    """The model template the config names, sized for the data."""
    m = cfg.model
    if "." in m.name:
        return _user_model(m.name, m.kwargs, data)
    if m.name in ("cnn", "lenet") and data.image_shape is None:
        raise ConfigError(f"model={m.name} needs image data; data={cfg.data.name} is tabular (use model=mlp)")
    if m.name == "logreg":
        return LogisticRegression(data.n_features, data.n_classes)
    if m.name == "mlp":
        return MLP(data.n_features, data.n_classes, tuple(m.hidden))
    if m.name == "cnn":
        return SmallCNN(data.image_shape, data.n_classes, tuple(m.channels))
    if min(data.image_shape[1:]) < 16:
        raise ConfigError(f"model=lenet needs images of at least 16x16; got {data.image_shape} (use model=cnn)")
    return LeNet(data.image_shape, data.n_classes)


def _user_model(path: str, kwargs: dict, data: Dataset) -> nn.Module:
    """A user's nn.Module class, given model.kwargs plus whichever of n_features, n_classes and
    image_shape its constructor takes."""
    try:
        cls = import_object(path, "model")
    except ProtocolError as err:
        raise ConfigError(str(err)) from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(f"model {path!r} is not a torch.nn.Module class")
    known = {"n_features": data.n_features, "n_classes": data.n_classes, "image_shape": data.image_shape}
    params = inspect.signature(cls).parameters
    args = {k: v for k, v in known.items() if k in params and k not in kwargs}
    try:
        return cls(**args, **dict(kwargs))
    except TypeError as err:
        raise ConfigError(f"model {path!r} could not be built with {sorted({**args, **kwargs})}: {err}; "
                          "set its arguments in model.kwargs") from None


def _validation_split(owner: np.ndarray, n: int, share: float, generator: np.random.Generator):
    """Hold out floor(share * n_i) rows of each node i (at least one row stays for training):
    returns (training owner, validation owner), -1 where a row is not in that part."""
    sizes = np.bincount(owner, minlength=n)
    held = np.minimum(np.floor(share * sizes).astype(np.int64), np.maximum(sizes - 1, 0))
    order = np.lexsort((generator.random(len(owner)), owner))  # by node, in random order within it
    rank = np.empty(len(owner), np.int64)
    rank[order] = np.arange(len(owner)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    in_val = rank < held[owner]
    return np.where(in_val, -1, owner), np.where(in_val, owner, -1)


def drawn_graph(cfg: RunConfig, dynamic: Dynamic | None, version: int) -> nx.Graph:
    """Version `version` of the topology (0: the scenario's own; a sequence of graph files,
    topology.dynamic.paths, starts with its first), from its own named stream of the seed."""
    t = cfg.topology
    kw = dict(degree=t.degree, p=t.p, k=t.k, m=t.m, path=t.path)
    name = t.name
    if dynamic is not None and (version or dynamic.paths):
        name, kw = dynamic.topology(version, t.name, kw)
    return build_graph(name, cfg.nodes, rng(cfg.seed, f"topology-{version}" if version else "topology"), **kw)


def linked_graph(cfg: RunConfig, graph: nx.Graph, version: int) -> nx.Graph:
    """The graph checked, with latency and bandwidth drawn for every link (per version)."""
    t = cfg.topology
    graph = check_graph(graph, cfg.nodes, allow_disconnected=t.allow_disconnected)
    latency, bandwidth = Distribution.from_spec(t.latency), Distribution.from_spec(t.bandwidth)
    links = rng(cfg.seed, f"links-{version}" if version else "links")
    return attach_links(graph, lambda k: latency.sample(k, links), lambda k: bandwidth.sample(k, links))


def assemble(cfg: RunConfig, *, graph: nx.Graph | None = None, model: nn.Module | None = None) -> World:
    """The World of a resolved config; `graph` (networkx) and `model` (an nn.Module template)
    replace the ones the config names."""
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={cfg.device} but no CUDA GPU is available; use device=cpu")
    try:
        proto = protocols.get(cfg.protocol.name)
    except ProtocolError as err:
        raise ConfigError(str(err)) from None
    torch.manual_seed(derive_seed(cfg.seed, "torch"))  # what a template draws at construction
    d = cfg.data
    data = load_dataset(d.name, seed=cfg.seed, **d.options())
    owner = partition(data.y_train, cfg.nodes, d.partition, rng(cfg.seed, "partition"),
                      alpha=d.alpha, classes_per_node=d.classes_per_node, exponent=d.exponent)
    val_owner = None
    if d.validation > 0:
        owner, val_owner = _validation_split(owner, cfg.nodes, d.validation, rng(cfg.seed, "validation"))
    attack = Attack.from_spec(cfg.attack)
    byzantine = None
    if attack is not None:
        try:
            byzantine = attack.attackers(cfg.nodes, rng(cfg.seed, "byzantine"))
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if not proto.supports_attack(cfg.protocol):
            raise ConfigError(f"attack: protocol={cfg.protocol.name} has no Byzantine clients yet; use fedavg, "
                              "fedbuff, fedasync, gossip or vc_gossip")
        if attack.poisons_data:  # the attackers train on flipped labels
            y = data.y_train.copy()
            mine = byzantine[np.maximum(owner, 0)] & (owner >= 0)
            y[mine] = attack.flip_labels(y[mine], data.n_classes)
            data = dataclasses.replace(data, y_train=y)
    speeds = compute_speeds(Distribution.from_spec(cfg.speed), cfg.nodes, rng(cfg.seed, "speed"))
    stream_rates = None
    if d.stream_rate is not None:
        stream_rates = Distribution.from_spec(d.stream_rate).sample(cfg.nodes, rng(cfg.seed, "stream"))

    t = cfg.topology
    latency, bandwidth = Distribution.from_spec(t.latency), Distribution.from_spec(t.bandwidth)
    dynamic = Dynamic.from_spec(t.dynamic)
    if proto.needs_graph(cfg.protocol) or graph is not None:
        name = t.name if graph is None else "user graph"
        graph = linked_graph(cfg, drawn_graph(cfg, dynamic, 0) if graph is None else graph, 0)
    else:  # star protocols (FedAvg) talk to a server outside the graph
        graph, name = nx.empty_graph(cfg.nodes), "server"
    srv = rng(cfg.seed, "server-links")
    server_latency = latency.sample(cfg.nodes, srv)
    server_bandwidth = bandwidth.sample(cfg.nodes, srv)

    try:
        nodes_online = online.build(cfg.availability, cfg.nodes, derive_seed(cfg.seed, "availability"))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    faults = [k for k, on in (("availability", nodes_online is not None), ("topology.loss", t.loss > 0),
                              ("topology.failures", t.failures is not None), ("topology.dynamic", dynamic is not None))
              if on]
    if cfg.sim.storage != "float32" and not proto.supports_storage(cfg.protocol):
        raise ConfigError(f"sim.storage={cfg.sim.storage}: protocol={cfg.protocol.name} keeps its models in "
                          "float32; 16-bit node stacks are for gossip and vc_gossip")
    if faults and not proto.supports_faults(cfg.protocol):
        raise ConfigError(f"{faults[0]}: protocol={cfg.protocol.name} does not model faults yet; "
                          "use fedavg, fedasync, fedbuff, gossip or vc_gossip")
    if (t.failures is not None or dynamic is not None) and not proto.needs_graph(cfg.protocol):
        key = "topology.failures" if t.failures is not None else "topology.dynamic"
        raise ConfigError(f"{key}: protocol={cfg.protocol.name} talks to a server, not over the graph; "
                          "use topology.loss or availability")

    if model is not None and not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    try:
        own = proto.template(cfg.protocol, data) if model is None else None
    except ProtocolError as err:
        raise ConfigError(str(err)) from None
    if own is not None:  # the protocol's own kind of model (the model group does not apply)
        check_memory(cfg, own.module)
        batched = own.to(cfg.device)
    else:
        check_memory(cfg, model if model is not None else _on_meta(cfg, data))
        module = model if model is not None else build_model(cfg, data)
        try:
            batched = BatchedModel(module.to(cfg.device), data.task)
        except ValueError as err:  # no parameters, or buffers
            raise ConfigError(f"model: {err}") from None
    probe(batched, data, cfg.device)
    world = World(cfg, data, owner, val_owner, graph, name, server_latency, server_bandwidth, speeds,
                  stream_rates, batched, proto, given_weights=model is not None, attack=attack, byzantine=byzantine,
                  availability=nodes_online, dynamic=dynamic)
    if dynamic is not None:  # a redraw that cannot be built is a config error now, not mid-run
        try:
            world.edges_at(1)
        except TopologyError as err:
            raise ConfigError(f"topology.dynamic: {err}") from None
    return world


STACK_COPIES = 3  # [N, P] float32 stacks any run holds at least (models, gradients, a merge buffer)


def _on_meta(cfg: RunConfig, data: Dataset) -> nn.Module | None:
    """The named model built without memory (parameters on the meta device), to count them."""
    try:
        with torch.device("meta"):
            return build_model(cfg, data)
    except ConfigError:
        raise
    except Exception:  # a user module that cannot be built on meta: it is built for real next
        return None


def check_memory(cfg: RunConfig, module: nn.Module | None) -> None:
    """Refuse, before allocating, a node stack that cannot fit in the device's free memory."""
    if module is None:
        return
    p = sum(t.numel() for t in module.parameters())
    need = cfg.nodes * p * 4 * STACK_COPIES + p * 4
    if cfg.device.startswith("cuda"):
        free = torch.cuda.mem_get_info(torch.device(cfg.device))[0]
    else:
        free = available_memory_bytes()
    if free is not None and need > free:
        raise ConfigError(f"this run needs at least {need / 1e9:.3g} GB ({cfg.nodes:,} nodes x {p:,} parameters "
                          f"x 4 bytes x {STACK_COPIES} copies) but {free / 1e9:.3g} GB is free on {cfg.device}; "
                          "use fewer nodes or a smaller model")


def probe(batched: BatchedModel, data: Dataset, device: str) -> None:
    """Run the template once, batched, on two training rows: a model that cannot run in a node
    stack, or that does not fit the data, is a one-line ConfigError here, not a traceback later."""
    if any(isinstance(m, nn.modules.dropout._DropoutNd) for m in batched.module.modules()):
        raise ConfigError("model: Dropout layers cannot run in a node stack (their random masks would not "
                          "come from the run's seed); remove them")
    x = torch.as_tensor(data.X_train[:2], dtype=torch.float32, device=device)
    y = torch.as_tensor(data.y_train[:2], dtype=batched.task.label_dtype, device=device)
    row = batched.layout.flatten(dict(batched.module.named_parameters())).detach().to(device, torch.float32)
    try:
        logits = batched.logits(row[None], x)
        if tuple(logits.shape[1:]) != (len(x), data.n_classes):
            raise ConfigError(f"model outputs {tuple(logits.shape[2:])} values per sample; the data needs "
                              f"{data.n_classes} ({'labels' if data.task == 'multilabel' else 'classes'})")
        batched.grad(row[None], x[None], y[None])
    except ConfigError:
        raise
    except Exception as err:
        raise ConfigError(f"model cannot run on this data ({data.n_features} features per sample, "
                          f"image shape {data.image_shape}): {first_line(err)}") from None


__all__ = ["World", "assemble", "build_model", "rng"]
