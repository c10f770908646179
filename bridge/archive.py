"""Federated M2N2 on Flower: the archive at the ServerApp, every score at its node.

The ServerApp is the coordinator of `protocols.m2n2.Federated`: it holds the archive's P model
rows and, for drawing parents, the sums of the nodes' partial fitness [P] and attraction [P, P];
it runs the protocol's own coordinator methods (`draw_round`, `decide`, `place`, `settle`), so a
fleet ends with the simulator's archive. A node keeps, in `context.state`, which of its own
selection rows (its validation split when data.validation > 0, else its training rows) each
archive slot and each of the round's children gets right, and only ever sends partial sums of
them. Messages of round r (a `fraction` of the clients trains; every node scores):

    train               the selected clients (the simulator's seeded draw, sorted): "arrays" is
                        the client's child, drawn from the settled archive; the node trains it
                        with its own minibatch stream and step counter, momentum from zero (the
                        ClientApp's FedAvg handler, as is) and replies with the trained row
    query.m2n2_score    every node: the k trained children ("child-<i>"); it scores them on its
                        own rows, keeps the scores, replies its partial fitness of the archive
                        plus child 0 ("fitness", P + 1 numbers)
    query.m2n2_insert   for children c = 1..k-1: the slots the children before c took ("slots",
                        -1: left out); the node moves those children's scores into its archive
                        rows and replies the partial fitness of the archive plus child c
    query.m2n2_settle   all k slots; the node applies them and replies the settled archive's
                        partial fitness [P], partial attraction [P, P] and its count of correct
                        rows per slot [P] with its number of rows (for the global model: the
                        member with the best pooled selection accuracy, Federated.models())

The first model (slot 0) goes in the same way before round 1 (no training). Partial sums use
the kernels the simulator uses (kernels.merging.partial_fitness, partial_attraction,
niche_weights, capacity 1 / |V_k| for protocol.capacity=node) on the node's rows alone, and the
coordinator adds them in the simulator's order, so every decision and draw is the simulator's.
No per-example score leaves a node; the coordinator sees the models and P + 1, P or P x P
numbers per node and query (the test `test_flower_m2n2` checks the replies).

Faults: a training reply that is an error, late or fails `wire`'s checks leaves that child out.
A node that fails a query is left out of the round's later sums (logged) and is resynced at the
next scoring: its message then carries every occupied archive row ("slot-<j>") to score afresh.
A node that lost its state (restart) answers the scoring with an error and is resynced at once.
Decentralized M2N2 (every node its own model) and central M2N2 (no nodes) are not bridged.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from bridge.relay import Relay
from bridge.scenario import Scenario
from bridge.wire import BadReply, from_record, read_partial, read_reply, to_record
from kernels.merging import (correctness, niche_weights, pack_scores, partial_attraction, partial_fitness,
                             unpack_scores)
from protocols.m2n2 import Federated
from scenarios import ConfigError

log = logging.getLogger("flwr.murmuration")

TRAIN = "train"
SCORE = "query.m2n2_score"
INSERT = "query.m2n2_insert"
SETTLE = "query.m2n2_settle"
PARTIAL = "partial"  # the ArrayRecord of every m2n2 query reply: partial sums only


class OutOfSync(RuntimeError):
    """A node's kept scores do not match the coordinator's archive (state lost, or a message
    missed); the coordinator resyncs it."""


# ---------------------------------------------------------------------------------------------
# the node's side


def selection_rows(sc: Scenario, pid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Node pid's fixed selection rows (protocols.m2n2.selection_set, for one node): its
    validation split when the scenario holds one out anywhere, else its training rows."""
    d = sc.node(pid)
    val = sc.world.val_owner
    if val is not None and bool((val >= 0).any()):
        return d.X_val, d.y_val
    return d.X, d.y


def _capacity(sc: Scenario, n_rows: int) -> torch.Tensor | None:
    if sc.cfg.protocol.capacity != "node":
        return None
    # as Federated.init_state: 1 / |V_k| for each of the node's rows
    return 1.0 / torch.as_tensor([n_rows], dtype=torch.float64)[torch.zeros(n_rows, dtype=torch.long)]


def node_fitness(sc: Scenario, scores: torch.Tensor) -> torch.Tensor:
    """The node's partial shared fitness [K] of score rows [K, V] (z over these K rows, on its
    own examples): its row of what Federated.partial_fitness computes for every node."""
    n_rows = scores.shape[1]
    w = niche_weights(scores, sc.cfg.protocol.alpha, _capacity(sc, n_rows))
    return partial_fitness(scores, w, torch.zeros(n_rows, dtype=torch.long), 1)[0]


