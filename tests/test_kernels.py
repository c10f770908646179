"""Batched kernels against the plain per-node computation on the same inputs."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

from kernels import (MLP, BatchedModel, Layout, LeNet, LogisticRegression, SGDConfig, SmallCNN,
                     consensus_distance, counter_uniform, init_stack, local_sgd,
                     sample_minibatches, sum_rows_into, weighted_mean)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _data(n_nodes=5, per_node=13, features=64, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n_nodes * per_node, features, generator=g)
    y = torch.randint(0, classes, (n_nodes * per_node,), generator=g)
    sizes = torch.tensor([per_node - i for i in range(n_nodes)])  # unequal sizes
    offsets = torch.arange(n_nodes) * per_node
    return X, y, offsets, sizes


TEMPLATES = {
    "mlp-bmm": (lambda: MLP(64, 10, (16, 12)), True),
    "mlp-vmap": (lambda: MLP(64, 10, (16, 12)), False),
    "cnn-vmap": (lambda: SmallCNN((1, 8, 8), 10), True),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("template_name", list(TEMPLATES))
def test_batched_training_equals_per_node_torch_loops(device, template_name):
    n, B, steps = 5, 4, torch.tensor([3, 3, 2, 1, 3])
    X, y, offsets, sizes = _data(n)
    X, y, offsets, sizes, steps = (t.to(device) for t in (X, y, offsets, sizes, steps))
    make, fast = TEMPLATES[template_name]
    template = make().to(device)
    bm = BatchedModel(template, fast=fast)
    assert (bm.chain is not None) == (template_name == "mlp-bmm")
    params = init_stack(template, bm.layout, n, seed=7, independent=True, device=device)
    start = params.clone()
    buf = torch.zeros_like(params)
    cfg = SGDConfig(lr=0.1, momentum=0.9, weight_decay=1e-3)
    counter = torch.zeros(n, dtype=torch.long, device=device)
    nodes = torch.arange(n, device=device)
    local_sgd(bm, params, buf, X, y, nodes, counter, offsets, sizes, steps, B, cfg, seed=11)

    for i in range(n):  # the ordinary way: one module, one optimizer, one loop per node
        model = copy.deepcopy(template)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(bm.layout.unflatten(start[i])[name])
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
        for s in range(int(steps[i])):
            idx = sample_minibatches(11, nodes[i:i + 1], torch.tensor([s], device=device),
                                     offsets[i:i + 1], sizes[i:i + 1], B)[0]
            opt.zero_grad()
            nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
            opt.step()
        ref = bm.layout.flatten(dict(model.named_parameters())).detach()
        assert torch.allclose(params[i], ref, atol=1e-5), f"node {i} differs"
    assert torch.equal(counter, steps)


@pytest.mark.parametrize("make", [lambda: MLP(64, 10, (32, 16)), lambda: LogisticRegression(64, 10),
                                  lambda: nn.Sequential(nn.Linear(64, 20), nn.ReLU(), nn.Linear(20, 10))])
def test_handwritten_bmm_path_equals_torch_func(make):
    template = make()
    fast, ref = BatchedModel(template), BatchedModel(template, fast=False)
    assert fast.chain is not None
    params = init_stack(template, fast.layout, 6, seed=3, independent=True)
    x, y = torch.randn(6, 9, 64), torch.randint(0, 10, (6, 9))
    (g1, l1), (g2, l2) = fast.grad(params, x, y), ref.grad(params, x, y)
    assert torch.allclose(g1, g2, atol=1e-6) and torch.allclose(l1, l2, atol=1e-6)
    X, Y = torch.randn(40, 64), torch.randint(0, 10, (40,))
    a, b = fast.evaluate(params, X, Y), ref.evaluate(params, X, Y)
    assert a.keys() == b.keys() == {"accuracy", "loss"}
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6)


def test_models_outside_the_linear_relu_chain_use_torch_func():
    assert BatchedModel(SmallCNN((1, 8, 8), 10)).chain is None
    assert BatchedModel(nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))).chain is None


def test_minibatches_stay_in_each_nodes_own_data_and_do_not_depend_on_batching():
    X, y, offsets, sizes = _data(5)
    nodes = torch.arange(5)
    step = torch.tensor([0, 4, 2, 9, 1])
    together = sample_minibatches(3, nodes, step, offsets, sizes, 32)
    alone = torch.cat([sample_minibatches(3, nodes[i:i + 1], step[i:i + 1], offsets[i:i + 1],
                                          sizes[i:i + 1], 32) for i in range(5)])
    assert torch.equal(together, alone)
    assert bool(((together >= offsets[:, None]) & (together < (offsets + sizes)[:, None])).all())
    assert len(set(together[0].tolist())) > 5  # actually random


def test_counter_uniform_is_deterministic_and_uniform():
    c = torch.arange(100_000)
    u = counter_uniform(5, c)
    assert torch.equal(u, counter_uniform(5, c))
    assert not torch.equal(u, counter_uniform(6, c))
    assert 0 <= float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.01
    assert abs(float(u.var()) - 1 / 12) < 0.002


def test_layout_views_round_trip_and_slice_the_stack():
    m = MLP(6, 3, (4, 5))
    lay = Layout.from_module(m)
    assert lay.size == sum(p.numel() for p in m.parameters())
    row = lay.flatten(dict(m.named_parameters()))
    views = lay.unflatten(row)
    for name, p in m.named_parameters():
        assert torch.equal(views[name], p)
    stack = torch.zeros(3, lay.size)
    lay.unflatten(stack)["net.0.weight"][1] += 1  # a view: writes through to the stack
    assert stack[1].sum() == 4 * 6 and stack[0].sum() == 0
    assert list(lay.sizes) == [p.numel() for p in m.parameters()]


def test_segment_moments_equal_per_tensor_statistics():
    from kernels.variance import segment_indicator, segment_moments

    m = MLP(6, 3, (4, 5))
    lay = Layout.from_module(m)
    stack = torch.randn(7, lay.size) * 3 + 1
    for unbiased in (False, True):
        mean, var = segment_moments(stack, segment_indicator(lay.sizes), unbiased=unbiased)
        for k, name in enumerate(lay.names):
            t = lay.unflatten(stack)[name].reshape(7, -1).double()
            assert torch.allclose(mean[:, k], t.mean(1)) and torch.allclose(var[:, k], t.var(1, unbiased=unbiased))


def test_module_with_buffers_is_refused():
    with pytest.raises(ValueError, match="buffers"):
        Layout.from_module(nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)))


def test_init_stack_independent_vs_shared():
    m = MLP(8, 3, (16,))
    lay = Layout.from_module(m)
    ind = init_stack(m, lay, 4, seed=1, independent=True)
    sh = init_stack(m, lay, 4, seed=1, independent=False)
    assert not torch.equal(ind[0], ind[1])
    assert torch.equal(sh[0], sh[3])
    assert torch.equal(init_stack(m, lay, 4, seed=1, independent=True), ind)  # seeded
    assert torch.equal(init_stack(m, lay, 2, seed=1, independent=True), ind[:2])  # row i independent of N
    w = lay.unflatten(ind)["net.0.weight"]
    assert float(w.abs().max()) <= 1 / 8 ** 0.5
    assert abs(float(w.std()) - (1 / 8 ** 0.5) / 3 ** 0.5) < 0.02  # uniform(+-b) has std b/sqrt(3)


@pytest.mark.parametrize("make", [lambda: LogisticRegression(64, 10), lambda: MLP(64, 10, (32,)),
                                  lambda: SmallCNN((1, 8, 8), 10), lambda: LeNet((1, 28, 28), 10)])
def test_batched_evaluation_equals_per_model_forward(make):
    template = make()
    bm = BatchedModel(template)
    F = bm.layout.shapes[0][1] if isinstance(template, (LogisticRegression, MLP)) else None
    F = F or (784 if isinstance(template, LeNet) else 64)
    params = init_stack(template, bm.layout, 3, seed=2, independent=True)
    X = torch.randn(50, F)
    y = torch.randint(0, 10, (50,))
    metrics = bm.evaluate(params, X, y, max_elements=60)  # force chunking
    acc, loss = metrics["accuracy"], metrics["loss"]
    for i in range(3):
        m = copy.deepcopy(template)
        with torch.no_grad():
            for name, p in m.named_parameters():
                p.copy_(bm.layout.unflatten(params[i])[name])
            out = m(X)
        assert abs(float(acc[i]) - float((out.argmax(1) == y).float().mean())) < 1e-6
        assert abs(float(loss[i]) - float(nn.functional.cross_entropy(out, y))) < 1e-5


def test_evaluation_chunks_do_not_change_a_bit():
    bm = BatchedModel(MLP(64, 10, (32,)))
    params = init_stack(bm.module, bm.layout, 300, seed=3, independent=True)
    X, y = torch.randn(90, 64), torch.randint(0, 10, (90,))
    whole = bm.evaluate(params, X, y, max_elements=1 << 30)
    for size in (1, 90 * 32 * 7, 90 * 32 * 128):  # one model, 7 and 128 models a chunk
        parts = bm.evaluate(params, X, y, max_elements=size)
        assert all(torch.equal(parts[k], whole[k]) for k in whole)


def test_consensus_distance_in_blocks_equals_the_float64_definition():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 37, generator=g) * 0.1 + 3.0  # a large mean: centring must be exact enough
    exact = float(((x.double() - x.double().mean(0)) ** 2).sum(1).mean())
    for block in (1, 37 * 9, 1 << 18):  # one row, 9 rows, everything in one block
        assert consensus_distance(x, block=block) == pytest.approx(exact, rel=1e-9)
    assert consensus_distance(x[:1]) == 0.0 and consensus_distance(x[:1].expand(5, -1)) == 0.0


def test_variance_correction_equals_its_one_hot_formula():
    from kernels.variance import segment_indicator, segment_moments, variance_correct

    lay = Layout.from_module(MLP(6, 3, (4,)))
    S = segment_indicator(lay.sizes)
    merged = torch.randn(5, lay.size) * 2 + 0.5
    target = torch.rand(5, len(lay.sizes), dtype=torch.float64) + 0.1
    corrected = torch.tensor([True, False, True, False])
    mean, var = segment_moments(merged, S)
    scale = torch.where(corrected, torch.sqrt(target / var), torch.ones_like(var))
    expected = (merged.double() * (scale @ S.T) + (mean * (1 - scale)) @ S.T).float()
    out = variance_correct(merged, target, S, corrected)
    assert torch.equal(out, expected)
    _, after = segment_moments(out, S)
    assert torch.allclose(after[:, corrected], target[:, corrected], rtol=1e-5)
    keep = torch.repeat_interleave(~corrected, torch.as_tensor(lay.sizes))
    assert torch.equal(out[:, keep], merged[:, keep])


def test_messages_added_block_by_block_equal_the_sparse_product_bit_for_bit():
    from kernels.mixing import add_messages_into

    def sparse_sum(dst, src, rows, n):  # the incidence-matrix product the mailbox used to compute
        ind = torch.sparse_coo_tensor(torch.stack([dst, src]), torch.ones(len(dst)), (n, len(rows))).coalesce()
        return torch.sparse.mm(ind, rows)

    g = np.random.default_rng(0)
    for trial in range(20):
        n, width, n_parts = int(g.integers(1, 60)), int(g.integers(1, 40)), int(g.integers(1, 4))
        buffer = torch.randn(n, width) * (trial % 2)  # empty (zeros) or already holding sums
        expected, parts, dst_all, snaps = buffer.clone(), [], [], []
        for i in range(n_parts):
            k = int(g.integers(1, 30))
            rows = torch.randn(k, width) * 10 ** float(g.uniform(-3, 3))
            pairs = {(int(d), int(r)) for d, r in zip(g.integers(0, n, 40), g.integers(0, k, 40))}
            d, r = (np.array(v) for v in zip(*sorted(pairs, key=lambda _: g.random())))  # no repeated pair
            snaps.append((rows, d, r))
        dst = np.concatenate([d for _, d, _ in snaps])
        owner = np.concatenate([np.full(len(d), i) for i, (_, d, _) in enumerate(snaps)])
        row = np.concatenate([r for _, _, r in snaps])
        uniq, local = np.unique(dst, return_inverse=True)
        acc = None
        for i, (rows, d, r) in enumerate(snaps):
            sel = owner == i
            part = sparse_sum(torch.as_tensor(local[sel]), torch.as_tensor(row[sel]), rows, len(uniq))
            acc = part if acc is None else acc + part
            parts.append((rows, sel, row))
        expected[torch.as_tensor(uniq)] += acc
        add_messages_into(buffer, dst, parts, block=int(g.integers(1, 4)) * width)
        assert torch.equal(buffer, expected)
        assert torch.equal(torch.signbit(buffer), torch.signbit(expected))


def test_weighted_mean_and_sparse_sums_match_hand_computation():
    rows = torch.tensor([[1.0, 2.0], [3.0, 6.0], [5.0, -2.0]])
    w = torch.tensor([1.0, 2.0, 1.0])
    assert torch.allclose(weighted_mean(rows, w), torch.tensor([(1 + 6 + 5) / 4, (2 + 12 - 2) / 4]))
    dst = torch.tensor([0, 0, 2, 1])
    src = torch.tensor([0, 2, 1, 1])
    out = sum_rows_into(dst, src, rows, 3)
    assert torch.allclose(out, torch.stack([rows[0] + rows[2], rows[1], rows[1]]))
    assert consensus_distance(torch.tensor([[0.0, 0.0], [2.0, 0.0]])) == pytest.approx(1.0)
