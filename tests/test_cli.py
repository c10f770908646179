"""The `murmur` command: bad input gives one line and exit code 2; a sweep runs every job."""
import json
import shutil
import os
import subprocess
import sys
from pathlib import Path

import pytest


def murmur(*args, cwd, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "simulator.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args, needle", [
    (["protocol=nope"], "unknown protocol 'nope'; choose one of: fedavg, gossip"),
    (["protocol=gossip", "protocol.betta=0.5"], "unknown key 'protocol.betta'; valid keys of protocol: aggregator, beta,"),
    (["train.learning_rate=1"], "unknown key 'train.learning_rate'; valid keys of train: batch_size,"),
    (["train.batch_size=2.5"], "train.batch_size"),
    (["topology.allow_disconnected=maybe"], "topology.allow_disconnected"),
    (["protocol=fedavg,nope"], "unknown protocol 'nope'"),
    (["model=no_such_module.Net"], "cannot import 'no_such_module' (ModuleNotFoundError"),
    (["nodes=[1"], "cannot read the override 'nodes=[1'"),
    (["topology.latency=-1"], "topology.latency must be finite and >= 0 seconds"),   # FedAvg's server links too
    (["topology.bandwidth=0"], "topology.bandwidth must be > 0 bytes/s"),
    (["protocol=gossip", "protocol.mode=async", "protocol.wake=0", "speed=inf"], "protocol.wake must be > 0"),
    (["nodes=0"], "nodes must be an integer from 1 to"),
    (["protocol.fraction=1.5"], "fraction must be in (0, 1]"),
    (["data=npz", "data.path=missing.npz"], "npz file not found: missing.npz"),
    (["data=npz"], "data.path"),
    (["bogus=3"], "unknown key 'bogus'"),
    (["topology=torus", "protocol=gossip", "nodes=7"], "torus"),
    (["train.lr=-1"], "train.lr must be a finite number > 0"),
    (["train.local_steps=null", "train.local_epochs=null"], "set one"),
    (["train.nope=1"], "train.nope"),
])
def test_bad_values_give_one_line_and_exit_code_2(tmp_path, monkeypatch, capsys, args, needle):
    """In-process (the same `main` the console script calls), to keep the suite quick."""
    from simulator import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["murmur", *args, "sim.progress=false", f"hydra.run.dir={tmp_path}"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("murmur: error: ") and needle in lines[0]


@pytest.mark.parametrize("args, needle", [
    (["protocol.betta=0.5", "protocol=gossip"], "unknown key 'protocol.betta'"),   # before Hydra starts
    (["data=npz", "data.path=missing.npz"], "npz file not found: missing.npz"),  # inside the job
])
def test_a_real_process_exits_2_with_one_line(tmp_path, args, needle):
    p = murmur(*args, "sim.progress=false", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in p.stderr and needle in lines[0], p.stderr


def test_run_and_sweep_write_their_outputs(tmp_path):
    p = murmur("-m", "protocol=fedavg,gossip", "seed=0,1", "nodes=8", "rounds=2", "topology=ring",
               "sim.progress=false", f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    summaries = sorted(Path(tmp_path, "sweep").glob("*/summary.json"))
    assert len(summaries) == 4
    combos = {(json.loads(s.read_text())["config"]["protocol"]["name"], json.loads(s.read_text())["seed"])
              for s in summaries}
    assert combos == {("fedavg", 0), ("fedavg", 1), ("gossip", 0), ("gossip", 1)}
    assert p.stdout.count("murmur: completed: ") == 4  # one summary line per job
    assert p.stdout.strip().splitlines()[-1] == "murmur: sweep: all 4 jobs completed"


def test_a_sweep_run_again_skips_the_jobs_it_completed_and_runs_the_rest(tmp_path):
    args = ("-m", "seed=0,1,2", "nodes=6", "rounds=1", "topology=ring", "sim.progress=false",
            f"hydra.sweep.dir={tmp_path}/sweep")
    assert murmur(*args, cwd=tmp_path).returncode == 0
    gone, stopped, done = sorted(p.parent for p in Path(tmp_path, "sweep").glob("*/summary.json"))
    shutil.rmtree(gone)  # a job directory deleted
    summary = json.loads((stopped / "summary.json").read_text())
    (stopped / "summary.json").write_text(json.dumps({**summary, "status": "interrupted"}))
    kept = (done / "metrics.csv").stat().st_mtime_ns
    p = murmur(*args, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "murmur: sweep: all 3 jobs completed (1 skipped: completed before)"
    assert p.stdout.count("murmur: skipped: already completed in ") == 1 and p.stdout.count("murmur: completed: ") == 2
    assert (done / "metrics.csv").stat().st_mtime_ns == kept
    for d in (gone, stopped):
        assert json.loads((d / "summary.json").read_text())["status"] == "completed"
    from scenarios import resolve
    from simulator.cli import completed_before

    seed = json.loads((done / "summary.json").read_text())["seed"]
    same = ["nodes=6", "rounds=1", "topology=ring", "sim.progress=false", f"seed={seed}"]
    assert completed_before(resolve(None, same), done)
    assert not completed_before(resolve(None, [*same, "train.lr=0.3"]), done)  # another config: run again


def test_help_lists_the_groups_and_the_config_of_the_overrides(tmp_path):
    p = murmur("protocol=gossip", "--help", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "protocol: fedasync, fedavg, fedbuff, gossip, ihomer, m2n2, vc_gossip" in p.stdout
    assert "experiment: m2n2_digits" in p.stdout and "nodes: 100" in p.stdout
    assert "protocol:\n  name: gossip\n  beta: 0.5" in p.stdout
    bad = murmur("protocol=nope", "--help", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("murmur: error: unknown protocol 'nope'")
