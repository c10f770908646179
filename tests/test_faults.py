"""Fleets that fail: availability processes, lost messages, failing links, changing graphs,
asynchronous FL (FedBuff, FedAsync) and robust gossip, each against its definition."""
import math

import networkx as nx
import numpy as np
import pytest
import torch

from clients import availability as av
from clients.profiles import Distribution
from protocols.fedbuff import staleness_weight
from scenarios import ConfigError, assemble, resolve
from simulator import run

BASE = ["nodes=12", "rounds=3", "sim.progress=false", "topology.degree=4", "train.local_steps=2"]


# availability processes
def test_a_trace_is_honoured_exactly(tmp_path):
    path = tmp_path / "online.csv"
    path.write_text("node,start,end\n0,0,1.5\n0,1,2\n1,0.5,inf\n3,2,3\n")
    proc = av.build({"kind": "trace", "path": str(path)}, 4, 0)
    # [start, end): spans of a node that overlap join
    for node, t, up in [(0, 0, True), (0, 1.99, True), (0, 2, False), (1, 0.49, False), (1, 0.5, True),
                        (1, 1e9, True), (2, 0, False), (2, 5, False), (3, 2.5, True), (3, 3, False)]:
        assert proc.online(np.array([node]), t)[0] == up, (node, t)
    assert proc.online_through(np.array([0, 1, 3]), 0.6, 1.9).tolist() == [True, True, False]
    assert proc.next_online(np.array([0, 1, 2, 3]), 2.0).tolist() == [math.inf, 2.0, math.inf, 2.0]


@pytest.mark.parametrize("bad, msg", [("0,1\n", "expected 'node,start,end'"), ("70,0,1\n", "names node 70"),
                                      ("0,2,1\n", "0 <= start < end"), ("0,nan,1\n", "0 <= start < end"),
                                      ("", "holds no")])
def test_a_bad_trace_is_one_line(tmp_path, bad, msg):
    path = tmp_path / "t.csv"
    path.write_text(bad)
    with pytest.raises(ConfigError, match=msg):
        assemble(resolve(overrides=[*BASE, "protocol=fedavg", f"availability={{kind: trace, path: '{path}'}}"]))


def test_sessions_share_and_determinism():
    on, off = Distribution("exponential", mean=3.0), Distribution("exponential", mean=1.0)
    a = av.Sessions(np.arange(4000), 7, on, off)
    b = av.Sessions(np.arange(4000), 7, on, off)
    b.online(np.arange(4000), 500.0)  # drawing far ahead first changes nothing
    times = np.linspace(0, 200, 41)
    shares = [a.share(t) for t in times]
    assert [b.share(t) for t in times] == shares
    assert abs(np.mean(shares) - 0.75) < 0.02 and abs(shares[0] - 0.75) < 0.03
    # spans alternate with the stated means: count toggles of node 0..3999 over [0, 200]
    toggles = ((a.toggles > 0) & (a.toggles <= 200)).sum()
    assert toggles / 4000 == pytest.approx(2 * 200 / 4.0, rel=0.05)


def test_diurnal_share_follows_the_day():
    proc = av.build({"kind": "diurnal", "peak": 0.9, "trough": 0.2, "period": 100.0, "peak_at": 25.0}, 20000, 3)
    for t in (0.0, 25.0, 50.0, 75.0, 130.0):
        p = 0.2 + 0.7 * (1 + math.cos(2 * math.pi * (t - 25.0) / 100.0)) / 2
        assert abs(proc.share(t) - p) < 4 * math.sqrt(p * (1 - p) / 20000) + 1e-9, t
    # one window a day: a node online at the peak and offline at the trough came and went once
    node = np.arange(20000)
    up = proc.online(node, 25.0) & ~proc.online(node, 75.0)
    assert up.mean() > 0.5


