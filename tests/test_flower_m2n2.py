"""Federated M2N2 on the Flower bridge (bridge/archive.py): the ServerApp's archive ends as the
simulator's; the devices reply partial sums only, never a per-example score; a node that lost its
kept scores is resynced; decentralized and central M2N2 are refused in one line."""
import numpy as np
import pytest
import torch

pytest.importorskip("flwr")  # the flower extra: pip install -e ".[flower]"

from flwr.app import RecordDict

from flower_grid import LocalGrid
from bridge.client import client_app
from bridge.scenario import load, settings
from bridge.server import check_bridged, serve
from scenarios import assemble, resolve
from simulator import ConfigError, Engine, run

SCENARIO = ["nodes=6", "rounds=2", "protocol=m2n2", "protocol.fraction=0.5", "data.validation=0.2",
            "train.local_epochs=null", "train.local_steps=2"]
# a small archive (replacements happen), c_j = 1 / |V_k|, N(0, init_std^2) first model, selection
# on the training rows (no validation split), nodes of unequal sizes
VARIANT = [*SCENARIO, "rounds=3", "protocol.archive=4", "protocol.capacity=node", "protocol.init=normal",
           "data.validation=0", "data.partition=quantity"]


def simulate(overrides):
    """The simulator's Federated protocol after the run (its archive: params, occupied), driven
    as simulator.run drives it, and run()'s own final models and metrics."""
    cfg = resolve(overrides=[*overrides, "sim.progress=false"])
    proto = assemble(cfg).protocol()
    engine = Engine(batching=cfg.sim.batching, resolution=cfg.sim.resolution)

    def on_round(r, t):
        if r >= cfg.rounds:
            engine.stop()

    proto.attach(engine, on_round)
    proto.start()
    engine.run()
    res = run(overrides=[*overrides, "sim.progress=false"])
    torch.testing.assert_close(proto.models(), res.final_models, atol=0, rtol=0)  # the same run
    return proto, res


def bridge(overrides, app=None, faults=None):
    s = settings({}, {"overrides": " ".join(overrides), "connect-timeout": 1.0, "round-timeout": 0.5})
    grid = LocalGrid(app or client_app(), load(s["overrides"]).cfg.nodes, faults=faults, run_config=s)
    return serve(grid, s), grid


def types(grid):
    return [m.metadata.message_type for m in grid.sent]


@pytest.mark.parametrize("overrides", [SCENARIO, VARIANT], ids=["default", "small-archive"])
def test_bridge_ends_with_the_simulators_archive(overrides):
    ref, ref_run = simulate(overrides)
    res, grid = bridge(overrides)
    assert res.protocol == "m2n2" and res.vertices == []
    np.testing.assert_array_equal(res.occupied, ref.occupied)
    torch.testing.assert_close(res.archive, ref.params.cpu(), atol=1e-5, rtol=0)
    torch.testing.assert_close(res.models, ref_run.final_models, atol=1e-5, rtol=0)  # the global model
    assert [m["round"] for m in res.metrics] == [m["round"] for m in ref_run.metrics]
    for row, ref_row in zip(res.metrics, ref_run.metrics):
        for k in ("accuracy_mean", "loss_mean", "train_loss", "evaluations", "replacements",
                  "archive_best_accuracy", "archive_mean_accuracy"):
            assert row[k] == pytest.approx(ref_row[k], abs=1e-6, nan_ok=True), (row["round"], k)
    if overrides is VARIANT:
        assert ref.replaced > 0  # the variant exercises replacement
    # per round: k trains, one scoring, k - 1 insertion queries and one settle for all 6 nodes
    k = 3
    rounds = load(" ".join(overrides)).cfg.rounds
    per_kind = {t: types(grid).count(t) for t in set(types(grid))}
    assert per_kind == {"query.identify": 6, "train": k * rounds, "query.m2n2_score": 6 * (rounds + 1),
                        "query.m2n2_insert": 6 * (k - 1) * rounds, "query.m2n2_settle": 6 * (rounds + 1)}


