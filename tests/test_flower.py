"""The Flower bridge: same final models as the simulator, interop with plain Flower both ways,
bad or missing replies survived, and a real SuperLink + SuperNodes run on loopback (TLS and
SuperNode authentication, as the README deploys them)."""
import math
import os
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")  # the flower extra: pip install -e ".[flower]" (CI installs it)

from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg

from flower_grid import LocalGrid
from bridge.client import client_app
from bridge.launch import LocalFleet, free_port
from bridge.scenario import SETTINGS, load, settings
from bridge.server import check_bridged, serve
from bridge.wire import BadReply, from_record, to_record
from simulator import ConfigError, run

# deterministic: 4 nodes, digits, full participation, constant speed, fixed local steps
SCENARIO = ["nodes=4", "rounds=3", "topology=ring", "train.local_epochs=null", "train.local_steps=2",
            "speed=1000", "train.momentum=0.5"]


def simulate(overrides):
    """The simulator's final models (Protocol.models()) and metrics for these overrides."""
    res = run(overrides=[*overrides, "sim.progress=false"])
    return res.final_models, res.metrics


@pytest.fixture(scope="module")
def simulated():
    return {p: simulate([*SCENARIO, f"protocol={p}"]) for p in ("fedavg", "gossip", "vc_gossip")}


def bridge(overrides, faults=None, app=None):
    s = settings({}, {"overrides": " ".join(overrides), "connect-timeout": 1.0, "round-timeout": 0.5})
    grid = LocalGrid(app or client_app(), load(s["overrides"]).cfg.nodes, faults=faults, run_config=s)
    return serve(grid, s), grid


def layout():
    return load(" ".join(SCENARIO)).layout


def round_of(msg):
    config = msg.content.config_records.get("config")  # None: an identify message
    return config["server-round"] if config else None


@pytest.mark.parametrize("protocol", ["fedavg", "gossip", "vc_gossip"])
def test_bridge_gives_the_simulators_final_models(simulated, protocol):
    ref, ref_metrics = simulated[protocol]
    res, grid = bridge([*SCENARIO, f"protocol={protocol}"])
    assert res.models.shape == ref.shape
    torch.testing.assert_close(res.models, ref, atol=1e-5, rtol=0)
    # the rows mean what the simulator's mean: round 0 the initial models, round r after round r
    assert [m["round"] for m in res.metrics] == [m["round"] for m in ref_metrics] == [0, 1, 2, 3]
    for row, ref_row in zip(res.metrics, ref_metrics):
        assert row["accuracy_mean"] == pytest.approx(ref_row["accuracy_mean"], abs=1e-6), row["round"]
        if protocol != "fedavg":
            assert row["consensus_distance"] == pytest.approx(ref_row["consensus_distance"], rel=1e-4, abs=1e-6)
    sc = load(" ".join([*SCENARIO, f"protocol={protocol}"]))
    assert (res.models - sc.initial_row(0)).abs().max() > 0.05  # it trained
    if protocol != "fedavg":
        assert res.vertices == [0, 1, 2, 3]
        types = [m.metadata.message_type for m in grid.sent]
        assert types == ["query.identify"] * 4 + ["train.gossip"] * 16
        to_v0 = [m for m in grid.sent[4:] if grid.pid[m.metadata.dst_node_id] == 0]
        # round 1 has nothing to forward; then vertex 0 of the ring hears from 1 and 3
        assert [sorted(m.content.array_records) for m in to_v0] == [[]] + [["from-1", "from-3"]] * 3
        assert [m.content.config_records["config"]["merge-only"] for m in to_v0] == [False] * 3 + [True]


def test_our_clientapp_trains_under_flowers_own_fedavg(simulated):
    overrides = " ".join([*SCENARIO, "protocol=fedavg"])
    sc = load(overrides)
    grid = LocalGrid(client_app(), 4, run_config={"overrides": overrides})
    result = FedAvg(min_available_nodes=4).start(grid=grid, initial_arrays=to_record(sc.initial_row(0), sc.layout),
                                                 num_rounds=3)
    # Flower's own weighted mean of our replies is the simulator's FedAvg
    torch.testing.assert_close(from_record(result.arrays, sc.layout), simulated["fedavg"][0][0], atol=1e-5, rtol=0)
    assert result.evaluate_metrics_clientapp[3]["accuracy"] > 0.2  # our evaluate answered too