def node_attraction(sc: Scenario, scores: torch.Tensor) -> torch.Tensor:
    """The node's partial attraction matrix [K, K] of score rows [K, V]."""
    n_rows = scores.shape[1]
    w = niche_weights(scores, sc.cfg.protocol.alpha, _capacity(sc, n_rows))
    return partial_attraction(scores, w, torch.zeros(n_rows, dtype=torch.long), 1)[0]


def _score(sc: Scenario, pid: int, rows: list[torch.Tensor]) -> torch.Tensor:
    """Which of the node's selection rows each model gets right: bool [len(rows), V]."""
    x, y = selection_rows(sc, pid)
    if not rows or len(y) == 0:
        return torch.zeros(len(rows), len(y), dtype=torch.bool)
    return correctness(sc.world.model, torch.stack(rows).to(x.device), x, y).cpu()


@dataclass
class NodeArchive:
    """What a node keeps between m2n2 messages (in context.state): its scores of the archive
    slots [P, V] and of the round's children [k, V], packed 8 rows to a byte."""
    epoch: int             # the coordinator's settle count these archive scores reflect
    round: int             # the round the children belong to
    applied: int           # children whose slot is already in the archive scores
    archive: torch.Tensor
    children: torch.Tensor

    def save(self, context: Context) -> None:
        context.state["m2n2"] = ConfigRecord({"epoch": self.epoch, "round": self.round, "applied": self.applied,
                                              "rows": self.archive.shape[1], "children": len(self.children)})
        context.state["m2n2-scores"] = ArrayRecord({"archive": Array(_pack(self.archive)),
                                                    "children": Array(_pack(self.children))})

    @classmethod
    def load(cls, context: Context) -> NodeArchive | None:
        meta = context.state.config_records.get("m2n2")
        packed = context.state.array_records.get("m2n2-scores")
        if meta is None or packed is None:
            return None
        n = int(meta["rows"])
        archive, children = (_unpack(packed[k].numpy(), n) for k in ("archive", "children"))
        return cls(int(meta["epoch"]), int(meta["round"]), int(meta["applied"]), archive, children)

    def apply(self, slots: list[int], upto: int) -> None:
        """Move the scores of children applied..upto-1 into the slots they took."""
        if not self.applied <= upto <= min(len(slots), len(self.children)):
            raise OutOfSync(f"the node has applied {self.applied} of round {self.round}'s {len(self.children)} "
                            f"children; asked to apply {upto} with {len(slots)} slots")
        for i in range(self.applied, upto):
            if slots[i] >= 0:
                self.archive[slots[i]] = self.children[i]
        self.applied = upto


