"""M2N2 (protocols/m2n2.py, kernels/merging.py) against the paper's formulas on hand-checkable
cases: SLERP and its split point, shared fitness and attraction, the replacement rule and its
guards, the federated decomposition, and the runs' determinism."""
import math

import numpy as np
import pytest
import torch

from kernels.merging import (Scorer, attraction, attraction_matrix, correctness, niche_weights, pack_scores,
                             partial_attraction, partial_fitness, shared_fitness, slerp, slerp_pair, unpack_scores)
from kernels.random import counter_normal
from protocols.m2n2 import Archive, _pick_rows, pick
from scenarios import assemble, resolve
from simulator import run

torch.set_default_dtype(torch.float32)


def formula(a, b, t):
    """The paper's SLERP for one coordinate set, in Python floats."""
    dot = sum(x * y for x, y in zip(a, b)) / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))
    omega = math.acos(max(-1.0, min(1.0, dot)))
    if math.sin(omega) <= 1e-6:
        return [(1 - ti) * x + ti * y for x, y, ti in zip(a, b, t)]
    return [math.sin((1 - ti) * omega) / math.sin(omega) * x + math.sin(ti * omega) / math.sin(omega) * y
            for x, y, ti in zip(a, b, t)]


def test_slerp_is_the_formula_with_its_split_point():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 7, generator=g), torch.randn(3, 7, generator=g)
    w = torch.tensor([0.2, 0.5, 0.9])
    split = torch.tensor([0, 3, 6])
    out = slerp(a, b, w, split)
    for i in range(3):
        s, wi = int(split[i]), float(w[i])
        t = [wi if c < s else 1 - wi for c in range(7)]  # t = w before the split, 1 - w from it on
        assert out[i].tolist() == pytest.approx(formula(a[i].tolist(), b[i].tolist(), t), abs=1e-6)
    whole = slerp(a, b, w)
    for i in range(3):
        assert whole[i].tolist() == pytest.approx(formula(a[i].tolist(), b[i].tolist(), [float(w[i])] * 7), abs=1e-6)
    # the split at 0 gives weight 1 - w everywhere: slerp(a, b, 1 - w)
    torch.testing.assert_close(out[0], slerp(a[:1], b[:1], 1 - w[:1])[0])


def test_slerp_falls_back_to_linear_for_parallel_or_zero_parents():
    a = torch.tensor([[1.0, 2.0, 3.0]])
    for b in (2 * a, torch.zeros_like(a)):
        out = slerp(a, b, torch.tensor([0.25]))
        torch.testing.assert_close(out, 0.75 * a + 0.25 * b)
        torch.testing.assert_close(slerp_pair(a[0], b[0], 0.25), out[0])
    # antiparallel: sin(omega) = 0 too
    torch.testing.assert_close(slerp(a, -a, torch.tensor([0.5])), torch.zeros_like(a))


@pytest.mark.parametrize("split", [None, 0, 1, 500, 999])
def test_one_pair_slerp_equals_the_batched_kernel(split):
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(1000, generator=g), torch.randn(1000, generator=g)
    ref = slerp(a[None], b[None], torch.tensor([0.3]), None if split is None else torch.tensor([split]))[0]
    torch.testing.assert_close(slerp_pair(a, b, 0.3, split), ref, atol=1e-6, rtol=1e-6)


SCORES = torch.tensor([[1, 1, 0], [1, 0, 1], [0, 0, 1]], dtype=torch.bool)


def test_shared_fitness_and_attraction_by_hand():
    # z = [2, 1, 2]: w = [1/2, 1, 1/2] (alpha 1)
    w = niche_weights(SCORES, 1.0)
    assert w.tolist() == [0.5, 1.0, 0.5]
    assert shared_fitness(SCORES, w).tolist() == [1.5, 1.0, 0.5]
    # g(0, b) = sum_j s_bj (1 - s_0j) w_j: model 0 misses example 2 only
    assert attraction(SCORES, 0, w).tolist() == [0.0, 0.5, 0.5]
    assert attraction(SCORES, 2, w).tolist() == [1.5, 0.5, 0.0]
    G = attraction_matrix(SCORES, w)
    for a in range(3):
        assert G[a].tolist() == attraction(SCORES, a, w).tolist()
        for b in range(3):  # the paper's max(0, s_b / z - s_a / z) summed over examples
            direct = sum(max(0.0, float(SCORES[b, j]) * float(w[j]) - float(SCORES[a, j]) * float(w[j])) for j in range(3))
            assert float(G[a, b]) == pytest.approx(direct)
    # alpha 0: no competition, the fitness is the raw count; z = 0 counts as 1
    assert shared_fitness(SCORES, niche_weights(SCORES, 0.0)).tolist() == [2.0, 2.0, 1.0]
    none = torch.zeros(2, 3, dtype=torch.bool)
    assert niche_weights(none, 1.0).tolist() == [1.0, 1.0, 1.0]
    # batched over nodes: each node's rows on its own examples
    batched = attraction(SCORES.unsqueeze(0).repeat(2, 1, 1), torch.tensor([0, 2]), w.unsqueeze(0).repeat(2, 1))
    assert batched.tolist() == [[0.0, 0.5, 0.5], [1.5, 0.5, 0.0]]