def test_device_replies_carry_partial_sums_only():
    """Every reply to an m2n2 query is one ArrayRecord of P + 1, P or P x P numbers (and one row
    count): its size does not depend on the node's rows. The scores stay in context.state."""
    overrides = [*SCENARIO, "protocol.archive=5"]
    P = 5
    replies = {}

    def keep(pid):
        def fault(msg, reply):
            replies.setdefault(pid, []).append((msg.metadata.message_type, reply))
            return reply
        return fault

    res, grid = bridge(overrides, faults={pid: keep(pid) for pid in range(6)})
    sc = load(" ".join(overrides))
    sizes = sc.world.node_data().val_sizes_np
    assert len(set(sizes.tolist())) > 1  # nodes with different numbers of rows answer alike
    allowed = {"query.m2n2_score": {"fitness": (P + 1,)}, "query.m2n2_insert": {"fitness": (P + 1,)},
               "query.m2n2_settle": {"fitness": (P,), "attraction": (P, P), "correct": (P,), "rows": (1,)}}
    seen = set()
    for pid, got in replies.items():
        for kind, reply in got:
            if kind not in allowed:
                continue
            seen.add(kind)
            content = reply.content
            assert list(content.keys()) == ["partial"] and not content.metric_records and not content.config_records
            shapes = {name: tuple(a.shape) for name, a in content.array_records["partial"].items()}
            assert shapes == allowed[kind], (pid, kind)
            if kind == "query.m2n2_settle":
                assert int(content.array_records["partial"]["rows"].numpy()[0]) == sizes[pid]
        # what the node keeps: its scores of every slot, packed, V rows each
        state = grid.contexts[next(n for n, p in grid.pid.items() if p == pid)].state
        assert state.array_records["m2n2-scores"]["archive"].numpy().shape == (P, (sizes[pid] + 7) // 8)
    assert seen == set(allowed)
    # a trained child goes up as one model row, as FedAvg's
    train = [r for got in replies.values() for kind, r in got if kind == "train"]
    assert train and all(set(r.content.keys()) == {"arrays", "metrics"} for r in train)


def test_a_node_that_lost_its_scores_is_resynced_and_the_archive_stays_the_simulators():
    """Node 2 restarts before round 2 (its context.state is empty): it answers the scoring with
    an error, the coordinator sends it the archive rows at once, and the run ends as the
    simulator's."""
    inner = client_app()
    lost = []

    def app(msg, context):
        config = msg.content.config_records.get("config")
        if (context.node_config["partition-id"] == 2 and msg.metadata.message_type == "query.m2n2_score"
                and config["server-round"] == 2 and not config["resync"]):
            context.state = RecordDict()  # a restarted SuperNode
            lost.append(True)
        return inner(msg, context)

    ref, _ = simulate(SCENARIO)
    res, grid = bridge(SCENARIO, app=app)
    assert lost == [True]
    resent = [m for m in grid.sent if m.metadata.message_type == "query.m2n2_score"
              and m.content.config_records["config"]["server-round"] == 2 and grid.pid[m.metadata.dst_node_id] == 2]
    assert [m.content.config_records["config"]["resync"] for m in resent] == [False, True]
    assert len([k for k in resent[1].content.array_records if k.startswith("slot-")]) == 4  # 1 + round 1's 3
    np.testing.assert_array_equal(res.occupied, ref.occupied)
    torch.testing.assert_close(res.archive, ref.params.cpu(), atol=1e-5, rtol=0)


def test_a_node_that_misses_a_query_is_left_out_then_resynced(caplog):
    def drop_insert(msg, reply):
        config = msg.content.config_records.get("config")
        if msg.metadata.message_type == "query.m2n2_insert" and config["server-round"] == 1:
            return None  # lost: past the round timeout
        return reply

    res, grid = bridge(SCENARIO, faults={4: drop_insert})
    assert torch.isfinite(res.archive).all() and res.occupied.sum() == 7
    settle1 = [grid.pid[m.metadata.dst_node_id] for m in grid.sent if m.metadata.message_type == "query.m2n2_settle"
               and m.content.config_records["config"]["server-round"] == 1]
    assert settle1 == [0, 1, 2, 3, 5]  # no more questions for vertex 4 that round
    to4 = next(m for m in grid.sent if m.metadata.message_type == "query.m2n2_score"
               and m.content.config_records["config"]["server-round"] == 2 and grid.pid[m.metadata.dst_node_id] == 4)
    assert to4.content.config_records["config"]["resync"]
    assert len([k for k in to4.content.array_records if k.startswith("slot-")]) == 4  # the archive after round 1
    assert [m["scorers"] for m in res.metrics] == [6, 5, 6]
    assert "no reply in time from vertices [4]" in caplog.text


@pytest.mark.parametrize("mode, message", [
    ("decentralized topology=ring", "decentralized M2N2 runs in the simulator"),
    ("central", "protocol.mode=central runs M2N2 at one coordinator with no nodes"),
])
def test_decentralized_and_central_m2n2_are_refused_in_one_line(mode, message):
    overrides = [*SCENARIO, *f"protocol.mode={mode}".split()]
    with pytest.raises(ConfigError, match=message) as err:
        check_bridged(load(" ".join(overrides)))
    assert "\n" not in str(err.value)
    grid = LocalGrid(client_app(), 6)
    s = settings({}, {"overrides": " ".join(overrides), "connect-timeout": 1.0, "round-timeout": 0.5})
    with pytest.raises(ConfigError, match=message):
        serve(grid, s)
    assert grid.sent == []  # refused before any message
