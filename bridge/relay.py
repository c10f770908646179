"""The relay: protocols with a per-node merge rule on Flower, which has no client-to-client
channel.

The ServerApp holds the scenario's topology and stands in for its links:

1. discovery: every node answers `query.identify` with its partition id, which is its vertex;
2. rounds r = 1..R: each vertex gets one `train.gossip` message carrying its neighbours' latest
   trained models (ArrayRecords `from-<v>`; none in round 1). The node merges them into its own
   model, kept in `context.state`, with its protocol's rule (Protocol.merge_received: the
   `message` and `merge` the simulator applies), trains, and replies with
   the trained model, which the relay forwards next round;
3. one last merge-only message: the nodes merge round R's models and reply with the result.

That is the simulator's sync gossip round (train, send, merge) with each merge moved to the
start of the node's next message, so the final models are the simulator's. A reply that is an
error, late (past `round-timeout`) or fails the checks in `wire` is logged and dropped: the
relay keeps forwarding that vertex's last good, stale model.

The metrics rows mean what the simulator's metrics.csv rows mean: row 0 the initial models, row
r the models after round r's merge. A node merges round r's models only at the start of its
next message, so the relay evaluates the merge its nodes will make: each vertex's last model
merged with the neighbours' models it forwards (Protocol.merge_received, the nodes' own rule).

The server sees every model it forwards: this is not privacy-equivalent to peer-to-peer gossip.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from bridge.scenario import Scenario
from bridge.wire import BadReply, read_reply, to_record
from kernels import consensus_distance

log = logging.getLogger("flwr.murmuration")  # a child of Flower's logger: its console, its log stream

IDENTIFY = "query.identify"
GOSSIP = "train.gossip"
POLL_S = 0.25  # how often the relay asks for replies (Grid.send_and_receive waits 3 s between asks)


@dataclass
class RelayResult:
    models: dict[int, torch.Tensor]                    # vertex -> final model [P]
    metrics: list[dict] = field(default_factory=list)  # rounds 0..R, as the simulator's rows


class Relay:
    def __init__(self, grid: Grid, sc: Scenario, timeout: float):
        self.grid, self.sc, self.timeout = grid, sc, timeout
        self.node_of: dict[int, int] = {}               # vertex -> Flower node id
        self.latest: dict[int, torch.Tensor] = {}       # vertex -> last good trained model
        self.t0 = time.perf_counter()

    def exchange(self, msgs: list[Message]) -> list[Message]:
        """Send the messages; the replies that arrive within the round timeout."""
        waiting = set(self.grid.push_messages(msgs))
        deadline = time.monotonic() + self.timeout
        replies: list[Message] = []
        while waiting:
            got = list(self.grid.pull_messages(waiting))
            replies += got
            waiting -= {m.metadata.reply_to_message_id for m in got}
            if not waiting or time.monotonic() >= deadline:
                break
            time.sleep(POLL_S)
        return replies

    def discover(self, node_ids: list[int]) -> dict[int, int]:
        """Ask every node for its partition id; returns {vertex: node id}."""
        msgs = [Message(RecordDict(), dst_node_id=nid, message_type=IDENTIFY, ttl=self.timeout)
                for nid in node_ids]
        for msg in self.exchange(msgs):
            nid = msg.metadata.src_node_id
            try:
                if msg.has_error():
                    raise BadReply(f"error reply: {msg.error.reason}")
                v = int(msg.content.config_records["identity"]["partition-id"])
            except (BadReply, KeyError, TypeError, ValueError) as err:
                log.warning("identify: node %d left out: %s", nid, err)
                continue
            if not 0 <= v < self.sc.cfg.nodes or v in self.node_of:
                log.warning("identify: node %d left out: partition-id %d is %s", nid, v,
                            "taken" if v in self.node_of else "outside the scenario")
                continue
            self.node_of[v] = nid
        if not self.node_of:
            raise RuntimeError("no node identified itself with a usable partition-id; see the warnings above")
        absent = sorted(set(range(self.sc.cfg.nodes)) - set(self.node_of))
        if absent:
            log.warning("identify: no node for vertices %s; their neighbours gossip without them", absent)
        return self.node_of

    def round(self, r: int, merge_only: bool = False) -> dict:
        """One message round: forward the latest models, collect and check the replies."""
        layout = self.sc.layout
        records = {v: to_record(row, layout) for v, row in self.latest.items()}
        msgs = []
        for v, nid in sorted(self.node_of.items()):
            content = RecordDict({f"from-{u}": records[u] for u in sorted(self.sc.graph.neighbors(v))
                                  if u in records})
            content["config"] = ConfigRecord({"server-round": r, "merge-only": merge_only})
            # a message expires with its round: a late node does not replay rounds that are over
            msgs.append(Message(content, dst_node_id=nid, message_type=GOSSIP, group_id=str(r), ttl=self.timeout))
        vertex_of = {nid: v for v, nid in self.node_of.items()}
        good, rejected = {}, set()
        for msg in self.exchange(msgs):
            v = vertex_of.get(msg.metadata.src_node_id)
            if v is None:
                continue
            try:
                good[v], _ = read_reply(msg, layout)
            except BadReply as err:
                rejected.add(v)
                log.warning("round %d: rejected the reply of vertex %d (node %d): %s; its stale model "
                            "stays", r, v, self.node_of[v], err)
        late = sorted(set(self.node_of) - set(good) - rejected)
        if late:
            log.warning("round %d: no reply in time from vertices %s; their stale models stay", r, late)
        return {"good": good, "rejected": len(rejected), "missing": len(late)}

    def merged(self) -> dict[int, torch.Tensor]:
        """Every vertex's model after this round's merge, as its node computes it from the models
        the relay forwards it next (a vertex with no model yet is left out)."""
        out = {}
        for v, own in self.latest.items():
            received = [self.latest[u] for u in sorted(self.sc.graph.neighbors(v)) if u in self.latest]
            out[v] = self.sc.protocol.merge_received(own, torch.stack(received)) if received else own
        return out

    def run(self, rounds: int) -> RelayResult:
        result = RelayResult({})
        result.metrics.append(self._metrics(0, {v: self.sc.initial_row(v) for v in self.node_of}))
        for r in range(1, rounds + 1):
            out = self.round(r)
            self.latest.update(out["good"])
            result.metrics.append(self._metrics(r, self.merged(), out))
        out = self.round(rounds + 1, merge_only=True)
        # the nodes' own merged models; for a node that did not answer, the merge it would make
        result.models = {**self.merged(), **out["good"]}
        log.info("relay: final merge answered by %d of %d vertices", len(out["good"]), len(self.node_of))
        return result

    def _metrics(self, r: int, models: dict, out: dict | None = None) -> dict:
        row = {"round": r}
        if out is not None:
            row.update(accepted=len(out["good"]), rejected=out["rejected"], missing=out["missing"])
        row["wall_time_s"] = time.perf_counter() - self.t0
        if models:
            stack = torch.stack([models[v] for v in sorted(models)])
            row.update(self.sc.world.task.columns(self.sc.evaluate(stack)),
                       consensus_distance=consensus_distance(stack))
        log.info("relay round %d: %s", r, {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
        return row