def plain_flower_client() -> ClientApp:
    """A ClientApp written the Flower way, knowing nothing of murmuration: it returns the model it
    got plus its partition id, weighted by partition id + 1 (torch or numpy style records)."""
    app = ClientApp()

    @app.train()
    def train(msg, context):
        pid = int(context.node_config["partition-id"])
        arrays = msg.content["arrays"]
        if pid % 2:
            record = ArrayRecord([a + pid for a in arrays.to_numpy_ndarrays()])
        else:
            record = ArrayRecord({k: v + pid for k, v in arrays.to_torch_state_dict().items()})
        return Message(RecordDict({"arrays": record, "metrics": MetricRecord({"num-examples": pid + 1})}),
                       reply_to=msg)

    return app


def test_plain_flower_clientapp_works_under_our_fedavg():
    overrides = [*SCENARIO, "protocol=fedavg", "rounds=2"]
    res, _ = bridge(overrides, app=plain_flower_client())
    shift = sum(p * (p + 1) for p in range(4)) / sum(p + 1 for p in range(4))  # 2.0 per round
    expected = load(" ".join(overrides)).initial_row(0) + 2 * shift
    torch.testing.assert_close(res.models[0], expected, atol=1e-5, rtol=0)
    assert [m.get("accepted") for m in res.metrics] == [None, 4, 4]


def test_a_quickstart_clientapp_learns_under_our_fedavg_when_the_scenario_names_its_model():
    """Flower's quickstart style: the client loads the arrays into its own nn.Sequential with
    load_state_dict (keys 0.weight ...). Naming that class as the scenario's model makes the
    bridge send those keys; the client's own data and training loop do the learning."""
    import quickstart_app

    overrides = ["protocol=fedavg", "nodes=4", "rounds=3", "model=quickstart_app.Net"]
    res, grid = bridge(overrides, app=quickstart_app.client_app())
    assert [m.get("accepted") for m in res.metrics] == [None, 4, 4, 4]
    sent = grid.sent[0].content["arrays"]
    assert list(sent.keys()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert res.metrics[-1]["accuracy_mean"] > 0.8 > 0.2 > load(" ".join(overrides)).evaluate(
        load(" ".join(overrides)).initial_row(0).view(1, -1))["accuracy"][0]


def test_our_clientapp_learns_under_a_stock_fedavg_with_its_own_names(caplog):
    """Flower's FedAvg from a quickstart Net: arrays keyed 0.weight ..., which our MLP calls
    net.0.weight ...: matched by order and shape (logged once), answered under the server's keys."""
    import quickstart_app

    overrides = "protocol=fedavg nodes=4 rounds=3 model.hidden=[32]"
    grid = LocalGrid(client_app(), 4, run_config={"overrides": overrides})
    with caplog.at_level("INFO", logger="flwr.murmuration"):
        result = FedAvg(min_available_nodes=4, fraction_evaluate=0.0).start(
            grid=grid, initial_arrays=ArrayRecord(quickstart_app.Net().state_dict()), num_rounds=3)
    net = quickstart_app.Net()
    net.load_state_dict(result.arrays.to_torch_state_dict())
    assert quickstart_app.accuracy(net) > 0.8
    assert caplog.text.count("matched to the model's tensors") == 1
    assert all(list(m.content["arrays"].keys()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
               for m in grid.sent)  # every round went out, and came back, under the server's names


def test_flower_simulation_interop_both_ways(tmp_path):
    """The two tests above under Flower's Ray simulation (run_simulation, one subprocess for both,
    stopped with everything it started)."""
    import signal
    import subprocess
    import sys

    tests = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests), str(tests.parent)]),
           "RAY_DEDUP_LOGS": "0", "FLWR_TELEMETRY_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(tests / "flower_sim.py"), str(tmp_path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=420)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # Ray's workers and raylet, if any are left
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, log[-4000:]
    import quickstart_app

    saved = np.load(tmp_path / "stock_server.npz")
    net = quickstart_app.Net()
    net.load_state_dict({k: torch.as_tensor(saved[k]) for k in saved.files})
    assert list(saved.files) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert quickstart_app.accuracy(net) > 0.8
    import json

    metrics = json.loads((tmp_path / "bridge_server" / "summary.json").read_text())["metrics"]
    assert [m.get("accepted") for m in metrics] == [None, 4, 4, 4] and metrics[-1]["accuracy_mean"] > 0.8


