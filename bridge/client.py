"""The bridge's ClientApp: one simulator node on a Flower SuperNode.

The node's `partition-id` (node config) is its simulator node id: its data shard, initial
model, minibatch stream and topology vertex. Between messages it keeps in `context.state` its
local step counter (the position in its minibatch stream) and, for relayed protocols, its
model and optimizer momentum.

    query.identify  reply {"identity": {"partition-id": i}} (relay discovery)
    train           FedAvg in Flower's convention: "arrays" in; "arrays" (under the names the
                    server used) and a MetricRecord with "num-examples" out, so it also trains
                    under Flower's own strategies and their servers' tensor names
    train.gossip    a relay round: merge the "from-<v>" models into the own model with the
                    protocol's merge rule, train (unless config "merge-only"), reply "arrays"
    evaluate        the task's metrics of "arrays" on the held-out test set (as the simulator)
    train.ihomer    a federated iHOMER round (see bridge.ihomer): test, then train on the rows
                    that had arrived at the given simulated time, run the node's drift
                    detectors; reply the row, the count delta, the test's counts and the flags
    query.m2n2_score, query.m2n2_insert, query.m2n2_settle
                    federated M2N2 (see bridge.archive): score the round's children on the
                    node's own selection rows, keep the scores in `context.state`, reply partial
                    sums only (P + 1 numbers per insertion, P and P x P once settled); a child
                    trains through `train`
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from bridge import archive, ihomer
from bridge.scenario import Scenario, load, settings
from bridge.wire import from_record, record_keys, to_record
from scenarios import ConfigError


def _steps(context: Context) -> int:
    node = context.state.config_records.get("node")
    return int(node["steps"]) if node is not None else 0


def _reply(msg: Message, row: torch.Tensor, sc: Scenario, metrics: dict, keys=None) -> Message:
    return Message(RecordDict({"arrays": to_record(row, sc.layout, keys), "metrics": MetricRecord(metrics)}),
                   reply_to=msg)


def client_app(fixed: Mapping[str, Any] | None = None) -> ClientApp:
    """A ClientApp; `fixed` settings (see scenario.SETTINGS) win over the run config, which is
    how run_simulation, which passes no run config, gets its scenario."""
    app = ClientApp()

    def node(context: Context) -> tuple[Scenario, int]:
        sc = load(settings(context.run_config, fixed)["overrides"])
        return sc, sc.check_partition(context.node_config)

    @app.query("identify")
    def identify(msg: Message, context: Context) -> Message:
        _, pid = node(context)
        return Message(RecordDict({"identity": ConfigRecord({"partition-id": pid})}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        sc, pid = node(context)
        record = msg.content.array_records["arrays"]
        row = from_record(record, sc.layout)
        # a FedAvg client's optimizer lives for one round: momentum starts at zero (as the simulator)
        row, _, steps, loss, n = sc.train(pid, row, torch.zeros_like(row), _steps(context))
        context.state["node"] = ConfigRecord({"steps": steps})
        return _reply(msg, row, sc, {"num-examples": n, "train-loss": loss}, record_keys(record, sc.layout))

    @app.train("gossip")
    def gossip_round(msg: Message, context: Context) -> Message:
        sc, pid = node(context)
        if sc.protocol.merge is None:
            raise ConfigError(f"protocol={sc.cfg.protocol.name} has no per-node merge rule to relay")
        state = context.state.array_records
        row = from_record(state["model"], sc.layout) if "model" in state else sc.initial_row(pid)
        mom = from_record(state["momentum"], sc.layout) if "momentum" in state else torch.zeros_like(row)
        received = [from_record(rec, sc.layout) for key, rec in msg.content.array_records.items()
                    if key.startswith("from-")]
        if received:
            row = sc.protocol.merge_received(row, torch.stack(received))
            if sc.cfg.train.reset_momentum:
                mom = torch.zeros_like(mom)
        steps, metrics = _steps(context), {}
        if not msg.content.config_records["config"]["merge-only"]:
            row, mom, steps, metrics["train-loss"], _ = sc.train(pid, row, mom, steps)
        context.state["model"] = to_record(row, sc.layout)
        context.state["momentum"] = to_record(mom, sc.layout)
        context.state["node"] = ConfigRecord({"steps": steps})
        return _reply(msg, row, sc, {"num-examples": sc.n_samples(pid), **metrics})

    @app.train("ihomer")
    def ihomer_round(msg: Message, context: Context) -> Message:
        sc, pid = node(context)
        return ihomer.node_train(sc, pid, msg, context)

    @app.query("m2n2_score")
    def m2n2_score(msg: Message, context: Context) -> Message:
        sc, pid = node(context)
        return archive.node_score(sc, pid, msg, context)

    @app.query("m2n2_insert")
    def m2n2_insert(msg: Message, context: Context) -> Message:
        sc, pid = node(context)
        return archive.node_insert(sc, pid, msg, context)

    @app.query("m2n2_settle")
    def m2n2_settle(msg: Message, context: Context) -> Message:
        sc, pid = node(context)
        return archive.node_settle(sc, pid, msg, context)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        sc, _ = node(context)
        row = from_record(msg.content.array_records["arrays"], sc.layout)
        metrics = {k: float(v[0]) for k, v in sc.evaluate(row.view(1, -1)).items()}
        n = min(len(sc.world.data.y_test), sc.cfg.eval.max_test)
        return Message(RecordDict({"metrics": MetricRecord({**metrics, "num-examples": n})}), reply_to=msg)

    return app


app = client_app()