def test_partial_sums_add_up_to_the_whole():
    g = torch.Generator().manual_seed(2)
    scores = torch.rand(6, 50, generator=g) > 0.4
    owner = torch.randint(0, 5, (50,), generator=g)
    cap = torch.rand(50, generator=g).double()
    w = niche_weights(scores, 1.0, cap)
    f = partial_fitness(scores, w, owner, 5)
    G = partial_attraction(scores, w, owner, 5, chunk=7)
    assert f.shape == (5, 6) and G.shape == (5, 6, 6)
    torch.testing.assert_close(f.sum(0), shared_fitness(scores, w))
    torch.testing.assert_close(G.sum(0), attraction_matrix(scores, w))
    for k in range(5):  # each owner computes its part from its own columns alone
        mine = owner == k
        torch.testing.assert_close(f[k], shared_fitness(scores[:, mine], w[mine]))


def test_the_archive_replacement_rule_and_its_guards():
    arch = Archive(3, 2, 3, "cpu", alpha=1.0)
    # empty slots score nothing: the first children fill them from the lowest index
    assert arch.insert(torch.ones(2), np.array([1, 1, 0])) == 0
    assert arch.insert(2 * torch.ones(2), np.array([1, 0, 1])) == 1
    assert arch.occupied.tolist() == [True, True, False] and arch.replaced == 0
    assert arch.fitness.tolist() == [1.5, 1.5, 0.0]
    # a child that solves nothing loses to... the empty slot 2 (0 = 0: the slot goes first)
    assert arch.insert(3 * torch.ones(2), np.array([0, 0, 0])) == 2
    # a full archive: over the 3 slots plus a child solving only example 0 (z = 3, 1, 1):
    # f = [1/3 + 1, 1/3 + 1, 0, 1/3]: slot 2 (0) goes
    assert arch.insert(4 * torch.ones(2), np.array([1, 0, 0])) == 2
    assert arch.replaced == 1 and float(arch.params[2, 0]) == 4.0
    # a child worse than every member goes itself
    assert arch.insert(5 * torch.ones(2), np.array([0, 0, 0])) == -1
    assert arch.best() == 0
    # parents: A by fitness; B by attraction to A; guards when sums are 0
    assert pick(np.array([0.0, 1.0, 0.0]), 0.99, np.ones(3, bool)) == 1
    allowed = np.array([True, False, True])
    assert [pick(np.zeros(3), u, allowed) for u in (0.1, 0.6)] == [0, 2]  # sum = 0: uniform over allowed
    assert pick(np.zeros(3), 0.5, np.zeros(3, bool)) == -1


def test_attraction_guard_falls_back_to_the_other_models():
    arch = Archive(3, 2, 2, "cpu", alpha=1.0)
    arch.insert(torch.ones(2), np.array([1, 1]))  # dominates every other model
    arch.insert(2 * torch.ones(2), np.array([1, 0]))
    seen = {arch.parents(np.array([0.0, u]), True) for u in np.linspace(0, 0.99, 20)}
    # A = slot 0 (the only one with fitness when u = 0 lands on it); g(0, .) = 0: B uniform over the others
    assert {b for a, b in seen if a == 0} == {1}
    lone = Archive(2, 2, 2, "cpu", alpha=1.0)
    lone.insert(torch.ones(2), np.array([0, 0]))
    assert lone.parents(np.array([0.3, 0.3]), True) == (0, 0)  # sum f = 0 and no other model: A = B


