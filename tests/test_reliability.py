"""Every run ends in a status; user mistakes are one line; nothing measured is lost.

What the new-user QA pass found, each case as a test: diverged runs, signals, sweeps with a
bad job, stalled or isolated gossip, models that cannot run in a node stack, pretrained
weights, memory that cannot fit, strict JSON, and the CLI's bare words.
"""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from scenarios import ConfigError, assemble, resolve
from simulator import run
from simulator.report import load_sweep

TINY = ["nodes=8", "rounds=3", "sim.progress=false", "train.local_steps=1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def strict_json(path: Path) -> dict:
    def refuse(token):
        raise AssertionError(f"bare {token} in {path}")
    return json.loads(path.read_text(), parse_constant=refuse)


def cli(args, capsys, monkeypatch, tmp_path):
    """`murmur ARGS` in-process: (exit code, stdout, stderr)."""
    from simulator import cli as murmur

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["murmur", *args])
    code = 0
    try:
        murmur.main()
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ---- divergence --------------------------------------------------------------------------------
def test_a_diverged_run_stops_says_who_and_when_and_writes_strict_json(tmp_path):
    with pytest.warns(RuntimeWarning, match="diverged"):
        res = run(overrides=[*TINY, "train.lr=1e6", "rounds=5"], out_dir=tmp_path)
    assert res.status == "diverged"
    assert res.summary["rounds_completed"] == 1  # stopped at the first evaluation that saw it
    assert "at round 1" in res.summary["status_detail"] and "the global model" in res.summary["status_detail"]
    summary = strict_json(tmp_path / "summary.json")
    assert summary["status"] == "diverged" and (tmp_path / "curves.png").exists()
    assert "nan" not in (tmp_path / "metrics.csv").read_text().lower()


def test_per_node_divergence_names_the_nodes():
    with pytest.warns(RuntimeWarning):
        res = run(overrides=[*TINY, "protocol=gossip", "topology=ring", "train.lr=1e7"])
    assert res.status == "diverged" and "of 8 nodes (nodes 0, 1" in res.summary["status_detail"]


def test_the_cli_exits_3_with_one_line_on_divergence(tmp_path, capsys, monkeypatch):
    code, out, err = cli([*TINY, "train.lr=1e6", f"hydra.run.dir={tmp_path}/run"], capsys, monkeypatch, tmp_path)
    assert code == 3 and one_line(err).startswith("murmur: diverged (at round 1")


def test_diverged_loss_threshold_is_an_option():
    res = run(overrides=[*TINY, "train.lr=1e6", "eval.diverged_loss=null"])
    assert res.status == "completed"  # huge but finite parameters: only the loss test catches them
    with pytest.raises(ConfigError, match="eval.diverged_loss must be a finite number > 1"):
        resolve(overrides=["eval.diverged_loss=0.5"])


# ---- runs that cannot go on --------------------------------------------------------------------
def test_sync_gossip_with_every_node_isolated_trains_locally_every_round():
    over = [*TINY, "protocol=gossip", "topology=erdos_renyi", "topology.p=0", "topology.allow_disconnected=true"]
    res = run(overrides=over)
    assert res.status == "completed" and res.summary["rounds_completed"] == 3
    assert [r["round"] for r in res.metrics] == [0, 1, 2, 3]
    assert res.metrics[-1]["accuracy_mean"] > res.metrics[0]["accuracy_mean"]
    assert res.summary["bytes_sent"] == 0


def test_a_run_that_stalls_is_failed_not_completed():
    from protocols.gossip import Gossip

    class Silent(Gossip):  # never starts a round
        name = "silent_test"

        def start(self):
            pass

    with pytest.warns(RuntimeWarning, match="stalled"):
        res = run(overrides=[*TINY, "protocol=silent_test", "topology=ring"])
    assert res.status == "failed" and "stalled after round 0 of 3" in res.summary["status_detail"]


