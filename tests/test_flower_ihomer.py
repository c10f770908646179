"""Federated iHOMER on the Flower bridge (bridge/ihomer.py): the ServerApp ends with the
simulator's global model and partition; the nodes send count deltas, never label rows; what the
bridge does not run is refused in one line."""
import shlex

import numpy as np
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
            "protocol.adwin=false", "nodes=4", "rounds=8", "speed={kind: uniform, low: 200, high: 800}"]


def test_bridge_ends_with_the_simulators_partition_and_model():
    ref = run(overrides=[*SCENARIO, "sim.progress=false"])
    s = settings({}, {"overrides": shlex.join(SCENARIO), "connect-timeout": 1.0, "round-timeout": 0.5})
    grid = LocalGrid(client_app(), 4, run_config=s)
    res = serve(grid, s)
    torch.testing.assert_close(res.models, ref.final_models, atol=1e-5, rtol=0)
    assert res.metrics[-1]["partition"] == ref.metrics[-1]["partition"]
    assert res.metrics[-1]["partition_version"] == ref.metrics[-1]["partition_version"] >= 1
    sent = [m for m in grid.sent if m.metadata.message_type == "train.ihomer"]
    assert len(sent) == 4 * 8 and all("counts" not in m.content.array_records for m in sent)


@pytest.mark.parametrize("extra, why", [("protocol.adwin=true", "protocol.adwin=true"),
                                         ("protocol.mode=decentralized topology=ring", "protocol.mode=decentralized"),
                                         ("protocol.fraction=0.5", "protocol.fraction=1")])
def test_what_the_bridge_refuses_is_one_line(extra, why):
    problem = bridge_problem(load(shlex.join([*SCENARIO, *extra.split()])))
    assert why in problem and "\n" not in problem
