"""Robust aggregation rules against their formulas on hand-made rows, Byzantine clients (which
nodes, what they send), and a FedAvg federation that a robust rule keeps on course."""
import numpy as np
import pytest
import torch

from clients.attacks import Attack
from kernels import robust
from scenarios import ConfigError, resolve
from simulator import run

ROWS = torch.tensor([[1.0, 10.0], [2.0, 20.0], [3.0, -5.0], [100.0, 0.0]])


def test_median_and_trimmed_mean_by_hand():
    # columns sorted: [1, 2, 3, 100] and [-5, 0, 10, 20]; even k: the mean of the middle two
    assert robust.median(ROWS).tolist() == [2.5, 5.0]
    assert robust.median(ROWS[:3]).tolist() == [2.0, 10.0]
    assert robust.trimmed_mean(ROWS, 0.25).tolist() == [2.5, 5.0]       # drops 1 at each end
    assert robust.trimmed_mean(ROWS, 0.0).tolist() == [26.5, 6.25]      # the plain mean
    with pytest.raises(ValueError, match="trim"):
        robust.trimmed_mean(ROWS, 0.5)


def test_krum_by_hand():
    rows = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [10.0, 10.0]])
    # f = 1: each row's 4 - 1 - 2 = 1 nearest other; squared distances: 1, 1, 1, 181
    torch.testing.assert_close(robust.krum_scores(rows, 1), torch.tensor([1.0, 1.0, 1.0, 181.0], dtype=torch.float64))
    assert robust.krum(rows, 1).tolist() == [0.0, 0.0]                   # ties: the lowest index
    assert robust.krum(rows, 1, m=3).tolist() == pytest.approx([1 / 3, 1 / 3])
    with pytest.raises(ValueError, match="k - f - 2"):
        robust.krum(rows, 2)


def test_centered_clip_by_hand():
    rows = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    # from 0: (3, 4) has norm 5 and is clipped to norm 1: (0.6, 0.8); the mean with 0 is (0.3, 0.4)
    torch.testing.assert_close(robust.centered_clip(rows, torch.zeros(2), tau=1.0), torch.tensor([0.3, 0.4]))
    assert robust.centered_clip(rows, torch.zeros(2), tau=10.0).tolist() == [1.5, 2.0]  # nothing clipped


def test_attacks_rewrite_only_the_attackers():
    g = torch.zeros(3)
    rows = torch.tensor([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [3.0, 0.0, 0.0]])
    bad = torch.tensor([False, False, True])
    nodes = torch.arange(3)
    flip = Attack.from_spec({"kind": "sign_flip", "fraction": 0.3}).apply(rows, bad, g, 0, nodes, 1)
    assert flip[:2].equal(rows[:2]) and flip[2].tolist() == [-3.0, 0.0, 0.0]
    big = Attack.from_spec({"kind": "scale", "nodes": [2]}).apply(rows, bad, g, 0, nodes, 1)
    assert big[2].tolist() == [30.0, 0.0, 0.0]                          # model replacement, scale 10
    alie = Attack.from_spec({"kind": "alie", "fraction": 0.3}).apply(rows, bad, g, 0, nodes, 1)
    # honest mean 1.5, std 0.5; n = 3, f = 1: s = 1, z = Phi^-1(2/3) = 0.4307
    assert alie[2].tolist() == pytest.approx([1.5 - 0.4307 * 0.5] * 3, abs=1e-4)
    noisy = Attack.from_spec({"kind": "gaussian", "fraction": 0.3}).apply(rows, bad, g, 0, nodes, 1)
    again = Attack.from_spec({"kind": "gaussian", "fraction": 0.3}).apply(rows, bad, g, 0, nodes, 1)
    assert noisy.equal(again) and not noisy[2].equal(rows[2])
    who = Attack.from_spec({"kind": "sign_flip", "fraction": 0.2}).attackers(100, np.random.default_rng(0))
    assert who.sum() == 20


@pytest.mark.parametrize("spec, key", [("{kind: nope, fraction: 0.2}", "attack.kind"),
                                       ("{kind: sign_flip}", "attack.fraction"),
                                       ("{kind: sign_flip, fraction: 2}", "attack.fraction"),
                                       ("{kind: sign_flip, nodes: [1, -2]}", "attack.nodes"),
                                       ("{kind: scale, fraction: 0.1, scale: -1}", "attack.scale"),
                                       ("{kind: sign_flip, fraction: 0.1, colour: red}", "unknown key")])
def test_bad_attacks_are_one_line(spec, key):
    with pytest.raises(ConfigError, match=key):
        resolve(overrides=[f"attack={spec}"])


def test_attack_needs_a_protocol_that_models_it():
    with pytest.raises(ConfigError, match="protocol=m2n2 has no Byzantine clients"):
        run(overrides=["protocol=m2n2", "nodes=4", "rounds=1", "attack={kind: sign_flip, nodes: [1]}",
                       "sim.progress=false", "topology.degree=2"])


def test_a_robust_rule_keeps_fedavg_on_course():
    base = ["nodes=20", "rounds=8", "sim.progress=false", "attack={kind: sign_flip, fraction: 0.2, scale: 10}"]
    clean = run(overrides=["nodes=20", "rounds=8", "sim.progress=false"]).metrics[-1]["accuracy_mean"]
    with pytest.warns(Warning):  # the plain mean diverges
        plain = run(overrides=base)
    assert plain.status == "diverged"
    for rule in ("median", "trimmed_mean"):
        got = run(overrides=[*base, f"protocol.aggregator={rule}", "protocol.trim=0.25"]).metrics[-1]["accuracy_mean"]
        assert got > clean - 0.1, rule


def test_label_flip_poisons_only_the_attackers_rows():
    from scenarios import assemble

    w = assemble(resolve(overrides=["nodes=10", "attack={kind: label_flip, nodes: [0, 3]}"]))
    ref = assemble(resolve(overrides=["nodes=10"]))
    bad = np.isin(w.owner, [0, 3])
    assert (w.data.y_train[bad] == 9 - ref.data.y_train[bad]).all()
    assert (w.data.y_train[~bad] == ref.data.y_train[~bad]).all()