def test_an_error_inside_a_run_still_writes_a_failed_summary(tmp_path, monkeypatch):
    from protocols.fedavg import FedAvg

    def boom(self, *a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(FedAvg, "_round_start", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        run(overrides=TINY, out_dir=tmp_path)
    summary = strict_json(tmp_path / "summary.json")
    assert summary["status"] == "failed" and summary["status_detail"] == "RuntimeError: disk on fire"
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 2  # header + round 0: kept


# ---- signals -----------------------------------------------------------------------------------
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_writes_summary_and_curves_and_exits_with_its_code(tmp_path, sig, code):
    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "simulator.cli", "nodes=8", "rounds=100000", "sim.progress=false",
                          "train.local_steps=1", f"hydra.run.dir={out}"], cwd=tmp_path, env=ENV,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # wait for a few measured rounds
            metrics = out / "metrics.csv"
            if metrics.exists() and len(metrics.read_text().splitlines()) > 3:
                break
            assert p.poll() is None, p.communicate()
            time.sleep(0.2)
        p.send_signal(sig)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == code, err
    assert one_line(err).startswith(f"murmur: interrupted ({signal.Signals(sig).name})")
    summary = strict_json(out / "summary.json")
    assert summary["status"] == "interrupted" and summary["rounds_completed"] >= 2
    assert (out / "curves.png").exists()


# ---- sweeps ------------------------------------------------------------------------------------
def test_a_bad_job_in_a_sweep_fails_alone(tmp_path, capsys, monkeypatch):
    sweep = tmp_path / "sweep"
    code, out, err = cli(["-m", "train.lr=0.1,-1,0.2", "nodes=4", "rounds=1", "sim.progress=false",
                          "hydra/launcher=basic",  # in this process: its lines reach capsys
                          f"hydra.sweep.dir={sweep}"], capsys, monkeypatch, tmp_path)
    assert code == 1
    lines = err.strip().splitlines()
    assert "train.lr must be a finite number > 0" in lines[0]
    assert lines[-1].startswith("murmur: sweep: 2 of 3 jobs completed; not completed: #1 (train.lr=-1")
    statuses = {d.name.rpartition("lr=")[2]: strict_json(d / "summary.json")["status"]
                for d in sweep.iterdir() if d.is_dir() and not d.name.startswith(".")}  # .murmur: job records
    assert statuses == {"0.1": "completed", "-1": "failed", "0.2": "completed"}
    assert [r["summary"]["config"]["train"]["lr"] for r in load_sweep(sweep)["fedavg"]] == [0.1, 0.2]


def test_a_sweep_value_of_the_wrong_type_is_refused_before_any_job(tmp_path, capsys, monkeypatch):
    code, out, err = cli(["-m", "train.lr=0.1,abc", "nodes=4", "rounds=1", f"hydra.sweep.dir={tmp_path}/s"],
                         capsys, monkeypatch, tmp_path)
    assert code == 2 and "train.lr" in one_line(err) and "'train.lr=0.1,abc'" in err
    assert not (tmp_path / "s").exists()


def test_the_report_leaves_out_runs_that_did_not_complete(tmp_path):
    for i, status in enumerate(["completed", "interrupted", "failed", "diverged", None]):
        d = tmp_path / str(i)
        run(overrides=["nodes=4", "rounds=1", "sim.progress=false", "train.local_steps=1"], out_dir=d)
        s = json.loads((d / "summary.json").read_text())
        if status is None:
            del s["status"]  # a summary from before statuses existed counts as completed
        else:
            s["status"] = status
        (d / "summary.json").write_text(json.dumps(s))
    assert len(load_sweep(tmp_path)["fedavg"]) == 2


# ---- the command line --------------------------------------------------------------------------
@pytest.mark.parametrize("args, needle", [
    (["nodes"], "cannot read 'nodes': write each setting as key=value"),
    (["rounds=2", "nodes"], "cannot read 'nodes'"),
    (["seed=4294967296"], "seed must be an integer from 0 to 4294967295"),
    (["model.hidden=[100000,100000]"], "GB is free on cpu"),
    (["data.alpha=-1"], "data.alpha must be a finite number > 0"),
])
def test_more_mistakes_are_one_line(tmp_path, capsys, monkeypatch, args, needle):
    code, out, err = cli([*args, "sim.progress=false", f"hydra.run.dir={tmp_path}/r"], capsys, monkeypatch, tmp_path)
    assert code == 2 and needle in one_line(err)


@pytest.mark.parametrize("args, needle", [  # the QA pass's examples, each by name
    (["eval.every=1.5"], "eval.every must be an integer, got '1.5'"),
    (["train.local_epochs=inf"], "train.local_epochs must be a number in (0, 10^4]"),
    (["train.lr=nan"], "train.lr must be a finite number > 0 (at most 3.4e38), got nan"),
    (["protocol.fraction=nan"], "protocol.fraction must be in (0, 1], got nan"),
    (["protocol.deadline=inf"], "protocol.deadline must be a finite number > 0"),
    (["protocol=gossip", "topology.degree=many"], "topology.degree must be an integer, got 'many'"),
    (["protocol=gossip", "topology=small_world", "topology.k=2.0"], "topology.k must be an integer, got '2.0'"),
    (["data=synthetic", "data.n_samples=1000.5"], "data.n_samples must be an integer, got '1000.5'"),
    (["data=synthetic", "data.n_samples=1e12"], "data.n_samples must be an integer"),
    (["data=synthetic", "data.n_samples=100000000000"], "GB"),
    (["train.lr=abc"], "train.lr must be a number, got 'abc'"),
    (["train.weight_decay=2e228"], "train.weight_decay must be a finite number >= 0 (at most 3.4e38)"),
    (["topology.allow_disconnected=perhaps"], "topology.allow_disconnected must be true or false, got 'perhaps'"),
])
def test_the_qa_examples_are_one_line(tmp_path, capsys, monkeypatch, args, needle):
    code, out, err = cli([*args, "sim.progress=false", f"hydra.run.dir={tmp_path}/r"], capsys, monkeypatch, tmp_path)
    assert code == 2 and needle in one_line(err)


def test_booleans_are_real_and_local_steps_win_over_the_default_epochs():
    cfg = resolve(overrides=["topology.allow_disconnected=no", "train.local_steps=10"])
    assert cfg.topology.allow_disconnected is False
    assert cfg.train.steps(np.array([100, 5, 0])).tolist() == [10, 10, 0]
    assert resolve(overrides=["data=synthetic", "data.class_sep=2.0"]).data.class_sep == 2.0


def test_model_kwargs_take_any_key_in_every_form():
    """model.kwargs is free-form (a user model's constructor arguments): a key may be added by
    a dotted override, a mapping value or a Python mapping; all three mean the same."""
    forms = [resolve(overrides=["model.kwargs.depth=3"]), resolve(overrides=["model.kwargs={depth: 3}"]),
             resolve({"model": {"kwargs": {"depth": 3}}})]
    assert all(cfg.model.kwargs == {"depth": 3} for cfg in forms)
    with pytest.raises(ConfigError, match=r"cannot apply 'model.hidden.x=1': invalid literal"):
        resolve(overrides=["nodes=4", "model.hidden.x=1"])


def test_an_output_directory_that_cannot_be_made_is_one_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("x")
    code, out, err = cli([*TINY, f"hydra.run.dir={tmp_path}/file/run"], capsys, monkeypatch, tmp_path)
    assert code == 2 and "Not a directory" in one_line(err)
    with pytest.raises(ConfigError, match="cannot create the run directory"):
        run(overrides=TINY, out_dir=tmp_path / "file" / "run")


# ---- the Python API ----------------------------------------------------------------------------
def test_a_given_model_keeps_its_weights():
    model = nn.Sequential(nn.Linear(64, 10))
    with torch.no_grad():
        model[0].weight.fill_(0.01)
        model[0].bias.copy_(torch.arange(10.0))
    world = assemble(resolve(overrides=TINY + ["protocol=gossip", "topology=ring"]), model=model)
    start = world.initial_models(independent=True)
    assert torch.equal(start, world.template_row().expand(8, -1))
    assert torch.equal(start[3, -10:], torch.arange(10.0))
    assert torch.equal(world.initial_row(5, independent=True), start[5])
    # a class by import path draws fresh weights per node, as the named models do
    drawn = assemble(resolve(overrides=TINY + ["protocol=gossip", "topology=ring"])).initial_models(independent=True)
    assert not torch.equal(drawn[0], drawn[1])


@pytest.mark.parametrize("model, needle", [
    (nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10)), "Dropout"),
    (nn.Sequential(nn.Linear(64, 5)), "model outputs (5,) values per sample; the data needs 10 (classes)"),
    (nn.Sequential(nn.Linear(30, 10)), "model cannot run on this data (64 features per sample"),
    ("mlp", "model must be a torch.nn.Module, got str"),
])
def test_models_that_cannot_run_are_one_config_error(model, needle):
    with pytest.raises(ConfigError) as err:
        run(overrides=TINY, model=model)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_half_precision_models_run_as_float32():
    res = run(overrides=TINY, model=nn.Sequential(nn.Linear(64, 10)).half())
    assert res.status == "completed" and res.final_models.dtype == torch.float32


