"""The scenario seam: one source of defaults for the three entry points, typed and checked
values (property-based), the World's validation splits and streams, prequential evaluation,
and protocols and models from a user's own module."""
import json
import os
import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from kernels import sample_minibatches
from scenarios import ConfigError, assemble, resolve
from simulator import run

TESTS = Path(__file__).parent
MURMUR = Path(sys.executable).parent / "murmur"  # the console script: its sys.path lacks the cwd


def murmur(*args, cwd, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(MURMUR)] if MURMUR.exists() else [sys.executable, "-m", "simulator.cli"]
    return subprocess.run([*cmd, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_three_entry_points_resolve_one_config(tmp_path):
    """run({...}), run(overrides=[...]) and `murmur ...` (here with a protocol of the user's own
    module, found from the working directory) resolve the same config."""
    args = ["protocol=toy_protocol.TrimmedMeanGossip", "protocol.trim=0.2", "nodes=5", "rounds=1",
            "topology=ring", "sim.progress=false"]
    p = murmur(*args, f"hydra.run.dir={tmp_path}", cwd=TESTS)
    assert p.returncode == 0, p.stderr
    assert "toy_protocol.TrimmedMeanGossip, 5 nodes, ring" in p.stdout
    from_cli = json.loads((tmp_path / "summary.json").read_text())["config"]
    from_overrides = resolve(overrides=args)
    from_mapping = resolve({"protocol": {"name": "toy_protocol.TrimmedMeanGossip", "trim": 0.2}, "nodes": 5,
                            "rounds": 1, "topology": "ring", "sim": {"progress": False}})
    assert from_cli == asdict(from_overrides) == asdict(from_mapping)
    assert from_overrides.protocol.trim == 0.2 and from_overrides.protocol.beta == 0.5  # its own defaults


def test_defaults_are_the_same_everywhere():
    assert resolve({"nodes": 5}) == resolve(overrides=["nodes=5"])
    cfg = resolve()
    assert (cfg.rounds, cfg.train.lr, cfg.train.local_epochs, cfg.protocol.name) == (30, 0.2, 3.0, "fedavg")


def test_user_protocol_errors_name_its_own_keys(tmp_path):
    p = murmur("protocol=toy_protocol.TrimmedMeanGossip", "protocol.tirm=0.2", f"hydra.run.dir={tmp_path}",
               cwd=TESTS)
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert ("unknown key 'protocol.tirm'; valid keys of protocol: aggregator, beta, byzantine, clip_iters, clip_tau, "
            "init, merge_on, mode, round_time, timeout, trim, wake") in p.stderr
    with pytest.raises(ConfigError, match=r"protocol.trim must be in \[0, 0.5\)"):
        resolve(overrides=["protocol=toy_protocol.TrimmedMeanGossip", "protocol.trim=0.7"])


def test_the_readme_protocol_example_is_the_tested_toy():
    readme = (TESTS.parent / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    toy = (TESTS / "toy_protocol.py").read_text()
    assert any(b.strip() == toy.strip() for b in blocks), "README's example protocol is tests/toy_protocol.py"


def test_user_model_class_by_import_path():
    import quickstart_app

    res = run(overrides=["model=quickstart_app.Net", "nodes=4", "rounds=2", "sim.progress=false"])
    assert res.summary["n_parameters"] == 64 * 32 + 32 + 32 * 10 + 10
    world = assemble(resolve(overrides=["model=quickstart_app.Net", "nodes=4"]))
    assert world.layout.names == tuple(quickstart_app.Net().state_dict())  # its own names: 0.weight, ...
    with pytest.raises(ConfigError, match="not a torch.nn.Module"):
        assemble(resolve(overrides=["model=quickstart_app.load_partition", "nodes=4"]))


# typed values: whatever a user types for a key ends in a config or in one ConfigError
VALUES = st.one_of(st.integers(-5, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from(["abc", "", "yes", "no", "null", "true", "[1,2]", "{kind: uniform}",
                                    "nan", "inf", "-inf", "2.5", "0", "1e400"]))
KEYS = ["nodes", "rounds", "seed", "speed", "device", "train.lr", "train.batch_size", "train.local_steps",
        "train.local_epochs", "train.momentum", "eval.every", "sim.resolution", "sim.batching",
        "protocol.fraction", "protocol.deadline", "topology.degree", "topology.allow_disconnected",
        "topology.latency", "data.alpha", "data.validation", "data.stream_rate", "model.hidden", "task.prequential"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(KEYS), value=VALUES)
def test_any_value_resolves_or_is_one_config_error(key, value):
    text = repr(value) if isinstance(value, float) else str(value)
    try:
        cfg = resolve(overrides=[f"{key}={text}"])
    except ConfigError as err:
        assert "\n" not in str(err) and str(err)
        return
    # what resolves is typed as the schema says
    assert isinstance(cfg.nodes, int) and isinstance(cfg.train.batch_size, int)
    assert isinstance(cfg.sim.batching, bool) and isinstance(cfg.topology.allow_disconnected, bool)
    assert cfg.train.lr > 0 and np.isfinite(cfg.train.lr)


def test_validation_split_is_per_node_fixed_and_disjoint():
    cfg = resolve(overrides=["nodes=7", "data.validation=0.25", "data.partition=quantity"])
    a, b = assemble(cfg), assemble(cfg)
    assert np.array_equal(a.owner, b.owner) and np.array_equal(a.val_owner, b.val_owner)
    assert np.all((a.owner >= 0) != (a.val_owner >= 0))  # every row in exactly one part
    full = assemble(resolve(overrides=["nodes=7", "data.partition=quantity"])).owner
    assert np.array_equal(np.where(a.owner >= 0, a.owner, a.val_owner), full)  # the same nodes' rows
    sizes = np.bincount(full, minlength=7)
    held = np.bincount(a.val_owner[a.val_owner >= 0], minlength=7)
    assert np.array_equal(held, np.minimum(np.floor(0.25 * sizes), sizes - 1))
    data = a.node_data()
    assert np.array_equal(data.val_sizes_np, held) and len(data.X_val) == held.sum()
    assert np.array_equal(data.sizes_np, sizes - held)


def test_a_stream_trains_each_node_only_on_rows_that_arrived():
    world = assemble(resolve(overrides=["nodes=4", "data.stream_rate=10", "train.local_steps=1",
                                        "train.batch_size=64"]))
    data = world.node_data()
    assert data.available(np.arange(4), 0.0).tolist() == [0] * 4
    assert data.available(np.arange(4), 0.35).tolist() == [3] * 4
    assert np.array_equal(data.available(np.arange(4), 1e9), data.sizes_np)
    assert data.steps(np.arange(4), 0.0).tolist() == [0] * 4  # nothing arrived: no step
    # node 1's minibatch is drawn from its first 3 rows: the same draw by hand gives the same loss
    fleet = world.fleet(independent=True)
    before = fleet.params.clone()
    fleet.train(np.array([1]), 0.0)
    assert torch.equal(fleet.params, before) and torch.isnan(fleet.last_loss[1])
    fleet.train(np.array([1]), 0.35)
    idx = sample_minibatches(data._sample_seed, torch.tensor([1]), torch.tensor([0]), data.offsets[1:2],
                             torch.tensor([3]), 64)[0]
    assert set(idx.tolist()) == set(range(int(data.offsets[1]), int(data.offsets[1]) + 3))
    loss = world.model.evaluate(before[1:2], data.X[idx], data.y[idx])["loss"]
    assert float(fleet.last_loss[1]) == pytest.approx(float(loss[0]), rel=1e-5)


def test_prequential_tests_each_row_before_training_on_it():
    """FedAvg, one round, no stream: every client first tests the initial global model on all its
    rows, so the pooled prequential accuracy is that model's accuracy on the training split."""
    ov = ["nodes=5", "rounds=1", "task.prequential=true", "train.local_steps=1", "sim.progress=false"]
    res = run(overrides=ov)
    world = assemble(resolve(overrides=ov))
    X = torch.as_tensor(world.data.X_train)
    y = torch.as_tensor(world.data.y_train)
    acc = world.model.evaluate(world.initial_row(0, False).view(1, -1), X, y)["accuracy"]
    assert res.metrics[-1]["prequential_accuracy"] == pytest.approx(float(acc[0]), abs=1e-9)
    assert np.isnan(res.metrics[0]["prequential_accuracy"])  # before any row was tested
    assert res.summary["final"]["prequential_accuracy"] == res.metrics[-1]["prequential_accuracy"]


def test_prequential_on_a_multilabel_stream(tiny):
    res = tiny(["protocol=gossip", "topology=ring", "data=synthetic_multilabel", "data.n_samples=500",
                "data.stream_rate=40", "task.prequential=true", "rounds=6", "protocol.mode=async",
                "protocol.round_time=0.5", "speed=100"])
    tested = [r["prequential_micro_f1"] for r in res.metrics]
    assert np.isnan(tested[0]) and all(0 <= t <= 1 for t in tested[1:])


def test_rows_of_any_stack_train_like_one_row_at_a_time():
    """Protocol-owned state: an archive of A models per node trains in ONE call with explicit
    rows, data owners, counters and random-stream keys, exactly as each row trained alone."""
    world = assemble(resolve(overrides=["nodes=5", "train.local_steps=3", "train.momentum=0.9"]))
    data = world.node_data()
    A = 3
    archive = torch.stack([world.initial_models(independent=True) for _ in range(A)], 1)  # [N, A, P]
    archive += 0.01 * torch.randn(archive.shape, generator=torch.Generator().manual_seed(0))
    rows = archive.reshape(5 * A, -1).clone()
    owners = np.repeat(np.arange(5), A)                    # row -> the node whose data it uses
    keys = torch.arange(5 * A)                             # its own minibatch stream
    mom, counters = torch.zeros_like(rows), torch.zeros(5 * A, dtype=torch.long)
    batched = rows.clone()
    losses = data.sgd(batched, mom, counters, owners, keys=keys, seed=123)
    assert counters.tolist() == [3] * (5 * A)
    for r in range(5 * A):
        one, m, c = rows[r:r + 1].clone(), torch.zeros(1, rows.shape[1]), torch.zeros(1, dtype=torch.long)
        loss = data.sgd(one, m, c, owners[r:r + 1], keys=keys[r:r + 1], seed=123)
        torch.testing.assert_close(batched[r], one[0], atol=1e-6, rtol=0)
        assert float(losses[r]) == pytest.approx(float(loss[0]), abs=1e-6)
    assert not torch.allclose(batched[0] - rows[0], batched[1] - rows[1])  # streams differ by key