def _pack(scores: torch.Tensor) -> np.ndarray:
    """bool [K, V] -> uint8 [K, ceil(V / 8)] (kernels.merging.pack_scores; K = 0 too)."""
    if len(scores) == 0:
        return np.zeros((0, (scores.shape[1] + 7) // 8), np.uint8)
    return pack_scores(scores).numpy()


def _unpack(packed: np.ndarray, n_rows: int) -> torch.Tensor:
    if len(packed) == 0:
        return torch.zeros(0, n_rows, dtype=torch.bool)
    return unpack_scores(torch.as_tensor(np.array(packed)), n_rows)


def _partial(msg: Message, **arrays: torch.Tensor) -> Message:
    record = ArrayRecord({k: Array(np.ascontiguousarray(v.cpu().numpy())) for k, v in arrays.items()})
    return Message(RecordDict({PARTIAL: record}), reply_to=msg)


def _config(msg: Message) -> ConfigRecord:
    return msg.content.config_records["config"]


def _check(sc: Scenario) -> None:
    if not isinstance(sc.protocol, Federated):
        raise ConfigError(f"protocol={sc.cfg.protocol.name} is not federated M2N2: no m2n2 query to answer")


def node_score(sc: Scenario, pid: int, msg: Message, context: Context) -> Message:
    """query.m2n2_score: score the round's children (and, on a resync, the archive rows sent),
    keep the scores, reply the partial fitness of the archive plus child 0."""
    _check(sc)
    cfg, arrays = _config(msg), msg.content.array_records
    r, epoch, k = int(cfg["server-round"]), int(cfg["epoch"]), int(cfg["children"])
    n_rows = len(selection_rows(sc, pid)[1])
    if cfg["resync"]:
        archive = torch.zeros(sc.cfg.protocol.archive, n_rows, dtype=torch.bool)
        slots = sorted(int(key[5:]) for key in arrays if key.startswith("slot-"))
        if slots:
            archive[slots] = _score(sc, pid, [from_record(arrays[f"slot-{j}"], sc.layout) for j in slots])
    else:
        kept = NodeArchive.load(context)
        if kept is None or kept.epoch != epoch:
            raise OutOfSync(f"node {pid} holds archive scores of settle {None if kept is None else kept.epoch}, "
                            f"the coordinator is at {epoch}: resync needed")
        archive = kept.archive
    children = _score(sc, pid, [from_record(arrays[f"child-{i}"], sc.layout) for i in range(k)])
    state = NodeArchive(epoch, r, 0, archive, children)
    state.save(context)
    return _partial(msg, fitness=node_fitness(sc, torch.cat([archive, children[:1]])))


def node_insert(sc: Scenario, pid: int, msg: Message, context: Context) -> Message:
    """query.m2n2_insert: apply the slots the earlier children took, reply the partial fitness
    of the archive plus child c."""
    _check(sc)
    cfg = _config(msg)
    r, c, slots = int(cfg["server-round"]), int(cfg["child"]), [int(s) for s in cfg["slots"]]
    state = NodeArchive.load(context)
    if state is None or state.round != r or not 0 <= c < len(state.children):
        raise OutOfSync(f"node {pid} holds no child {c} of round {r}")
    state.apply(slots, c)
    state.save(context)
    return _partial(msg, fitness=node_fitness(sc, torch.cat([state.archive, state.children[c:c + 1]])))


def node_settle(sc: Scenario, pid: int, msg: Message, context: Context) -> Message:
    """query.m2n2_settle: apply every slot of the round, reply the settled archive's partial
    fitness [P] and attraction [P, P], the correct rows per slot [P] and the row count."""
    _check(sc)
    cfg = _config(msg)
    r, slots = int(cfg["server-round"]), [int(s) for s in cfg["slots"]]
    state = NodeArchive.load(context)
    if state is None or state.round != r or len(slots) != len(state.children):
        raise OutOfSync(f"node {pid} holds no scores of round {r}'s {len(slots)} children")
    state.apply(slots, len(slots))
    state.epoch, state.applied = int(cfg["epoch"]), 0
    state.children = state.children[:0]
    state.save(context)
    s = state.archive
    return _partial(msg, fitness=node_fitness(sc, s), attraction=node_attraction(sc, s),
                    correct=s.sum(1, dtype=torch.int64), rows=torch.tensor([s.shape[1]], dtype=torch.int64))


# ---------------------------------------------------------------------------------------------
# the ServerApp's side


def coordinator(sc: Scenario) -> Federated:
    """A fresh Federated protocol holding only the coordinator's state (an empty archive): the
    part of Federated.init_state that is not the nodes' data and scores."""
    proto = sc.world.protocol()
    if not isinstance(proto, Federated):
        raise ConfigError(f"protocol={sc.cfg.protocol.name} is not federated M2N2")
    w, cfg = sc.world, proto.cfg
    proto.params = torch.zeros(cfg.archive, w.layout.size, device=w.device)
    proto.occupied = np.zeros(cfg.archive, dtype=bool)
    proto.replaced = 0
    proto.round = 0
    return proto


def first_model(proto: Federated, sc: Scenario) -> torch.Tensor:
    """The model slot 0 starts from (as Federated.init_state): one N(0, init_std^2) draw with
    protocol.init=normal, else the fleet's shared initial row."""
    if proto.cfg.init == "normal":
        return proto.draw_models(1, "m2n2-seeds")[0]
    return sc.world.initial_row(0, False).to(torch.float32)


@dataclass
class ArchiveResult:
    params: torch.Tensor                               # [P, D] the final archive (zeros: empty)
    occupied: np.ndarray                               # [P] bool
    best: int                                          # the global model's slot (Federated.models())
    metrics: list[dict] = field(default_factory=list)  # rounds 0..R, as the simulator's rows


class ArchiveServer:
    """The coordinator's loop over the fleet (see the module docstring)."""

    def __init__(self, grid, sc: Scenario, timeout: float):
        self.sc, self.timeout = sc, timeout
        self.relay = Relay(grid, sc, timeout)  # identify, and timed exchanges
        self.proto = coordinator(sc)
        self.P = self.proto.cfg.archive
        self.epoch = 0                          # settles so far (the nodes' archive scores carry it)
        self.synced: set[int] = set()           # vertices whose kept scores match the archive
        self.correct = torch.zeros(self.P, dtype=torch.int64)  # pooled correct selection rows per slot
        self.rows = 0                           # pooled selection rows
        self.last_loss = torch.full((sc.cfg.nodes,), float("nan"), dtype=torch.float64)
        self.t0 = time.perf_counter()

    def discover(self, node_ids: list[int]) -> dict[int, int]:
        return self.relay.discover(node_ids)

    @property
    def node_of(self) -> dict[int, int]:
        return self.relay.node_of

    def ask(self, kind: str, r: int, vertices, content) -> tuple[dict[int, Message], set[int]]:
        """Send `content(v)` (a RecordDict) to each vertex; the replies that came back in time
        without an error {vertex: reply}, and the vertices whose reply was an error."""
        msgs = [Message(content(v), dst_node_id=self.node_of[v], message_type=kind, group_id=str(r), ttl=self.timeout)
                for v in vertices]
        vertex_of = {self.node_of[v]: v for v in vertices}
        got, errors = {}, set()
        for msg in self.relay.exchange(msgs):
            v = vertex_of.get(msg.metadata.src_node_id)
            if v is None:
                continue
            if msg.has_error():
                errors.add(v)
                log.warning("round %d: %s: vertex %d (node %d) answered an error: %s", r, kind, v,
                            self.node_of[v], msg.error.reason)
            else:
                got[v] = msg
        late = sorted(set(vertices) - set(got) - errors)
        if late:
            log.warning("round %d: %s: no reply in time from vertices %s", r, kind, late)
        return got, errors

    def partials(self, kind: str, r: int, replies: dict[int, Message], shapes: dict) -> dict[int, dict]:
        good = {}
        for v, msg in replies.items():
            try:
                good[v] = read_partial(msg, PARTIAL, shapes)
            except BadReply as err:
                log.warning("round %d: %s: rejected the reply of vertex %d (node %d): %s", r, kind, v,
                            self.node_of[v], err)
        return good

    def _fitness_sum(self, parts: dict[int, dict], k: int) -> torch.Tensor:
        """The summed partial fitness [k], added as the simulator adds its nodes' rows
        (Federated.partial_fitness(...).sum(0): a transposed [k, n] stack)."""
        stack = torch.zeros(k, self.sc.cfg.nodes, dtype=torch.float64)
        for v, p in parts.items():
            stack[:, v] = torch.as_tensor(p["fitness"])
        return stack.T.sum(0)

    def insert(self, r: int, rows: list[torch.Tensor]) -> dict:
        """Score, insert one by one, settle: the children `rows` (in client order) go through the
        nodes' partial sums and the coordinator's decisions. Returns round statistics."""
        proto, k, P = self.proto, len(rows), self.P
        records = [to_record(row, self.sc.layout) for row in rows]
        active = sorted(self.node_of)

        def score_msg(v):
            content = RecordDict({f"child-{i}": rec for i, rec in enumerate(records)})
            resync = v not in self.synced
            if resync:  # every occupied slot, to score afresh
                for j in np.flatnonzero(proto.occupied):
                    content[f"slot-{j}"] = to_record(proto.params[j], self.sc.layout)
            content["config"] = ConfigRecord({"server-round": r, "epoch": self.epoch, "children": k,
                                              "resync": resync})
            return content

        replies, errors = self.ask(SCORE, r, active, score_msg)
        retry = sorted(errors & self.synced)
        if retry:  # a node that lost its scores: once more, with the archive
            log.info("round %d: resyncing vertices %s with the archive", r, retry)
            self.synced -= set(retry)
            again, _ = self.ask(SCORE, r, retry, score_msg)
            replies.update(again)
        parts = self.partials(SCORE, r, replies, {"fitness": (P + 1,)})
        active = sorted(parts)
        slots = []
        for c in range(k):
            if c:
                cfg = ConfigRecord({"server-round": r, "child": c, "slots": list(slots)})
                replies, _ = self.ask(INSERT, r, active, lambda v: RecordDict({"config": cfg}))
                parts = self.partials(INSERT, r, replies, {"fitness": (P + 1,)})
                active = sorted(parts)
            if not parts and proto.occupied.any():
                log.warning("round %d: no node sent partial sums for child %d: it is left out", r, c)
                slots.append(-1)
                continue
            slot = proto.decide(self._fitness_sum(parts, P + 1))  # (an empty archive: slot 0 in any case)
            if slot >= 0:
                proto.place(slot, rows[c])
            slots.append(slot)
        self.epoch += 1
        cfg = ConfigRecord({"server-round": r, "slots": list(slots), "epoch": self.epoch})
        replies, _ = self.ask(SETTLE, r, active, lambda v: RecordDict({"config": cfg}))
        parts = self.partials(SETTLE, r, replies, {"fitness": (P,), "attraction": (P, P), "correct": (P,),
                                                   "rows": (1,)})
        self.synced = set(parts)
        if not parts and hasattr(proto, "fitness"):
            log.warning("round %d: no node sent the settled archive's sums; parents are drawn from the last ones", r)
            return {"children": k, "inserted": sum(s >= 0 for s in slots), "scorers": 0}
        f = self._fitness_sum(parts, P)
        g = torch.zeros(self.sc.cfg.nodes, P, P, dtype=torch.float64)
        correct = torch.zeros(P, dtype=torch.int64)
        rows_total = 0
        for v, p in parts.items():
            g[v] = torch.as_tensor(p["attraction"])
            correct += torch.as_tensor(p["correct"]).to(torch.int64)
            rows_total += int(p["rows"][0])
        proto.settle(f, g.sum(0))
        self.correct, self.rows = correct, rows_total
        missing = sorted(set(self.node_of) - self.synced)
        if missing:
            log.warning("round %d: vertices %s are out of the archive's sums; resynced next round", r, missing)
        return {"children": k, "inserted": sum(s >= 0 for s in slots), "scorers": len(parts)}

    def train(self, r: int, selected: np.ndarray, children: torch.Tensor) -> tuple[list[torch.Tensor], dict]:
        """The selected clients train their children; the trained rows in client order."""
        present = [int(v) for v in selected if int(v) in self.node_of]
        absent = sorted(set(int(v) for v in selected) - set(present))
        if absent:
            log.warning("round %d: no node for selected vertices %s; their children are left out", r, absent)
        child_of = {int(v): children[i] for i, v in enumerate(selected)}

        def train_msg(v):
            return RecordDict({"arrays": to_record(child_of[v], self.sc.layout),
                               "config": ConfigRecord({"server-round": r})})

        replies, errors = self.ask(TRAIN, r, present, train_msg)
        trained, rejected = {}, len(errors)
        for v, msg in replies.items():
            try:
                trained[v], _ = read_reply(msg, self.sc.layout)
            except BadReply as err:
                rejected += 1
                log.warning("round %d: rejected the trained child of vertex %d (node %d): %s", r, v,
                            self.node_of[v], err)
                continue
            loss = [m["train-loss"] for m in msg.content.metric_records.values() if "train-loss" in m]
            if loss:
                self.last_loss[v] = float(loss[0])
        stats = {"accepted": len(trained), "rejected": rejected, "missing": len(selected) - len(trained) - rejected}
        return [trained[int(v)] for v in selected if int(v) in trained], stats

    def run(self, rounds: int) -> ArchiveResult:
        proto = self.proto
        stats = self.insert(0, [first_model(proto, self.sc)])  # slot 0, as Federated.init_state
        metrics = [self._metrics(0, stats)]
        for r in range(1, rounds + 1):
            proto.round = r
            selected, children = proto.draw_round(r)
            trained, stats = self.train(r, selected, children)
            if trained:
                stats.update(self.insert(r, trained))
                proto.evaluations += len(trained)
            else:
                log.warning("round %d: no trained child came back; the archive stays", r)
            metrics.append(self._metrics(r, stats))
        return ArchiveResult(proto.params.detach().cpu().clone(), proto.occupied.copy(), self.best(), metrics)

    def best(self) -> int:
        """The slot with the best pooled selection accuracy (ties: the lowest), as Federated.models()."""
        return int(torch.argmax(self.correct))

    def _metrics(self, r: int, stats: dict | None = None) -> dict:
        proto = self.proto
        row = {"round": r, **(stats or {}), "wall_time_s": time.perf_counter() - self.t0}
        row.update(self.sc.world.task.columns(self.sc.evaluate(proto.params[self.best()].view(1, -1))))
        row["train_loss"] = float(self.last_loss.nanmean())
        occ = torch.as_tensor(proto.occupied)
        acc = self.correct[occ].double() / max(1, self.rows) if bool(occ.any()) else torch.full((1,), float("nan"))
        row.update(evaluations=float(proto.evaluations), archive_best_accuracy=float(acc.max()),
                   archive_mean_accuracy=float(acc.mean()), replacements=float(proto.replaced))
        log.info("m2n2 round %d: %s", r, {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
        return row
