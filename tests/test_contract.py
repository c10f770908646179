"""The contract every registered protocol keeps, checked the same way for each (a new protocol
is covered by being registered): same seed = same metrics.csv; batched = unbatched; bytes
accounted; models() shaped [k, P]; its declared columns written; it learns a multi-label task
too; its summary reproduces its config; resumed from a checkpoint it ends as if never stopped;
and, where the bridge runs it (fedavg, federated m2n2,
a per-node merge rule), the Flower bridge ends with the simulator's final models.

`toy_protocol` (this folder, outside the package) registers a user-written protocol: it is
held to the same contract.
"""
import csv
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

import protocols
import toy_protocol  # noqa: F401  (registers trimmed_gossip)
from scenarios import resolve
from simulator import run

TRACE = Path(__file__).with_name("online_trace.csv")  # nine nodes' online spans over 3 simulated seconds
# a protocol with modes that run differently joins once per mode ("name:mode"); some need an
# option or two to make three rounds of nine nodes a fair test
MODES = {"m2n2:decentralized": ["protocol.mode=decentralized"]}
EXTRA = {"m2n2": ["protocol.fraction=0.5", "data.validation=0.3"],
         "m2n2:decentralized": ["data.validation=0.3"],
         # iHOMER partitions labels: a multi-label stream, checked every 50 pooled rows
         "ihomer": ["data=synthetic_multilabel", "data.n_samples=400", "data.stream_rate=10", "protocol.n_min=50",
                    "protocol.period=2"],  # river's detectors at every node, on the bridge too
         "ihomer:local": ["data=synthetic_multilabel", "data.n_samples=400", "data.stream_rate=10",
                          "protocol.n_min=50", "protocol.period=2"]}
EXTRA["ihomer:decentralized"] = EXTRA["ihomer:local"]
MODES.update({"ihomer:local": ["protocol.mode=local"], "ihomer:decentralized": ["protocol.mode=decentralized"],
              # a robust rule, and one under attack (the bridge refuses attacks: simulated only)
              "fedavg:trimmed_mean": ["protocol.aggregator=trimmed_mean", "protocol.trim=0.2"],
              "fedavg:krum_attacked": ["protocol.aggregator=multi_krum", "attack={kind:alie,fraction:0.2}"],
              # faults: churn, lost messages, failing links, changing graphs; robust gossip and attacks
              "fedavg:churn": ["availability={kind:sessions,on:0.3,off:0.2}", "topology.loss=0.1",
                               "protocol.fraction=0.5"],
              "fedbuff:faults": ["protocol.buffer=3", "protocol.concurrency=5", "topology.loss=0.1",
                                 "availability={kind:sessions,on:0.3,off:0.2}", "protocol.aggregator=trimmed_mean",
                                 "attack={kind:sign_flip,fraction:0.2}"],
              "fedasync:clip": ["protocol.aggregator=centered_clip", "attack={kind:scale,fraction:0.2}"],
              "gossip:clipped": ["protocol.aggregator=clipped", "protocol.clip_tau=0.5"],
              "gossip:faults": ["availability={kind:sessions,on:0.3,off:0.2}", "topology.loss=0.2",
                                "topology.failures={on:0.5,off:0.2}", "protocol.aggregator=krum",
                                "attack={kind:alie,fraction:0.2}"],
              "gossip:async_dynamic": ["protocol.mode=async", "protocol.round_time=0.2",
                                       "topology.dynamic={every:0.3,kind:random_regular}", "protocol.merge_on=timeout",
                                       "protocol.timeout=0.1", "availability={kind:diurnal,period:1.0,messages:hold}"],
              "gossip:trace": [f"availability={{kind:trace,path:{TRACE}}}", "protocol.merge_on=timeout",
                               "protocol.timeout=0.05"],
              "vc_gossip:churn": ["availability={kind:sessions,on:0.3,off:0.2,messages:hold}", "topology.loss=0.1",
                                  "topology.dynamic={every:0.2}"]})