def test_rows_pick_matches_its_weights():
    w = torch.tensor([[0.0, 1.0, 3.0], [0.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    allowed = torch.tensor([[True, True, True], [False, True, True], [True, True, True]])
    assert _pick_rows(w, torch.tensor([0.2, 0.2, 0.9]), allowed).tolist() == [1, 1, 0]
    assert _pick_rows(w, torch.tensor([0.3, 0.9, 0.5]), allowed).tolist() == [2, 2, 0]


def test_counter_normals_look_normal_and_are_keyed():
    x = counter_normal(7, torch.arange(20000))
    assert abs(float(x.mean())) < 0.03 and abs(float(x.std()) - 1) < 0.03
    torch.testing.assert_close(counter_normal(7, torch.arange(5, 9)), x[5:9])


def test_scores_pack_eight_to_a_byte():
    s = torch.rand(3, 21) > 0.5
    packed = pack_scores(s)
    assert packed.shape == (3, 3) and packed.dtype == torch.uint8
    assert torch.equal(unpack_scores(packed, 21), s)


def central(*extra):
    return ["protocol=m2n2", "protocol.mode=central", "nodes=1", "model.hidden=[32]", "sim.progress=false",
            "protocol.evaluations_per_round=200", "rounds=2", *extra]


def test_the_scorer_equals_the_plain_forward_pass():
    world = assemble(resolve(overrides=central()))
    x = torch.as_tensor(world.data.X_train, dtype=torch.float32)
    y = torch.as_tensor(world.data.y_train)
    rows = torch.randn(4, world.layout.size) * 0.3
    scorer = Scorer(world.model, x, y)
    plain = correctness(world.model, rows, x, y)
    for i in range(4):
        assert torch.equal(scorer(rows[i]), plain[i])
    logits = world.model.logits(rows[:1], x)[0]
    assert torch.equal(plain[0], logits.argmax(1) == y)


def test_central_runs_are_bit_for_bit_and_learn():
    a, b = run(overrides=central()), run(overrides=central())
    assert torch.equal(a.final_models, b.final_models)
    assert [r["accuracy_mean"] for r in a.metrics] == [r["accuracy_mean"] for r in b.metrics]
    c = run(overrides=central("seed=1"))
    assert not torch.equal(a.final_models, c.final_models)
    rows = a.metrics
    assert [r["evaluations"] for r in rows] == [0, 200, 400]
    assert rows[-1]["archive_best_accuracy"] > rows[0]["archive_best_accuracy"]


@pytest.mark.parametrize("ablation", ["protocol.alpha=0", "protocol.crossover=whole", "protocol.crossover=none",
                                      "protocol.matchmaker=false", "protocol.mutation=0"])
def test_every_ablation_runs(ablation):
    res = run(overrides=central(ablation, "rounds=1"))
    assert res.status == "completed" and res.metrics[-1]["evaluations"] == 200


def test_specialists_and_their_best_interpolation():
    res = run(overrides=central("protocol.init=specialists", "protocol.mutation=0", "protocol.grid=50", "rounds=1"))
    assert res.metrics[-1]["evaluations"] == 50
    # the best of 50 whole-vector SLERPs includes both seeds (w = 0 and 1), so it beats each
    proto = assemble(resolve(overrides=central("protocol.init=specialists", "protocol.mutation=0"))).protocol()
    proto.init_state()
    seeds = proto.archive.scores[:2].mean(1)
    assert seeds.max() < 0.6  # each seed knows half the classes
    grid = assemble(resolve(overrides=central("protocol.init=specialists", "protocol.grid=50"))).protocol()
    grid.init_state()
    assert grid.archive.scores[grid.archive.best()].mean() >= seeds.max()


def test_federated_decomposition_equals_the_central_computation():
    world = assemble(resolve(overrides=["protocol=m2n2", "nodes=7", "data.validation=0.3", "protocol.archive=5",
                                        "protocol.capacity=node", "sim.progress=false"]))
    proto = world.protocol()
    proto.init_state()
    g = torch.Generator().manual_seed(3)
    rows = proto.params[:1] + torch.randn(4, world.layout.size, generator=g) * 0.2
    for r in rows:
        proto.insert(r, proto.score(r[None])[0])
    s = proto.scores
    cap = proto.capacity
    w = niche_weights(s, 1.0, cap)
    f_parts, g_parts = proto.parts()
    assert f_parts.shape == (7, 5) and g_parts.shape == (7, 5, 5)
    torch.testing.assert_close(f_parts.sum(0), shared_fitness(s, w), rtol=0, atol=1e-12)
    torch.testing.assert_close(g_parts.sum(0), attraction_matrix(s, w), rtol=0, atol=1e-12)
    # c_j = 1 / |V_k|: each node's rows weigh one in all
    sizes = np.bincount(proto.owner.numpy(), minlength=7)
    assert float(cap.sum()) == pytest.approx(float((sizes > 0).sum()))
    # the same insertions through the host-side central archive (same scores, same rule)
    arch = Archive(5, world.layout.size, s.shape[1], "cpu", alpha=1.0, capacity=cap.numpy())
    for i in range(5):
        if proto.occupied[i]:
            arch.insert(proto.params[i], s[i].numpy())
    np.testing.assert_allclose(arch.fitness, proto.partial_fitness(s).sum(0).numpy(), atol=1e-12)


def test_federated_and_decentralized_learn():
    base = ["nodes=10", "rounds=6", "data.validation=0.2", "sim.progress=false", "train.local_steps=10",
            "topology.degree=4"]
    for mode in ("federated", "decentralized"):
        res = run(overrides=[*base, "protocol=m2n2", f"protocol.mode={mode}", "protocol.fraction=0.5"])
        first, last = res.metrics[0]["accuracy_mean"], res.metrics[-1]["accuracy_mean"]
        assert res.status == "completed" and last > first + 0.4, (mode, first, last)


def test_bad_m2n2_options_are_one_line():
    from scenarios.schema import ConfigError
    for bad, key in (("protocol.mode=star", "protocol.mode"), ("protocol.archive=1", "protocol.archive"),
                     ("protocol.grid=10", "protocol.grid"), ("protocol.seeds=30", "protocol.seeds"),
                     ("protocol.alpha=-1", "protocol.alpha")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
            resolve(overrides=["protocol=m2n2", bad])
        assert "\n" not in str(err.value)
