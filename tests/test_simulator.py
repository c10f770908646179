"""Whole runs: determinism, batching invariance, outputs, the Python API, learning end to end."""
import csv
import json

import networkx as nx
import pytest
import torch

from kernels import MLP

SCENARIOS = {
    "fedavg": ["protocol=fedavg", "protocol.fraction=0.5", "speed={kind: lognormal, mean: 500, sigma: 0.5}"],
    "gossip_sync": ["protocol=gossip", "topology=small_world",
                    "topology.latency={kind: uniform, low: 0.01, high: 0.05}"],
    "gossip_async": ["protocol=gossip", "protocol.mode=async", "protocol.round_time=0.5",
                     "topology=random_regular", "topology.degree=4", "sim.resolution=0.05",
                     "speed={kind: uniform, low: 100, high: 400}"],
}
NUMBERS = ["sim_time_s", "accuracy_mean", "accuracy_std", "accuracy_min", "accuracy_max",
           "loss_mean", "consensus_distance", "train_loss"]


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_batched_and_unbatched_runs_agree(tiny, name):
    ov = SCENARIOS[name] + ["nodes=12", "rounds=4", "train.momentum=0.5", "sim.record_events=true"]
    a = tiny(ov)
    b = tiny(ov + ["sim.batching=false"])
    assert a.event_log == b.event_log and len(a.event_log) > 50
    assert b.summary["handler_calls"] > a.summary["handler_calls"]
    assert len(a.metrics) == len(b.metrics) == 5  # round 0 (initial models) + 4
    for ra, rb in zip(a.metrics, b.metrics):
        assert ra["bytes_sent"] == rb["bytes_sent"]
        for k in NUMBERS:
            assert ra[k] == pytest.approx(rb[k], abs=1e-5, nan_ok=True), k


def test_same_seed_same_metrics_csv_bit_for_bit(tiny, tmp_path):
    ov = SCENARIOS["gossip_async"]
    tiny(ov, out_dir=tmp_path / "a")
    tiny(ov, out_dir=tmp_path / "b")
    tiny(ov + ["seed=1"], out_dir=tmp_path / "c")

    def numbers(d):
        rows = list(csv.DictReader(open(d / "metrics.csv")))
        return [{k: v for k, v in r.items() if k != "wall_time_s"} for r in rows]

    assert numbers(tmp_path / "a") == numbers(tmp_path / "b")
    assert numbers(tmp_path / "a") != numbers(tmp_path / "c")