def test_no_offline_node_trains_sends_or_is_sampled(monkeypatch):
    import protocols.fedavg as fa
    import protocols.gossip as gs
    from clients.fleet import Fleet

    seen = {"train": 0, "send": 0, "select": 0}
    current = {}
    orig_train, orig_send, orig_start = Fleet.train, gs.Gossip.send, fa.FedAvg._round_start

    def train(self, nodes, now=math.inf):  # a node trains only if it was online when it began
        assert current["world"].online(nodes, now).all()
        seen["train"] += len(nodes)
        return orig_train(self, nodes, now)

    def send(self, t, nodes):
        assert self.world.online(nodes, t).all()
        seen["send"] += len(nodes)
        return orig_send(self, t, nodes)

    def round_start(self, t, nodes, payload):
        orig_start(self, t, nodes, payload)
        if getattr(self, "open", False) and self.round not in seen:
            seen[self.round] = True
            assert self.world.online(self.selected, t).all()
            seen["select"] += len(self.selected)

    monkeypatch.setattr(Fleet, "train", train)
    monkeypatch.setattr(gs.Gossip, "send", send)
    monkeypatch.setattr(fa.FedAvg, "_round_start", round_start)
    spec = "availability={kind: sessions, on: 0.05, off: 0.05}"
    for proto in ("gossip", "fedavg"):
        world = current["world"] = assemble(resolve(overrides=[*BASE, f"protocol={proto}", spec]))
        res = run(overrides=[*BASE, f"protocol={proto}", spec, "rounds=6", "sim.record_events=true",
                             "speed={kind: lognormal, mean: 300, sigma: 0.5}"])
        assert res.summary["status"] == "completed"
        kinds = {"deliver", "download"}  # what reaches a node: only while it is online
        arrivals = [(t, n) for t, kind, n, _ in res.event_log if kind in kinds]
        assert arrivals
        assert all(world.online(np.array([n]), t)[0] for t, n in arrivals)
        assert res.metrics[-1]["dropouts"] > 0 and 0 < res.metrics[-1]["online_fraction"] < 1
    assert seen["train"] > 0 and seen["send"] > 0 and seen["select"] > 0


def test_hold_delivers_when_the_node_is_back():
    res = run(overrides=[*BASE, "protocol=gossip", "protocol.mode=async", "protocol.round_time=0.2",
                         "availability={kind: sessions, on: 0.05, off: 0.05, messages: hold}", "sim.record_events=true"])
    world = assemble(resolve(overrides=[*BASE, "protocol=gossip",
                                        "availability={kind: sessions, on: 0.05, off: 0.05, messages: hold}"]))
    held = [(t, n) for t, kind, n, _ in res.event_log if kind == "deliver"]
    assert held and all(world.online(np.array([n]), t)[0] for t, n in held)
    assert res.metrics[-1]["messages_lost"] == 0  # held, not dropped


# lost messages and failing links
def test_loss_drops_the_stated_fraction():
    res = run(overrides=[*BASE, "nodes=40", "rounds=10", "protocol=gossip", "topology.loss=0.3"])
    sent = res.summary["bytes_sent"] / (res.summary["n_parameters"] * 4)
    lost = res.metrics[-1]["messages_lost"]
    assert sent == 40 * 4 * 10
    assert abs(lost / sent - 0.3) < 4 * math.sqrt(0.3 * 0.7 / sent)


def test_merge_on_arrived_averages_what_arrived():
    """One sync round on a ring with lost messages: x_i <- beta x_i + (1 - beta) mean(arrived)."""
    ov = ["nodes=8", "rounds=1", "protocol=gossip", "protocol.beta=0.3", "train.local_steps=1", "sim.progress=false",
          "model=logreg", "topology.loss=0.4"]
    g = nx.cycle_graph(8)
    res = run(overrides=ov, graph=g)
    world = assemble(resolve(overrides=ov), graph=g)
    fleet = world.fleet(independent=True)
    fleet.train(np.arange(8))
    x = fleet.params
    e = world.edges
    ok, _ = world.transmit(e["src"], e["dst"], 0.0, np.zeros(len(e["src"])), np.zeros(len(e["src"]), np.int64))
    assert 0 < (~ok).sum() < len(ok)
    expect = x.clone()
    for i in range(8):
        got = [int(s) for s, d, k in zip(e["src"], e["dst"], ok) if d == i and k]
        if got:
            expect[i] = 0.3 * x[i] + 0.7 * torch.stack([x[j] for j in got]).mean(0)
    torch.testing.assert_close(res.final_models, expect, atol=1e-6, rtol=0)
    assert res.metrics[-1]["messages_lost"] == (~ok).sum()


def test_merge_on_timeout_merges_nothing_late():
    # links take 0.05 s; a 0.01 s timeout merges before anything arrives
    ov = [*BASE, "protocol=gossip", "protocol.merge_on=timeout", "protocol.timeout=0.01", "topology.latency=0.05",
          "rounds=6"]
    res = run(overrides=ov)
    assert res.metrics[1]["merges"] == 0 < res.metrics[-1]["merges"]  # later rounds merge earlier rounds' models


def test_failed_links_lose_messages():
    res = run(overrides=[*BASE, "protocol=gossip", "topology.failures={on: 0.05, off: 0.05}", "rounds=4"])
    sent = res.summary["bytes_sent"] / (res.summary["n_parameters"] * 4)
    assert 0.3 < res.metrics[-1]["messages_lost"] / sent < 0.7