@pytest.mark.parametrize("kwargs, needle", [
    ({"overrides": "nodes=8 rounds=2"}, "overrides must be a list of strings"),
    ({"config": [1, 2]}, "config must be a mapping"),
    ({"config": {"nodes": 10**10}}, "nodes must be an integer from 1 to"),
])
def test_api_mistakes_are_one_config_error(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        run(**kwargs)


def test_summary_json_is_strict_even_with_infinite_settings(tmp_path):
    res = run(overrides=[*TINY, "speed=inf"], out_dir=tmp_path)
    summary = strict_json(tmp_path / "summary.json")
    assert summary["config"]["speed"] == "inf" and res.summary["config"]["speed"] == math.inf
    assert float(summary["config"]["speed"]) == math.inf
    header, row0 = (tmp_path / "metrics.csv").read_text().splitlines()[:2]
    cells = dict(zip(header.split(","), row0.split(",")))
    assert cells["train_loss"] == ""  # not measured before any training: an empty cell
    assert np.isfinite(float(cells["accuracy_mean"]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_on_cuda_divergence_and_memory_are_caught():
    with pytest.warns(RuntimeWarning):
        res = run(overrides=[*TINY, "train.lr=1e6", "device=cuda"])
    assert res.status == "diverged"
    cfg = resolve(overrides=["nodes=1000", "model.hidden=[1000000,1000]", "device=cuda"])
    with pytest.raises(ConfigError, match="GB is free on cuda"):
        assemble(cfg)