NAMES = protocols.names() + list(MODES)
# heterogeneous speeds and links, so instants rarely coincide unless batched by ticks
BASE = ["nodes=9", "rounds=3", "topology=random_regular", "topology.degree=4", "train.local_steps=2",
        "train.momentum=0.5", "sim.progress=false", "speed={kind: lognormal, mean: 500, sigma: 0.5}",
        "topology.latency={kind: uniform, low: 0.01, high: 0.05}", "sim.resolution=0.02"]
NUMBERS = ["sim_time_s", "loss_mean", "consensus_distance", "train_loss"]


def scenario(name, *extra):
    base = name.split(":")[0]
    return [*BASE, f"protocol={base}", *MODES.get(name, []), *EXTRA.get(name, []), *extra]


def protocol_class(name):
    """The class that runs this scenario (a mode may pick its own)."""
    from scenarios import assemble
    if name not in MODES:
        return protocols.get(name)
    return type(assemble(resolve(overrides=scenario(name))).protocol())


def test_every_builtin_and_the_toy_are_registered():
    assert {"fedavg", "gossip", "vc_gossip", "trimmed_gossip"} <= set(NAMES)


@pytest.fixture(scope="module")
def runs():
    """name -> (batched run, unbatched run), recorded events."""
    out = {}
    for name in NAMES:
        ov = scenario(name, "sim.record_events=true")
        out[name] = (run(overrides=ov), run(overrides=[*ov, "sim.batching=false"]))
    return out


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_metrics_csv(name, tmp_path):
    for d in ("a", "b"):
        run(overrides=scenario(name), out_dir=tmp_path / d)
    run(overrides=scenario(name, "seed=1"), out_dir=tmp_path / "c")

    def numbers(d):
        return [{k: v for k, v in r.items() if k != "wall_time_s"} for r in csv.DictReader(open(tmp_path / d / "metrics.csv"))]

    assert numbers("a") == numbers("b")
    assert numbers("a") != numbers("c")


@pytest.mark.parametrize("name", NAMES)
def test_resumed_from_a_checkpoint_ends_as_if_never_stopped(name, tmp_path):
    """Round 2's checkpoint (every attribute of the protocol, the pending events) continued in a
    fresh process-like build: the same metrics.csv, final models, events and handler calls."""
    ov = scenario(name, "rounds=4", "sim.record_events=true")
    whole = run(overrides=[*ov, "sim.checkpoint_every=2"], out_dir=tmp_path / "a")
    checkpoint = tmp_path / "a" / "checkpoint.pt"
    assert checkpoint.exists()
    resumed = run(overrides=[f"resume={checkpoint}"], out_dir=tmp_path / "b")

    def numbers(d):
        return [{k: v for k, v in r.items() if k != "wall_time_s"} for r in csv.DictReader(open(tmp_path / d / "metrics.csv"))]

    assert numbers("a") == numbers("b") and len(numbers("b")) == 5
    assert torch.equal(whole.final_models, resumed.final_models)
    assert whole.event_log == resumed.event_log
    assert whole.summary["handler_calls"] == resumed.summary["handler_calls"]
    assert resumed.summary["config"]["resume"] == str(checkpoint)