def test_a_dynamic_graph_is_redrawn_at_the_stated_times(monkeypatch):
    import protocols.gossip as gs

    changes = []
    orig = gs.Gossip._use_graph

    def use(self, version):
        if version != self.version:
            changes.append((self.engine.now, version, self.world.edges_at(version)["dst"].copy()))
        orig(self, version)

    monkeypatch.setattr(gs.Gossip, "_use_graph", use)
    run(overrides=[*BASE, "protocol=gossip", "protocol.mode=async", "protocol.round_time=0.5", "rounds=4",
                   "topology.dynamic={every: 0.3, kind: random_regular}"])
    assert [round(t, 9) for t, _, _ in changes] == [round(0.3 * v, 9) for _, v, _ in changes]
    assert [v for _, v, _ in changes] == list(range(1, len(changes) + 1)) and len(changes) == 6
    assert not np.array_equal(changes[0][2], changes[1][2])  # a new graph, not the same one
    # sync rounds take the graph of their start
    changes.clear()
    res = run(overrides=[*BASE, "protocol=gossip", "rounds=6", "topology.dynamic={every: 0.05}", "topology.latency=0.01"])
    assert changes and all(v == int(t / 0.05 + 1e-9) for t, v, _ in changes)
    assert res.metrics[-1]["graph_version"] == changes[-1][1]


