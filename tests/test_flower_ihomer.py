"""Federated iHOMER on the Flower bridge (bridge/ihomer.py): the ServerApp ends with the
simulator's global model, partition and metrics rows; the nodes send count deltas, test counts
and drift flags, never label rows; what the bridge does not run is refused in one line."""
import math
import shlex

import pytest
import torch

pytest.importorskip("flwr")

from flower_grid import LocalGrid
from bridge.client import client_app
from bridge.scenario import load, settings
from bridge.server import bridge_problem, serve
from simulator import run

SCENARIO = ["protocol=ihomer", "data=label_blocks", "data.n_samples=2000", "data.n_labels=12", "data.block_size=3",
            "data.stream_rate=10", "protocol.period=5", "protocol.n_min=100", "protocol.min_size=1",
            "nodes=4", "rounds=8", "speed={kind: uniform, low: 200, high: 800}"]
L = 12


def both(scenario, faults=None):
    """(the simulator's run, the bridge's result, every reply the nodes sent)."""
    ref = run(overrides=[*scenario, "sim.progress=false"])
    s = settings({}, {"overrides": shlex.join(scenario), "connect-timeout": 1.0, "round-timeout": 0.5})
    replies = []

    def keep(pid, fault):
        def f(msg, reply):
            replies.append(reply)
            return fault(msg, reply) if fault else reply
        return f

    faults = {pid: keep(pid, (faults or {}).get(pid)) for pid in range(4)}
    return ref, serve(LocalGrid(client_app(), 4, run_config=s, faults=faults), s), replies


def same_rows(bridge_rows, sim_rows):
    """Every column both engines write (wall time aside) is equal, row by row."""
    assert len(bridge_rows) == len(sim_rows)
    for a, b in zip(bridge_rows, sim_rows):
        for k in a.keys() & b.keys() - {"wall_time_s"}:
            if isinstance(a[k], float):
                assert math.isclose(a[k], b[k], rel_tol=1e-6, abs_tol=1e-9) or math.isnan(a[k]) and math.isnan(b[k]), \
                    (a["round"], k, a[k], b[k])
            else:
                assert a[k] == b[k], (a["round"], k, a[k], b[k])


def test_bridge_ends_with_the_simulators_partition_model_and_metrics():
    """With river's ADWIN at every node (the default protocol.adwin=true)."""
    ref, res, replies = both(SCENARIO)
    torch.testing.assert_close(res.models, ref.final_models, atol=1e-5, rtol=0)
    last = res.metrics[-1]
    assert last["partition"] == ref.metrics[-1]["partition"]
    assert last["partition_version"] == ref.metrics[-1]["partition_version"] >= 1
    same_rows(res.metrics, ref.metrics)  # sim time, prequential F1, instances, drift counts, test metrics
    assert {"prequential_micro_f1", "instances", "cluster_resets", "sim_time_s"} <= last.keys()
    # what leaves a node: its row, two numbers, and counts whose size does not grow with its rows
    replies = [m for m in replies if m.metadata.message_type == "train.ihomer"]
    assert len(replies) == 4 * 8
    K = 2 * L + 2 + L * (L - 1) // 2
    for m in replies:
        assert set(m.content.array_records) == {"arrays", "counts"}
        counts = m.content.array_records["counts"]
        assert counts["counts"].shape == (K,) and counts["prequential"].shape == (4 * L + 3,)
        assert counts["flags"].shape[0] <= L and set(m.content.metric_records["metrics"]) == {"num-examples",
                                                                                              "train-loss"}


class FiresOnSecond:
    """A stand-in for river's ADWIN that flags its cluster at its second value: a restarted
    cluster's detectors must go (fresh ones fire again two rounds later)."""

    def __init__(self, delta=0.002, clock=1):
        self.n, self.drift_detected = 0, False

    def update(self, value):
        assert 0 <= value < math.inf
        self.n += 1
        self.drift_detected = self.n == 2


def test_local_drift_restarts_the_simulators_clusters(monkeypatch):
    import river.drift

    monkeypatch.setattr(river.drift, "ADWIN", FiresOnSecond)
    ref, res, _ = both([*SCENARIO, "rounds=9"])
    torch.testing.assert_close(res.models, ref.final_models, atol=1e-5, rtol=0)
    same_rows(res.metrics, ref.metrics)
    assert res.metrics[-1]["cluster_resets"] >= 4 and res.metrics[-1]["local_drifts"] >= 16  # restarts recur


def test_a_lost_reply_is_counted_at_the_next_one():
    """Node 1's reply of round 3 is lost: its rows reach the coordinator with its round-4 reply."""
    def lose(msg, reply):
        lost = msg.metadata.message_type == "train.ihomer" and msg.content.config_records["config"]["round"] == 3
        return None if lost else reply

    ref, res, _ = both([*SCENARIO, "protocol.adwin=false"], faults={1: lose})
    assert res.metrics[3]["clients_dropped"] == 1
    assert res.metrics[3]["instances"] < ref.metrics[3]["instances"]
    assert res.metrics[-1]["instances"] == ref.metrics[-1]["instances"]


FEDAVG = ["protocol=fedavg", "data=label_blocks", "data.n_samples=2000", "nodes=4"]


@pytest.mark.parametrize("scenario, why", [
    ([*SCENARIO, "protocol.mode=local"], "protocol.mode=local"),
    ([*SCENARIO, "protocol.mode=decentralized", "topology=ring"], "protocol.mode=decentralized"),
    ([*SCENARIO, "protocol.fraction=0.5"], "protocol.fraction=1"),
    (FEDAVG, "data.stream_rate=null"),  # label_blocks streams by default; only iHOMER replays the clock
])
def test_what_the_bridge_refuses_is_one_line(scenario, why):
    problem = bridge_problem(load(shlex.join(scenario)))
    assert why in problem and "\n" not in problem
    assert bridge_problem(load(shlex.join([*FEDAVG, "data.stream_rate=null"]))) is None