def corrupt(kind):
    """A fault that breaks the node's round-2 reply in one way."""
    def fault(msg, reply):
        if round_of(msg) != 2:
            return reply
        if kind == "timeout":
            return None
        if kind == "crash":
            raise RuntimeError("the device rebooted")
        arrays = reply.content.array_records["arrays"]
        first = next(iter(arrays))
        if kind == "missing":
            del reply.content["arrays"]
        elif kind == "shape":
            arrays[first] = Array(np.zeros((3, 3), np.float32))
        elif kind == "nan":
            a = arrays[first].numpy().copy()
            a.flat[0] = math.nan
            arrays[first] = Array(a)
        return reply
    return fault


def test_fedavg_leaves_out_bad_replies_and_keeps_going(caplog):
    replies = {}

    def keep(msg, reply):
        replies[round_of(msg)] = from_record(reply.content["arrays"], layout())
        return reply

    faults = {0: keep, 1: corrupt("shape"), 2: corrupt("nan"), 3: corrupt("missing")}
    res, grid = bridge([*SCENARIO, "protocol=fedavg"], faults)
    assert [(m.get("accepted"), m.get("rejected")) for m in res.metrics] == [(None, None), (4, 0), (1, 3), (4, 0)]
    # round 2's global model is node 0's reply alone: what round 3 sends out
    round3 = [m for m in grid.sent if round_of(m) == 3]
    torch.testing.assert_close(from_record(round3[0].content["arrays"], layout()), replies[2])
    assert torch.isfinite(res.models).all()
    log = caplog.text
    assert "has shape (3, 3)" in log and "NaN or infinite" in log and "no ArrayRecord 'arrays'" in log


def test_gossip_relay_keeps_stale_models_of_failed_nodes(caplog):
    trained = {}

    def record(v, inner=None):
        def fault(msg, reply):
            if round_of(msg) == 1:
                trained[v] = from_record(reply.content["arrays"], layout())
            return inner(msg, reply) if inner else reply
        return fault

    faults = {0: record(0), 1: record(1, corrupt("timeout")), 2: record(2, corrupt("crash")),
              3: record(3, corrupt("shape"))}
    res, grid = bridge([*SCENARIO, "protocol=gossip"], faults)
    assert [(m.get("accepted"), m.get("rejected"), m.get("missing")) for m in res.metrics] == \
        [(None, None, None), (4, 0, 0), (1, 2, 1), (4, 0, 0)]
    # round 3 forwards vertex 0 the round-1 (stale) models of its failed neighbours 1 and 3
    to_v0 = next(m for m in grid.sent if round_of(m) == 3 and grid.pid[m.metadata.dst_node_id] == 0)
    for v in (1, 3):
        torch.testing.assert_close(from_record(to_v0.content[f"from-{v}"], layout()), trained[v])
    assert torch.isfinite(res.models).all() and res.vertices == [0, 1, 2, 3]
    assert "the device rebooted" in caplog.text and "no reply in time from vertices [1]" in caplog.text


def test_received_models_are_checked():
    lay = layout()
    row = torch.arange(lay.size, dtype=torch.float32)
    torch.testing.assert_close(from_record(to_record(row, lay), lay), row)
    positional = ArrayRecord([a.numpy() for a in to_record(row, lay).values()])
    torch.testing.assert_close(from_record(positional, lay), row)  # ArrayRecord(list) keys
    for bad in (math.inf, -math.inf, math.nan):
        with pytest.raises(BadReply, match="NaN or infinite"):
            from_record(to_record(torch.full_like(row, bad), lay), lay)
    with pytest.raises(BadReply, match="do not match"):
        from_record(ArrayRecord([np.zeros(3, np.float32)]), lay)
    renamed = ArrayRecord({f"layer{i}": a for i, a in enumerate(to_record(row, lay).values())})
    torch.testing.assert_close(from_record(renamed, lay), row)  # other names: by order and shape
    swapped = ArrayRecord(dict(reversed(list(to_record(row, lay).items()))))
    torch.testing.assert_close(from_record(swapped, lay), row)  # our names in another order: by name
    with pytest.raises(BadReply, match="has shape"):
        from_record(ArrayRecord({f"layer{i}": a for i, a in enumerate(reversed(list(to_record(row, lay).values())))}),
                    lay)