@pytest.mark.parametrize("name", NAMES)
def test_batched_equals_unbatched(runs, name):
    a, b = runs[name]
    assert a.event_log == b.event_log and len(a.event_log) > 20
    assert b.summary["handler_calls"] > a.summary["handler_calls"]
    assert len(a.metrics) == len(b.metrics) == 4
    h = a.summary["headline"]
    for ra, rb in zip(a.metrics, b.metrics):
        assert ra.keys() == rb.keys()
        for k in [*NUMBERS, f"{h}_mean", f"{h}_min", f"{h}_max"]:
            assert ra[k] == pytest.approx(rb[k], abs=1e-5, nan_ok=True), k
    torch.testing.assert_close(a.final_models, b.final_models, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_bytes_are_accounted(runs, name):
    a, b = runs[name]
    sent = [r["bytes_sent"] for r in a.metrics]
    model_bytes = a.summary["n_parameters"] * 4
    assert sent[0] == 0 and sent[-1] > 0 and sent == sorted(sent)
    counts = getattr(protocol_class(name), "counts_bytes", None)
    if counts is None:  # whole models only (iHOMER also sends label counts)
        assert all(s % model_bytes == 0 for s in sent)
    assert sent == [r["bytes_sent"] for r in b.metrics] and a.summary["bytes_sent"] == sent[-1]


@pytest.mark.parametrize("name", NAMES)
def test_models_are_rows_of_the_layout(runs, name):
    res = runs[name][0]
    models = res.final_models
    assert models.dtype == torch.float32 and models.dim() == 2
    assert models.shape[1] == res.summary["n_parameters"] and models.shape[0] in (1, 9)
    assert torch.isfinite(models).all()


@pytest.mark.parametrize("name", NAMES)
def test_declared_columns_are_written(runs, name):
    res = runs[name][0]
    cls = protocol_class(name)
    for row in res.metrics:
        assert set(cls.columns) <= set(row)
        h = res.summary["headline"]
        assert {"round", "sim_time_s", f"{h}_mean", "loss_mean", "bytes_sent", "train_loss"} <= set(row)


@pytest.mark.parametrize("name", NAMES)
def test_summary_config_reproduces_the_run(runs, name):
    res = runs[name][0]
    cfg = resolve(overrides=scenario(name, "sim.record_events=true"))
    assert res.summary["config"] == asdict(cfg)
    assert resolve(res.summary["config"]) == cfg  # the config written is a complete scenario


@pytest.mark.parametrize("name", NAMES)
def test_multilabel_task(name):
    res = run(overrides=scenario(name, "data=synthetic_multilabel", "data.n_samples=400", "rounds=2"))
    row = res.metrics[-1]
    assert res.summary["task"] == "multilabel" and res.summary["headline"] == "micro_f1"
    for k in ("micro_f1_mean", "macro_f1_mean", "subset_accuracy_mean", "hamming_loss_mean", "loss_mean"):
        assert 0 <= row[k] <= (1 if k != "loss_mean" else 10), k
    assert "accuracy_mean" not in row


@pytest.mark.parametrize("name", NAMES)
def test_bridge_ends_with_the_simulators_models(runs, name):
    pytest.importorskip("flwr")
    from bridge.client import client_app
    from bridge.scenario import load, settings
    from bridge.server import bridge_problem, serve
    from flower_grid import LocalGrid

    # the relay runs synchronous rounds over full participation: a scenario both engines run alike
    ov = [o for o in scenario(name) if not o.startswith(("speed=", "topology.latency", "sim."))] + ["rounds=2"]
    problem = bridge_problem(load(" ".join(ov)))  # e.g. no per-node merge rule, decentralized M2N2
    if problem:
        pytest.skip(f"{name} is not bridged: {problem}")
    s = settings({}, {"overrides": " ".join(ov), "connect-timeout": 1.0, "round-timeout": 0.5})
    res = serve(LocalGrid(client_app(), 9, run_config=s), s)
    ref = run(overrides=[*ov, "sim.progress=false"]).final_models
    assert res.models.shape == ref.shape
    torch.testing.assert_close(res.models, ref, atol=1e-5, rtol=0)
    assert (res.models - load(s["overrides"]).initial_row(0)).abs().max() > 0.01  # it trained


def test_the_toy_merge_is_a_trimmed_mean():
    from scenarios import assemble

    proto = assemble(resolve(overrides=scenario("trimmed_gossip", "protocol.trim=0.25",
                                                 "protocol.beta=0"))).protocol()
    own = torch.zeros(4)
    received = torch.tensor([[0.0, 1, 2, 3], [10, 1, 2, 3], [1, 1, 2, -30], [2, 1, 2, 3]])
    # four models, one dropped at each end per coordinate: the mean of the middle two
    expect = torch.tensor([1.5, 1.0, 2.0, 3.0])
    torch.testing.assert_close(proto.merge_received(own, received), expect)
    inbox = torch.cat([received, torch.full((2, 4), float("nan"))]).unsqueeze(0)  # padded to 6 slots
    torch.testing.assert_close(proto.merge(own.view(1, -1), inbox, torch.tensor([4]))[0], expect)
    assert np.isclose(float(proto.merge(own.view(1, -1), inbox[:, :2], torch.tensor([2]))[0, 0]), 5.0)