def test_a_sequence_of_graph_files(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("0 1\n1 2\n2 3\n")
    b.write_text("0 2\n1 3\n0 3\n")
    world = assemble(resolve(overrides=["nodes=4", "protocol=gossip", "topology.allow_disconnected=true",
                                        f"topology.dynamic={{every: 1.0, paths: ['{a}', '{b}']}}"]))
    assert sorted(map(tuple, np.sort(np.array(world.graph.edges()), 1).tolist())) == [(0, 1), (1, 2), (2, 3)]
    e1 = world.edges_at(1)
    assert sorted(zip(e1["src"].tolist(), e1["dst"].tolist()))[:3] == [(0, 2), (0, 3), (1, 3)]
    assert np.array_equal(world.edges_at(2)["dst"], world.edges["dst"])


@pytest.mark.parametrize("override, msg", [
    ("protocol=m2n2", "does not model faults"),
    ("protocol=fedavg topology.dynamic={every:1}", "talks to a server"),
    ("protocol=gossip topology.dynamic={every:1,kind:ring,paths:[a]}", "not both"),
    ("protocol=gossip availability={kind:sessions,on:0}", "availability.on"),
    ("protocol=gossip availability={kind:sessions,messages:keep}", "availability.messages"),
    ("protocol=vc_gossip protocol.aggregator=median", "robust rules run with protocol=gossip"),
])
def test_fault_config_errors_are_one_line(override, msg):
    ov = [*BASE, *override.split()]
    if "availability" not in override and "dynamic" not in override:
        ov.append("topology.loss=0.1")
    with pytest.raises(ConfigError, match=msg):
        assemble(resolve(overrides=ov))


# asynchronous FL
def test_fedbuff_with_every_client_and_no_staleness_is_fedavg():
    ov = ["nodes=10", "rounds=3", "sim.progress=false", "speed=inf", "topology.latency=0.01"]
    a = run(overrides=[*ov, "protocol=fedavg"])
    b = run(overrides=[*ov, "protocol=fedbuff", "protocol.buffer=10", "protocol.staleness=constant"])
    torch.testing.assert_close(b.final_models, a.final_models, atol=1e-6, rtol=0)
    assert [r["accuracy_mean"] for r in a.metrics] == pytest.approx([r["accuracy_mean"] for r in b.metrics])
    assert b.metrics[-1]["staleness_max"] == 0


def test_staleness_weights():
    s = np.array([0, 1, 3, 8])
    assert staleness_weight(s, "constant", 0.5, 4).tolist() == [1, 1, 1, 1]
    np.testing.assert_allclose(staleness_weight(s, "polynomial", 0.5, 4), 1 / np.sqrt(1 + s))
    np.testing.assert_allclose(staleness_weight(s, "hinge", 2.0, 2), [1, 1, 1 / 3, 1 / 13])


def test_fedasync_mixes_each_update():
    """One client at a time: g1 = (1 - alpha) g0 + alpha x1, with x1 trained from g0."""
    ov = ["nodes=5", "rounds=1", "sim.progress=false", "protocol=fedasync", "protocol.alpha=0.4",
          "protocol.concurrency=1", "train.local_steps=1", "model=logreg"]
    res = run(overrides=ov)
    world = assemble(resolve(overrides=ov))
    fleet = world.fleet(independent=False)
    g0 = fleet.params[0].clone()
    first = int(np.random.default_rng(__import__("kernels.random", fromlist=["derive_seed"]).derive_seed(
        0, "fedbuff-select", 1)).choice(np.arange(5), size=1, replace=False)[0])
    fleet.train(np.array([first]), 0.0)
    torch.testing.assert_close(res.final_models[0], 0.6 * g0 + 0.4 * fleet.params[first], atol=1e-6, rtol=0)


def test_fedbuff_staleness_is_recorded():
    res = run(overrides=["nodes=30", "rounds=8", "sim.progress=false", "protocol=fedbuff", "protocol.buffer=4",
                         "protocol.concurrency=12", "speed={kind: lognormal, mean: 300, sigma: 1}"])
    assert res.metrics[-1]["updates"] == 8 and res.metrics[-1]["staleness_max"] >= 1


# robust gossip
def test_robust_rules_batched_equal_one_by_one():
    from kernels import robust

    x = torch.randn(5, 7, 11, dtype=torch.float64)
    c = torch.randn(5, 11, dtype=torch.float64)
    for rule in ("median", "trimmed_mean", "krum", "multi_krum", "centered_clip"):
        batched = robust.aggregate(rule, x, c, trim=0.2, byzantine=0.2, tau=0.5, iters=2)
        for i in range(5):
            torch.testing.assert_close(batched[i], robust.aggregate(rule, x[i], c[i], trim=0.2, byzantine=0.2,
                                                                    tau=0.5, iters=2))


def test_gossip_robust_merges_by_hand():
    def proto(*ov):
        return assemble(resolve(overrides=[*BASE, "protocol=gossip", "protocol.beta=0.25", *ov])).protocol()

    own = torch.zeros(2)
    received = torch.tensor([[1.0, 0.0], [2.0, 0.0], [30.0, 0.0]])
    # median of the received, then beta-mixed with own
    torch.testing.assert_close(proto("protocol.aggregator=median").merge_received(own, received),
                               torch.tensor([0.75 * 2.0, 0.0]))
    # ClippedGossip: own + (1 - beta) mean_j clip_tau(x_j - own)
    p = proto("protocol.aggregator=clipped", "protocol.clip_tau=1.5")
    torch.testing.assert_close(p.merge_received(own, received), torch.tensor([0.75 * (1 + 1.5 + 1.5) / 3, 0.0]))
    # rows with different counts in one batch: each its own rule
    inbox = torch.full((2, 3, 2), float("nan"))
    inbox[0] = received
    inbox[1, :2] = received[:2]
    out = proto("protocol.aggregator=median").merge(torch.zeros(2, 2), inbox, torch.tensor([3, 2]))
    torch.testing.assert_close(out, torch.tensor([[1.5, 0.0], [0.75 * 1.5, 0.0]]))


def test_clipped_gossip_resists_sign_flip():
    # (a coordinate-wise median fails here: with 4 neighbours, some nodes have 2 attackers among them)
    ov = [*BASE, "nodes=20", "rounds=10", "train.local_steps=10", "protocol=gossip", "protocol.init=shared",
          "attack={kind: sign_flip, fraction: 0.2, scale: 10}"]
    plain = run(overrides=ov).metrics[-1]["accuracy_mean"]
    clipped = run(overrides=[*ov, "protocol.aggregator=clipped", "protocol.clip_tau=0.5"]).metrics[-1]["accuracy_mean"]
    assert clipped > plain + 0.15


def test_windows_that_touch_or_vanish_are_seen_through():
    # trough 1: every node online all day, every day; the day boundaries are no break
    always = av.build({"kind": "diurnal", "peak": 1.0, "trough": 1.0, "period": 10.0}, 5, 0)
    nodes = np.arange(5)
    assert always.online_through(nodes, 0.0, 95.0).all() and always.online(nodes, 5.0).all()
    # peak 0: never online, and next_online says so
    never = av.build({"kind": "diurnal", "peak": 0.0, "trough": 0.0, "period": 10.0}, 3, 0)
    assert not never.online(np.arange(3), 7.0).any()
    assert np.isinf(never.next_online(np.arange(3), 0.0)).all()
    # a node offline on some days comes back at the start of its next window, not at an empty day
    some = av.build({"kind": "diurnal", "peak": 0.5, "trough": 0.0, "period": 10.0}, 200, 1)
    t = np.full(200, 3.0)
    back = some.next_online(np.arange(200), t)
    assert np.all(back >= 3.0)
    assert some.online(np.arange(200), back).all()
    assert not np.any([some.online(np.array([i]), back[i] - 1e-6)[0] for i in range(200) if back[i] > 3.0])


def test_sessions_online_through_matches_a_dense_check():
    proc = av.Sessions(np.arange(50), 5, Distribution("exponential", mean=1.0), Distribution("exponential", mean=0.5))
    grid = np.linspace(0, 30, 3001)
    state = np.stack([proc.online(np.arange(50), g) for g in grid], axis=1)  # [50, 3001]
    for a, b in [(0, 100), (250, 900), (1000, 1003), (2000, 3000)]:
        dense = state[:, a:b + 1].all(axis=1)
        np.testing.assert_array_equal(proc.online_through(np.arange(50), grid[a], grid[b]), dense)