@pytest.mark.parametrize("override, message", [
    ("protocol.mode=async", "synchronous rounds"),
])
def test_scenarios_the_bridge_would_change_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        check_bridged(load(" ".join([*SCENARIO, "protocol=gossip", override])))


def test_run_config_defaults_match_pyproject():
    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    app = pyproject["tool"]["flwr"]["app"]
    assert app["config"] == SETTINGS
    assert app["components"] == {"serverapp": "bridge.server:app",
                                 "clientapp": "bridge.client:app"}


def test_real_deployment_on_loopback_with_tls_and_supernode_auth(tmp_path):
    """The README's deployment on loopback (LocalFleet(secure=True): the openssl recipe, TLS,
    every SuperNode's ssh-keygen key registered with `flwr supernode register`, SuperNode
    authentication), 3 SuperNodes: gossip on a ring, then FedAvg, two rounds each; both finish
    with the simulator's final models; a SuperNode whose key nobody registered is refused; no
    process is left running."""
    import subprocess
    import time
    import urllib.request

    from bridge import launch

    gossip = ["protocol=gossip", "topology=ring", "rounds=2", "train.local_epochs=null", "train.local_steps=2"]
    fedavg = ["protocol=fedavg", "rounds=2", "train.local_epochs=null", "train.local_steps=2"]
    with LocalFleet(3, tmp_path, port=free_port(), node_port=free_port(), secure=True) as fleet:
        with pytest.raises(OSError):  # it speaks TLS only
            urllib.request.urlopen(f"http://127.0.0.1:{fleet.port}/health", timeout=5)
        # a fourth SuperNode with a key of its own, not registered: refused, it exits
        assert subprocess.run(launch.key_command("stranger"), cwd=tmp_path, timeout=60).returncode == 0
        stranger = fleet._spawn("stranger", fleet.supernode_cmd(3, key="stranger"))
        runs = [fleet.run(ov, timeout=240, round_timeout=120) for ov in (gossip, fedavg)]
        stranger_log = tmp_path / "logs" / "stranger.log"
        deadline = time.monotonic() + 90
        while "Failed to activate SuperNode" not in stranger_log.read_text() and time.monotonic() < deadline:
            time.sleep(1)  # (refused, its process can take minutes to exit: fleet.stop() ends it)
        assert "Failed to activate SuperNode" in stranger_log.read_text(), stranger_log.read_text()[-2000:]
        assert fleet._node_id("stranger") is None
        nodes = fleet.flwr_json("supernode", "list", launch.CONNECTION)["nodes"]
        assert sorted(n["status"] for n in nodes) == ["online"] * 3
        pids = fleet.pids
    for overrides, outcome in zip((gossip, fedavg), runs):
        assert outcome.completed, outcome.log[-3000:]
        saved = np.load(outcome.out_dir / "models.npz")
        ref, ref_metrics = simulate(["nodes=3", *overrides])
        np.testing.assert_allclose(saved["models"], ref.numpy(), atol=1e-5, rtol=0)
        rows = outcome.summary()["metrics"]
        assert [m["round"] for m in rows] == [0, 1, 2] and all(m["accepted"] == 3 for m in rows[1:])
        assert rows[-1]["accuracy_mean"] == pytest.approx(ref_metrics[-1]["accuracy_mean"], abs=1e-6)
        assert f"wrote models.npz and summary.json to {outcome.out_dir}" in outcome.log
    assert len(pids) == 5
    for pid in pids:  # every started process, and everything in its process group, is gone
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
