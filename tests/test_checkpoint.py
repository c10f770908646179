"""Checkpoints and resume (simulator.checkpoint): a run killed (kill -9), interrupted (SIGINT,
SIGTERM) or crashed continues from its last checkpoint and ends with the metrics.csv of a run
never stopped; a checkpoint is written whole or not at all; a bad `resume` is one line.
(The contract suite resumes every registered protocol in-process; here real processes die.)"""
import csv
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from scenarios import ConfigError
from simulator import run
from simulator.checkpoint import Checkpoint
from simulator.run import RunWarning

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# a process that signals itself once round AT is in metrics.csv: between two checkpoints
# (kill -9), or mid-run (SIGINT/SIGTERM: the deferred checkpoint at the end of that instant)
SELF_SIGNAL = textwrap.dedent("""
    import os, signal, sys
    from simulator import metrics
    at, sig = int(sys.argv[1]), getattr(signal, sys.argv[2])
    add = metrics.Recorder.add
    def add_then_signal(self, row):
        add(self, row)
        if row["round"] == at:
            os.kill(os.getpid(), sig)
    metrics.Recorder.add = add_then_signal
    from simulator.cli import main
    sys.argv = ["murmur", *sys.argv[3:]]
    main()
""")
SCENARIOS = {
    "fedavg": ["protocol=fedavg", "protocol.fraction=0.5"],
    "async_gossip": ["protocol=gossip", "protocol.mode=async", "protocol.round_time=0.2"],
    "vc_gossip": ["protocol=vc_gossip", "speed={kind:lognormal,mean:500,sigma:0.5}"],
}
BASE = ["nodes=16", "rounds=9", "topology.degree=4", "sim.progress=false"]


def numbers(path):
    return [{k: v for k, v in r.items() if k != "wall_time_s"} for r in csv.DictReader(open(path / "metrics.csv"))]


def murmur_signalled(at: int, sig: str, overrides: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.Popen([sys.executable, "-c", SELF_SIGNAL, str(at), sig, *overrides], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("name", SCENARIOS)
def test_killed_between_checkpoints_resumes_as_if_never_stopped(name, tmp_path):
    ov = [*BASE, *SCENARIOS[name]]
    done = murmur_signalled(6, "SIGKILL", [*ov, "sim.checkpoint_every=4", f"hydra.run.dir={tmp_path / 'killed'}"])
    assert done.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "summary.json").exists()  # kill -9: nothing more was written
    assert [int(r["round"]) for r in numbers(tmp_path / "killed")] == list(range(7))
    checkpoint = Checkpoint(tmp_path / "killed" / "checkpoint.pt")
    assert checkpoint.round == 4  # rounds 5 and 6 were lost with the process, and run again
    assert not list((tmp_path / "killed").glob("*.tmp"))
    resumed = run(overrides=[f"resume={checkpoint.path}"], out_dir=tmp_path / "resumed")
    whole = run(overrides=ov, out_dir=tmp_path / "whole")
    assert numbers(tmp_path / "resumed") == numbers(tmp_path / "whole") and len(numbers(tmp_path / "whole")) == 10
    assert torch.equal(resumed.final_models, whole.final_models)


@pytest.mark.parametrize("sig, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_an_interrupt_writes_a_checkpoint_and_murmur_resumes_it(sig, code, tmp_path):
    """No sim.checkpoint_every: the interrupt alone writes the checkpoint, at the end of the
    instant it arrived in; the summary says interrupted; `murmur resume=...` finishes the run."""
    ov = [*BASE, *SCENARIOS["async_gossip"]]
    done = murmur_signalled(3, sig, [*ov, f"hydra.run.dir={tmp_path / 'stopped'}"])
    assert done.returncode == code, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"murmur: interrupted ({sig})") and "resume=" in last, last
    summary = (tmp_path / "stopped" / "summary.json").read_text()
    assert '"status": "interrupted"' in summary
    assert Checkpoint(tmp_path / "stopped" / "checkpoint.pt").round == 3
    if sig == "SIGINT":  # once through the command line (resume inside a Hydra job)
        cmd = [sys.executable, "-m", "simulator.cli", f"resume={tmp_path / 'stopped' / 'checkpoint.pt'}",
               "sim.progress=false", f"hydra.run.dir={tmp_path / 'resumed'}"]
        rerun = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120,
                               env={**os.environ, "PYTHONPATH": ROOT})
        assert rerun.returncode == 0, rerun.stderr
        assert rerun.stdout.strip().splitlines()[-1].startswith("murmur: completed")
    else:
        run(overrides=[f"resume={tmp_path / 'stopped' / 'checkpoint.pt'}"], out_dir=tmp_path / "resumed")
    run(overrides=ov, out_dir=tmp_path / "whole")
    assert numbers(tmp_path / "resumed") == numbers(tmp_path / "whole")


@pytest.fixture(scope="module")
def checkpoint_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("ck")
    run(overrides=["protocol=gossip", "nodes=8", "topology.degree=4", "rounds=3", "sim.checkpoint_every=2", "sim.progress=false"],
        out_dir=out)
    return out / "checkpoint.pt"