def test_outputs_are_written(tiny, tmp_path):
    res = tiny(["protocol=gossip", "topology=ring"], out_dir=tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [int(r["round"]) for r in rows] == [0, 1, 2, 3]
    for col in ("round", "sim_time_s", "wall_time_s", "accuracy_mean", "accuracy_std", "accuracy_min",
                "accuracy_max", "loss_mean", "consensus_distance", "bytes_sent", "layer1_var_mean",
                "layer2_var_std"):
        assert col in rows[0]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["final"]["accuracy_mean"] == pytest.approx(res.metrics[-1]["accuracy_mean"])
    assert summary["config"]["protocol"]["name"] == "gossip" and summary["seed"] == 0
    assert summary["bytes_sent"] == 3 * 10 * 2 * summary["n_parameters"] * 4  # rounds x nodes x deg x bytes
    assert (tmp_path / "curves.png").stat().st_size > 10_000


def test_python_api_takes_a_graph_and_a_module(tiny):
    G = nx.relabel_nodes(nx.cycle_graph(8), {i: f"n{i}" for i in range(8)})
    res = tiny(["nodes=8", "protocol=gossip"], graph=G, model=MLP(64, 10, (7,)))
    assert res.summary["n_parameters"] == 64 * 7 + 7 + 7 * 10 + 10
    assert len(res.metrics) == 4


def test_eval_every_and_node_sampling(tiny):
    res = tiny(["nodes=30", "rounds=5", "protocol=gossip", "topology=ring", "eval.every=2", "eval.max_nodes=7"])
    assert [r["round"] for r in res.metrics] == [0, 2, 4, 5]


def test_default_run_reaches_90_percent_on_digits():
    from simulator import run

    res = run(overrides=["sim.progress=false"])
    assert res.summary["config"]["nodes"] == 100
    assert res.metrics[-1]["accuracy_mean"] >= 0.90


def test_gossip_on_a_ring_learns(tiny):
    res = tiny(["nodes=20", "rounds=30", "protocol=gossip", "topology=ring", "train.local_steps=null", "train.local_epochs=3"])
    first, last = res.metrics[1], res.metrics[-1]
    assert last["accuracy_mean"] > 0.85 and last["accuracy_mean"] > first["accuracy_mean"] + 0.2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_cuda_run_matches_cpu(tiny):
    a = tiny(["protocol=gossip", "topology=ring"])
    b = tiny(["protocol=gossip", "topology=ring", "device=cuda"])
    for ra, rb in zip(a.metrics, b.metrics):
        assert ra["loss_mean"] == pytest.approx(rb["loss_mean"], abs=1e-4)


def test_lenet_on_a_user_npz_of_28x28_images(tiny, tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    path = tmp_path / "mnist_like.npz"
    np.savez(path, X_train=rng.integers(0, 256, (80, 28, 28), dtype=np.uint8), y_train=rng.integers(0, 10, 80),
             X_test=rng.integers(0, 256, (20, 28, 28), dtype=np.uint8), y_test=rng.integers(0, 10, 20))
    res = tiny(["nodes=4", "rounds=1", "data=npz", f"data.path={path}", "model=lenet",
                "data.partition=dirichlet", "data.alpha=5", "protocol=vc_gossip", "topology=ring"])
    assert res.summary["n_parameters"] == 20 * 25 + 20 + 50 * 20 * 25 + 50 + 800 * 500 + 500 + 5010
    assert {"layer4_var_mean", "layer4_var_std"} <= set(res.metrics[-1])


def test_the_summary_says_what_an_evaluation_covers_and_costs():
    from simulator import run as run_

    res = run_(overrides=["protocol=gossip", "nodes=30", "rounds=2", "sim.progress=false", "eval.max_nodes=10",
                          "topology.degree=4"])
    ev = res.summary["evaluation"]
    assert (ev["models"], ev["of"], ev["test_samples"]) == (10, 30, 360)
    assert 0 < ev["wall_s"] < res.summary["wall_time_s"] and 0 < ev["wall_share"] < 1


@pytest.mark.parametrize("storage", ["bfloat16", "float16"])
def test_16_bit_node_stacks_stay_within_tolerance_of_float32(tiny, storage):
    from simulator import run

    ov = ["protocol=vc_gossip", "topology=random_regular", "topology.degree=4", "nodes=40", "rounds=8",
          "train.momentum=0.5"]
    full = tiny(ov)
    half = tiny(ov + [f"sim.storage={storage}"])
    dtype = getattr(torch, storage)
    assert half.final_models.dtype == torch.float32  # handed back in float32 ...
    assert torch.equal(half.final_models.to(dtype).float(), half.final_models)  # ... but kept in 16 bits
    assert not torch.equal(half.final_models, full.final_models)
    for a, b in zip(full.metrics, half.metrics):
        assert abs(a["accuracy_mean"] - b["accuracy_mean"]) <= 0.02 and b["loss_mean"] == pytest.approx(a["loss_mean"], rel=0.02)
    same = tiny(ov + ["sim.storage=float32"])  # the default, spelt out: the same numbers
    numbers = [json.dumps({k: v for k, v in m.items() if k != "wall_time_s"}, sort_keys=True) for m in same.metrics]
    assert numbers == [json.dumps({k: v for k, v in m.items() if k != "wall_time_s"}, sort_keys=True)
                       for m in full.metrics]  # (json: NaN equals NaN there)
    churn = tiny(ov + [f"sim.storage={storage}", "topology.loss=0.2",  # faults: waves with no one to train
                       "availability={kind: sessions, on: 0.5, off: 0.5}"])
    assert churn.summary["status"] == "completed" and churn.summary["rounds_completed"] == 8
    with pytest.raises(Exception, match=r"sim.storage=bfloat16: protocol=fedavg keeps its models in float32"):
        run(overrides=["protocol=fedavg", "nodes=4", "rounds=1", "sim.storage=bfloat16", "sim.progress=false"])
    with pytest.raises(Exception, match=r"sim.storage must be one of float32, bfloat16, float16; got 'int8'"):
        run(overrides=["protocol=gossip", "nodes=4", "rounds=1", "sim.storage=int8", "sim.progress=false"])
