"""iHOMER: the label counts and their Jaccard statistic by hand, ODAC's tests, planted blocks
recovered and re-found after a structure swap, the classifier chain against the plain per-node
computation, the metrics against scikit-learn, local drift, and the federated partition equal
to the centralized one."""
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, adjusted_rand_score, f1_score, hamming_loss

from clients.datasets import load_dataset, planted_blocks
from kernels.chains import ChainModel, chain_masks
from kernels.odac import LabelCounts, LabelODAC, assign, hoeffding, jaccard_distance, labels_to_partition, leaf_stats
from kernels.tasks import Multilabel
from scenarios import resolve
from simulator import run

Y4 = np.array([[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=np.uint8)


def test_jaccard_statistic_by_hand():
    c = LabelCounts.of(Y4)
    assert c.n == 5 and c.n_a.tolist() == [3, 3, 2, 0] and c.card.tolist() == [1, 1, 2, 1, 0]
    D = jaccard_distance(c)
    # labels 0 and 1 co-occur in 2 rows, either is on in 4: J = 2/4; 1 and 2: 2/3; 0 and 2: 1/4
    assert D[0, 1] == pytest.approx(1 - 2 / 4) and D[1, 2] == pytest.approx(1 - 2 / 3)
    assert D[0, 2] == pytest.approx(1 - 1 / 4) and D[0, 3] == 1.0 and D[3, 3] == 0.0
    s = leaf_stats(c, np.array([0, 1, 2]), delta=0.05)
    # the mean is over the 3 PAIRS (not the 5 instances); the bound uses the instances seen
    assert s.mean == pytest.approx((0.5 + 0.75 + 1 / 3) / 3)
    assert (s.d0, s.d1, s.d2) == pytest.approx((1 / 3, 0.75, 0.5)) and s.pivots == (0, 2)
    assert s.eps == pytest.approx(math.sqrt(math.log(1 / 0.05) / 10)) == pytest.approx(hoeffding(5, 0.05))


def test_counts_add_up_and_travel():
    rng = np.random.default_rng(0)
    Y = (rng.random((300, 7)) < 0.3).astype(np.uint8)
    whole = LabelCounts.of(Y)
    parts = LabelCounts.of(Y[:120]) + LabelCounts.of(Y[120:250]) + LabelCounts.of(Y[250:])
    for a, b in zip((whole.n, whole.n_a, whole.n_ab, whole.card), (parts.n, parts.n_a, parts.n_ab, parts.card)):
        np.testing.assert_array_equal(a, b)
    back = LabelCounts.unpack(whole.pack(), 7)
    np.testing.assert_array_equal(back.n_ab, whole.n_ab)
    assert whole.pack().size == 1 + 7 + 21 + 8  # what a node sends: never a label vector
    with pytest.raises(ValueError, match="label counts for 7 labels"):
        LabelCounts.unpack(whole.pack()[:-1], 7)


def test_split_assigns_by_mean_distance():
    # pivots 0 and 3; label 1 is close to 0, label 2 close to 1 (and equally far from both pivots)
    D = np.array([[0, .1, .9, 1], [.1, 0, .2, .9], [.9, .2, 0, .9], [1, .9, .9, 0]])
    assert assign(D, 0, 3).tolist() == [0, 0, 0, 1]


def _feed(odac, Y, chunk=100, check=None):
    for k in range(0, len(Y), chunk):
        odac.update(LabelCounts.of(Y[k:k + chunk]))
        if check:
            check(k + chunk, odac)


def _exactly_one_cluster(odac):
    part = odac.partition
    assert part.shape == (odac.n_labels,) and (part >= 0).all()
    groups = odac.clusters()
    assert sorted(np.concatenate(groups).tolist()) == list(range(odac.n_labels))


def test_planted_blocks_recovered():
    """50 labels in 10 planted blocks of 5: ARI >= 0.9 within 3,000 instances, every label in
    exactly one cluster at every moment."""
    d = load_dataset("label_blocks", seed=3, n_samples=3000)
    truth = planted_blocks(50, 5, seed=3)
    odac = LabelODAC(50, min_size=1)
    _feed(odac, d.y_train, check=lambda n, o: _exactly_one_cluster(o))
    assert adjusted_rand_score(truth, odac.partition) >= 0.9
    assert odac.rebuilds == 0 and odac.version >= 2


def test_structure_swap_merges_and_resplits():
    """After the planted partition changes (at instance 5,000), the tree is rebuilt (one cluster:
    the merge) and re-split to the new blocks within 6,000 instances."""
    d = load_dataset("label_blocks", seed=4, n_samples=11000, swap_at=5000 / 11000)
    before, after = planted_blocks(50, 5, seed=4), planted_blocks(50, 5, seed=4, swap=True)
    odac = LabelODAC(50, min_size=1)
    trace = []
    _feed(odac, d.y_train, check=lambda n, o: (trace.append((n, len(o.clusters()))), _exactly_one_cluster(o)))
    at_swap = [c for n, c in trace if n == 5000][0]
    assert odac.rebuilds == 1
    merged = [n for n, c in trace if n > 5000 and c < at_swap]
    assert merged and merged[0] <= 5000 + 1000  # the merge: within 1,000 instances of the swap
    assert adjusted_rand_score(after, odac.partition) >= 0.9 > adjusted_rand_score(before, odac.partition)


def test_hysteresis_delays_a_split_one_check():
    Y = load_dataset("label_blocks", seed=5, n_samples=2000).y_train
    first = {}
    for confirm in (1, 2):
        odac = LabelODAC(50, min_size=1, confirm=confirm)
        _feed(odac, Y, chunk=200, check=lambda n, o: first.setdefault(confirm, n) if o.splits else None)
    assert first[2] == first[1] + 200


def test_refinement_joins_small_clusters_to_relatives_within_the_cap():
    odac = LabelODAC(6, min_size=3, max_size=4)
    root = odac.root
    odac._split(root, (np.array([0, 1, 2, 3]), np.array([4, 5])), leaf_stats(LabelCounts.of(Y4[:, [0, 1, 2, 3, 0, 1]]), np.arange(6), 0.05))
    left = odac.leaves[0]
    odac._split(left, (np.array([0, 1, 2]), np.array([3])), leaf_stats(LabelCounts.of(Y4), np.arange(4), 0.05))
    # {3} is small: its sibling {0, 1, 2} makes 4 (within the cap); {4, 5} is small but joining
    # {0, 1, 2, 3} would make 6 > 4, and nothing else is left
    assert [g.tolist() for g in odac.clusters()] == [[0, 1, 2, 3], [4, 5]]
    with pytest.raises(ValueError, match="not each of 3 once"):
        labels_to_partition([[0, 1], [1, 2]], 3)


def _plain_chain(W, b, V, part, x, y=None):
    """One model, cluster by cluster, label by label: what ChainModel batches."""
    T, L = x.shape[0], len(part)
    z = torch.zeros(T, L, dtype=torch.float64)
    pred = torch.zeros(T, L, dtype=torch.float64)
    for j in range(L):
        before = [k for k in range(j) if part[k] == part[j]]
        prev = y[:, before] if y is not None else pred[:, before]
        z[:, j] = x @ W[j] + b[j] + prev @ V[j, before]
        pred[:, j] = (z[:, j] > 0).double()
    return z


def test_chain_model_equals_the_plain_computation():
    torch.manual_seed(0)
    F, L, n = 5, 6, 3
    part = np.array([0, 1, 0, 2, 1, 0])
    m = ChainModel(F, L)
    m.set_partition(part)
    params = torch.randn(n, m.layout.size)
    x, y = torch.randn(n, 7, F), (torch.rand(n, 7, L) < 0.4).float()
    grads, losses = m.grad(params, x, y)
    logits = m.logits(params, x)
    for i in range(n):
        p = params[i].double().clone().requires_grad_(True)
        v = m.layout.unflatten(p)
        z = _plain_chain(v["heads.weight"], v["heads.bias"], v["chain"], part, x[i].double(), y[i].double())
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z, y[i].double())
        (g,) = torch.autograd.grad(loss, p)
        torch.testing.assert_close(grads[i].double(), g, atol=1e-5, rtol=1e-4)
        assert float(losses[i]) == pytest.approx(float(loss.detach()), abs=1e-5)
        greedy = _plain_chain(v["heads.weight"].detach(), v["heads.bias"].detach(), v["chain"].detach(), part,
                              x[i].double())
        torch.testing.assert_close(logits[i].double(), greedy, atol=1e-5, rtol=1e-4)
    # singletons: binary relevance, no chain term at all
    m.set_partition(np.arange(L))
    W, b = m.layout.unflatten(params)["heads.weight"], m.layout.unflatten(params)["heads.bias"]
    torch.testing.assert_close(m.logits(params, x), x @ W.transpose(1, 2) + b.unsqueeze(1))
    assert chain_masks(part)[1].tolist() == [0, 0, 1, 0, 1, 2]


def test_stacked_heads_equal_the_plain_computation():
    """Each label sees the probabilities of its cluster's other heads, held constant."""
    torch.manual_seed(1)
    F, L = 4, 5
    part = np.array([0, 0, 1, 0, 1])
    m = ChainModel(F, L, stacked=True)
    m.set_partition(part)
    params = torch.randn(2, m.layout.size)
    x, y = torch.randn(2, 6, F), (torch.rand(2, 6, L) < 0.5).float()
    grads, _ = m.grad(params, x, y)
    same = torch.as_tensor((part[:, None] == part[None, :]) & ~np.eye(L, dtype=bool), dtype=torch.float64)
    for i in range(2):
        p = params[i].double().clone().requires_grad_(True)
        v = m.layout.unflatten(p)
        base = x[i].double() @ v["heads.weight"].T + v["heads.bias"]
        z = base + base.detach().sigmoid() @ (v["chain"] * same).T
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z, y[i].double())
        (g,) = torch.autograd.grad(loss, p)
        torch.testing.assert_close(grads[i].double(), g, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(m.logits(params[i:i + 1], x[i]).double()[0], z.detach(), atol=1e-5, rtol=1e-4)


def test_metrics_equal_scikit_learn():
    rng = np.random.default_rng(1)
    y = (rng.random((40, 5)) < 0.4).astype(np.float32)
    logits = torch.as_tensor(rng.normal(size=(1, 40, 5)), dtype=torch.float32)
    pred = (logits[0] > 0).numpy()
    t = Multilabel()
    mask = torch.ones(1, 40, dtype=torch.bool)
    c = t.counts(logits[:, :20], torch.as_tensor(y[None, :20]), mask[:, :20]) + \
        t.counts(logits[:, 20:], torch.as_tensor(y[None, 20:]), mask[:, 20:])
    got = t.from_counts(c)
    assert got["micro_f1"] == pytest.approx(f1_score(y, pred, average="micro"))
    assert got["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
    assert got["subset_accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert got["hamming_loss"] == pytest.approx(hamming_loss(y, pred))


IHOMER = ["protocol=ihomer", "data=label_blocks", "data.n_samples=4000", "data.n_labels=20", "data.block_size=4",
          "data.stream_rate=10", "protocol.period=5", "protocol.min_size=1", "sim.progress=false"]


def test_adwin_fires_on_an_injected_loss_jump():
    from scenarios import assemble
    from simulator.engine import Engine

    proto = assemble(resolve(overrides=[*IHOMER, "nodes=4"])).protocol()
    proto.attach(Engine(), lambda r, t: None)
    pq = proto.fleet.prequential
    K = 4 * 20 + 3
    pq.node_counts = torch.zeros(4, K, dtype=torch.float64)
    nodes = np.arange(4)
    for step in range(120):
        pq.node_counts[:, -1] += 10  # 10 rows a round, then the loss of every label jumps
        pq.node_counts[:, 60:80] += 10 * (0.1 if step < 60 else 0.9)
        proto._local_drift(nodes)
        if step == 59:
            assert proto.local_drifts == 0
    assert proto.local_drifts >= 4  # each node flagged the (one) cluster
    proto._close_round()
    assert proto.cluster_resets == 1 and (proto.warming > 0).all()


def test_federated_partition_equals_the_centralized_one(monkeypatch):
    """Round by round, an ODAC on the nodes' summed count deltas (what the coordinator runs)
    and an ODAC fed the same rows as one stream publish the same partition: the run's."""
    from protocols.ihomer import IHomer

    rounds: list[list[np.ndarray]] = [[]]  # per round: each node's new label rows
    rows, coordinate = IHomer._rows, IHomer._close_round

    def spy_rows(self, nodes, lo, hi):
        rounds[-1] += [rows(self, nodes[i:i + 1], lo[i:i + 1], hi[i:i + 1]) for i in range(len(nodes))]
        return rows(self, nodes, lo, hi)

    def spy_coordinate(self):
        coordinate(self)
        rounds.append([])
        published.append(self.chain.partition.copy())

    published = []
    monkeypatch.setattr(IHomer, "_rows", spy_rows)
    monkeypatch.setattr(IHomer, "_close_round", spy_coordinate)
    res = run(overrides=[*IHOMER, "nodes=8", "rounds=40", "protocol.n_min=100"])
    fed, central = LabelODAC(20, n_min=100, min_size=1), LabelODAC(20, n_min=100, min_size=1)
    for node_rows, run_partition in zip(rounds, published):
        summed = LabelCounts.zeros(20)
        for part in node_rows:
            summed = summed + LabelCounts.of(part)
        fed.update(summed)
        central.update(LabelCounts.of(np.concatenate(node_rows)))
        np.testing.assert_array_equal(fed.partition, central.partition)
        np.testing.assert_array_equal(fed.partition, run_partition)
    assert len(published) == 40 and fed.version >= 2
    final = np.array(res.metrics[-1]["partition"].split(), dtype=int)
    np.testing.assert_array_equal(final, fed.partition)
    assert adjusted_rand_score(planted_blocks(20, 4, seed=0), final) >= 0.9


def test_decentralized_nodes_find_the_blocks_from_their_own_estimates():
    """By gossip: the network's estimates keep the pooled sum (Metropolis weights), and every
    node's own ODAC finds the planted blocks."""
    from scenarios import assemble
    from simulator.engine import Engine

    ov = [*IHOMER, "nodes=8", "protocol.mode=decentralized", "topology=ring", "protocol.n_min=100", "rounds=40"]
    proto = assemble(resolve(overrides=ov)).protocol()
    rounds = []
    engine = Engine()
    proto.attach(engine, lambda r, t: (rounds.append(r), engine.stop() if r >= 40 else None))
    proto.start()
    engine.run()
    pooled = LabelCounts.zeros(20)
    for node in range(8):  # every row each node has counted
        pooled = pooled + LabelCounts.of(proto._rows(np.array([node]), np.array([0]), proto.reported[node:node + 1]))
    np.testing.assert_allclose(proto.estimate.sum(0), pooled.pack(), rtol=1e-9)
    truth = planted_blocks(20, 4, seed=0)
    assert min(adjusted_rand_score(truth, p) for p in proto.parts) >= 0.9
    res = proto.evaluate(proto.models())
    assert res["micro_f1"].shape == (8,) and float(res["micro_f1"].min()) > 0.8