def test_a_bad_resume_is_one_line(checkpoint_file, tmp_path):
    cases = {
        tmp_path / "missing.pt": "cannot read",
        checkpoint_file.with_name("summary.json"): "is not a murmur checkpoint",
    }
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(checkpoint_file.read_bytes()[:-1000])
    cases[truncated] = "is damaged"
    half = tmp_path / "half.pt"  # the header whole, the state cut short
    half.write_bytes(checkpoint_file.read_bytes()[:len(checkpoint_file.read_bytes()) // 2])
    cases[half] = "is damaged"
    for path, says in cases.items():
        with pytest.raises(ConfigError, match=says) as err:
            run(overrides=[f"resume={path}"], out_dir=tmp_path / "out")
        assert "\n" not in str(err.value) and str(err.value).startswith("resume: ")


def test_resume_refuses_another_config_but_takes_the_free_keys(checkpoint_file, tmp_path):
    with pytest.raises(ConfigError, match=r"resume: the checkpoint's run has nodes=8, this one nodes=9"):
        run(overrides=[f"resume={checkpoint_file}", "protocol=gossip", "nodes=9", "topology.degree=4", "rounds=3"], out_dir=tmp_path)
    same = run(overrides=[f"resume={checkpoint_file}", "protocol=gossip", "nodes=8", "topology.degree=4", "rounds=3",
                          "sim.progress=false", "sim.checkpoint_every=5"], out_dir=tmp_path / "same")
    assert same.summary["config"]["sim"]["checkpoint_every"] == 5 and same.summary["config"]["nodes"] == 8
    assert [r["round"] for r in same.metrics] == [0, 1, 2, 3]


def test_checkpoints_need_a_run_directory():
    with pytest.raises(ConfigError, match="sim.checkpoint_every needs a run directory"):
        run(overrides=["nodes=4", "rounds=2", "sim.checkpoint_every=1"])
    with pytest.raises(ConfigError, match="sim.checkpoint_every must be an integer >= 0"):
        run(overrides=["sim.checkpoint_every=-2"])


def test_a_failed_checkpoint_never_loses_the_run_nor_the_last_checkpoint(tmp_path, monkeypatch):
    ov = ["protocol=gossip", "nodes=8", "topology.degree=4", "rounds=4", "sim.checkpoint_every=1", "sim.progress=false"]
    run(overrides=ov, out_dir=tmp_path)
    before = (tmp_path / "checkpoint.pt").read_bytes()

    def disk_full(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr("simulator.checkpoint.os.fsync", disk_full)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run(overrides=[*ov, "seed=1"], out_dir=tmp_path)
    assert result.status == "completed" and len(result.metrics) == 5
    assert any(issubclass(w.category, RunWarning) and "checkpoint not written" in str(w.message) for w in caught)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before  # the last whole one stays


def test_a_sweep_run_again_continues_an_unfinished_job_from_its_checkpoint(tmp_path):
    args = ["-m", "seed=0,1", "nodes=6", "rounds=5", "topology=ring", "sim.checkpoint_every=2",
            "sim.progress=false", "hydra/launcher=basic", f"hydra.sweep.dir={tmp_path}/sweep"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}

    def murmur():
        return subprocess.run([sys.executable, "-m", "simulator.cli", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=240)
    assert murmur().returncode == 0
    done, crashed = sorted(p.parent for p in Path(tmp_path, "sweep").glob("*/summary.json"))
    whole = numbers(crashed)
    (crashed / "summary.json").unlink()  # as after kill -9 past the round-4 checkpoint
    lines = (crashed / "metrics.csv").read_text().splitlines(keepends=True)
    (crashed / "metrics.csv").write_text("".join(lines[:6]))
    p = murmur()
    assert p.returncode == 0, p.stderr
    assert f"murmur: resuming from {crashed / 'checkpoint.pt'}" in p.stdout
    assert p.stdout.strip().splitlines()[-1].startswith("murmur: sweep: all 2 jobs completed (1 skipped")
    assert numbers(crashed) == whole


def test_a_run_given_its_own_graph_resumes_only_on_that_graph(tmp_path):
    import networkx as nx

    graph = nx.cycle_graph(8)
    ov = ["protocol=gossip", "nodes=8", "topology.degree=4", "rounds=4", "sim.checkpoint_every=2", "sim.progress=false"]
    whole = run(overrides=ov, graph=graph, out_dir=tmp_path / "a")
    resume = [f"resume={tmp_path / 'a' / 'checkpoint.pt'}"]
    with pytest.raises(ConfigError, match="another graph or from another given model"):
        run(overrides=resume, out_dir=tmp_path / "b")  # the config's random_regular graph instead
    resumed = run(overrides=resume, graph=graph, out_dir=tmp_path / "c")
    assert numbers(tmp_path / "a") == numbers(tmp_path / "c")
    assert torch.equal(whole.final_models, resumed.final_models)
