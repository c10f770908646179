"""Protocol math against the papers' formulas on small hand-checkable cases."""
import numpy as np
import pytest
import torch

from protocols.fedavg import aggregate
from protocols.gossip import Mailbox, merge


def test_fedavg_aggregate_is_the_sample_weighted_mean():
    rows = torch.tensor([[1.0, 0.0, 4.0], [3.0, 2.0, 0.0]])
    n = torch.tensor([10, 30])
    assert torch.allclose(aggregate(rows, n), torch.tensor([2.5, 1.5, 1.0]))


def test_gossip_merge_is_beta_self_plus_rest_mean_received():
    own = torch.tensor([[1.0, 1.0], [0.0, 4.0]])
    received_sum = torch.tensor([[2.0, 4.0], [6.0, 0.0]])  # node 0: 2 models, node 1: 3 models
    count = torch.tensor([2, 3])
    out = merge(own, received_sum, count, beta=0.25)
    assert torch.allclose(out, torch.tensor([[0.25 + 0.75 * 1.0, 0.25 + 0.75 * 2.0],
                                             [0.75 * 2.0, 1.0]]))


def test_mailbox_sums_by_receiver_and_frees_snapshots():
    box = Mailbox(3, "cpu")
    sid = box.post(torch.tensor([[1.0, 2.0], [10.0, 20.0]]), n_deliveries=3)
    got = box.deliver(np.array([0, 0, 2]), np.array([sid] * 3), np.array([0, 1, 1]))
    assert got.tolist() == [0, 2]
    assert box.count.tolist() == [2, 0, 1]
    s, c = box.take(np.array([0]))
    assert torch.allclose(s, torch.tensor([[11.0, 22.0]])) and c.tolist() == [2]
    assert box.count.tolist() == [0, 0, 1] and not box._snaps


def test_mailbox_in_models_mode_keeps_every_received_model():
    box = Mailbox(3, "cpu", mode="models", slots=1)
    a = box.post(torch.tensor([[1.0, 2.0], [10.0, 20.0]]), n_deliveries=3)
    box.deliver(np.array([0, 0, 2]), np.array([a] * 3), np.array([0, 1, 1]))  # node 0 gets 2: the buffer grows
    b = box.post(torch.tensor([[5.0, 5.0]]), n_deliveries=1)
    box.deliver(np.array([2]), np.array([b]), np.array([0]))
    models, count = box.take(np.array([0, 2]))
    assert count.tolist() == [2, 2] and models.shape == (2, 2, 2)
    assert torch.equal(models[0], torch.tensor([[1.0, 2.0], [10.0, 20.0]]))
    assert torch.equal(models[1], torch.tensor([[10.0, 20.0], [5.0, 5.0]]))
    again, _ = box.take(np.array([0]))
    assert torch.isnan(again).all() and not box._snaps  # emptied


def test_fedavg_round_equals_weighted_mean_of_locally_trained_clients():
    """One FedAvg round by hand: every client trains the initial model, the server averages."""
    from scenarios import assemble, resolve
    from simulator import run

    ov = ["nodes=6", "rounds=1", "data.partition=quantity", "train.local_steps=2", "sim.progress=false"]
    res = run(overrides=ov)
    world = assemble(resolve(overrides=ov))
    fleet = world.fleet(independent=False)
    fleet.train(np.arange(6))
    sizes = np.bincount(world.owner, minlength=6)
    assert len(set(sizes.tolist())) > 1  # quantity skew: the weights matter
    expect = (torch.as_tensor(sizes, dtype=torch.float64) @ fleet.params.double()) / sizes.sum()
    acc = world.evaluate(expect.float().unsqueeze(0))["accuracy"]
    assert res.metrics[1]["accuracy_mean"] == pytest.approx(float(acc[0]), abs=1e-6)
    torch.testing.assert_close(res.final_models[0], expect.float(), atol=1e-6, rtol=0)


def test_fedavg_fraction_and_bytes(tiny):
    res = tiny(["protocol.fraction=0.5", "rounds=2"])
    model_bytes = res.summary["n_parameters"] * 4
    assert res.summary["bytes_sent"] == 2 * 2 * 5 * model_bytes  # rounds x (down+up) x clients


def test_fedavg_deadline_drops_stragglers(tiny):
    # speeds uniform(10, 1000) samples/s; 1 step of 8 samples takes 0.008-0.8 s,
    # links add ~0.04 s; a 0.06 s deadline drops the slower clients
    res = tiny(["speed={kind: uniform, low: 10, high: 1000}", "protocol.deadline=0.06", "rounds=2"])
    dropped = res.metrics[-1]["clients_dropped"]
    assert 0 < dropped < 20
    assert res.summary["sim_time_s"] == pytest.approx(0.12)  # two rounds, each cut at the deadline


def test_sync_gossip_round_equals_mixing_formula():
    """One sync gossip round on a ring: x_i <- beta x_i + (1-beta) mean(x_j, j ~ i) after training."""
    import networkx as nx

    from scenarios import assemble, resolve
    from simulator import run

    ov = ["nodes=6", "rounds=1", "protocol=gossip", "protocol.beta=0.3", "train.local_steps=1",
          "sim.progress=false", "model=logreg"]
    res = run(overrides=ov, graph=nx.cycle_graph(6))
    fleet = assemble(resolve(overrides=ov), graph=nx.cycle_graph(6)).fleet(independent=True)
    fleet.train(np.arange(6))
    x = fleet.params
    expect = torch.stack([0.3 * x[i] + 0.7 * (x[(i - 1) % 6] + x[(i + 1) % 6]) / 2 for i in range(6)])
    assert torch.allclose(res.final_models, expect, atol=1e-6)


def test_the_registry_refuses_what_it_cannot_run(tmp_path, monkeypatch):
    from dataclasses import dataclass

    from protocols import Gossip, Protocol, ProtocolError, get

    with pytest.raises(ProtocolError, match="name 'gossip' is taken by protocols.gossip.Gossip"):
        type("Impostor", (Gossip,), {"name": "gossip"})
    with pytest.raises(ProtocolError, match="config` must be a @dataclass deriving from protocols.ProtocolConfig"):
        type("NoConfig", (Protocol,), {"name": "no_config", "config": dataclass(type("C", (), {}))})
    with pytest.raises(ProtocolError, match="receives must be 'sum' or 'models'"):
        type("Odd", (Gossip,), {"name": "odd", "receives": "median"})
    (tmp_path / "broken_rules.py").write_text("def oops(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ProtocolError, match=r"cannot import 'broken_rules' \(SyntaxError"):
        get("broken_rules.Median")
    with pytest.raises(ProtocolError, match="unknown protocol 'nope'; choose one of: fedavg, gossip, vc_gossip"):
        get("nope")
    with pytest.raises(ProtocolError, match="is not a subclass of protocols.Protocol"):
        get("numpy.ndarray")
