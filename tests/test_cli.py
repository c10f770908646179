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
            "hydra/launcher=basic", f"hydra.sweep.dir={tmp_path}/sweep")  # in one process: quicker for tiny jobs
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


def metrics_of(sweep: Path) -> dict[str, list[dict]]:
    """{job directory name: metrics.csv rows without wall_time_s} of every job of a sweep."""
    import csv

    out = {}
    for m in sorted(sweep.glob("*/metrics.csv")):
        rows = list(csv.DictReader(open(m)))
        out[m.parent.name] = [{k: v for k, v in r.items() if k != "wall_time_s"} for r in rows]
    return out


def test_a_parallel_sweep_gives_the_numbers_of_a_sweep_run_one_job_after_another(tmp_path):
    """The default launcher runs the jobs side by side (worker processes), one torch thread each
    here (OMP_NUM_THREADS=1 caps them); hydra/launcher=basic runs them in this process. The
    same metrics, bit for bit, and the same last line, counted from the jobs' records."""
    args = ("-m", "protocol=fedavg,gossip", "seed=0,1", "nodes=8", "rounds=2", "topology=ring",
            "sim.progress=false")
    side = murmur(*args, f"hydra.sweep.dir={tmp_path}/side", cwd=tmp_path)
    one = murmur(*args, "hydra/launcher=basic", f"hydra.sweep.dir={tmp_path}/one", cwd=tmp_path)
    for p in (side, one):
        assert p.returncode == 0, p.stderr
        assert p.stdout.strip().splitlines()[-1] == "murmur: sweep: all 4 jobs completed"
    assert "Joblib.Parallel(n_jobs=" in side.stdout and "Joblib" not in one.stdout
    a, b = metrics_of(tmp_path / "side"), metrics_of(tmp_path / "one")
    assert len(a) == 4 and a == b
    records = [json.loads(r.read_text()) for r in sorted((tmp_path / "side" / ".murmur").glob("job-*.json"))]
    assert [r["number"] for r in records] == [0, 1, 2, 3] and all(r["threads"] == 1 for r in records)
    assert (tmp_path / "side" / "report.md").exists()  # every sweep writes its report


def test_a_parallel_sweep_counts_a_failed_job_and_imports_the_users_protocol(tmp_path):
    """A protocol in the user's module (found from the working directory) in worker processes;
    a job with a bad value ends alone and the parent names it. The two jobs run at once, each on
    its share of this machine's cores (OMP_NUM_THREADS unset)."""
    tests = Path(__file__).parent
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    p = subprocess.run([sys.executable, "-m", "simulator.cli", "-m", "protocol=toy_protocol.TrimmedMeanGossip",
                        "nodes=5,0", "rounds=1", "topology=ring", "sim.progress=false",
                        f"hydra.sweep.dir={tmp_path}/sweep"], cwd=tests, env=env, capture_output=True, text=True,
                       timeout=240)
    assert p.returncode == 1, p.stderr
    records = [json.loads(r.read_text()) for r in (tmp_path / "sweep" / ".murmur").glob("job-*.json")]
    cores = len(os.sched_getaffinity(0))
    assert sorted(r["threads"] for r in records) == [max(1, cores // min(cores, 2))] * 2
    assert p.stdout.count("murmur: completed: toy_protocol.TrimmedMeanGossip, 5 nodes") == 1
    assert p.stderr.count("murmur: error: nodes must be an integer from 1 to") == 1
    assert p.stderr.strip().splitlines()[-1] == (
        "murmur: sweep: 1 of 2 jobs completed; not completed: #1 (protocol=toy_protocol.TrimmedMeanGossip "
        "nodes=0 rounds=1 topology=ring sim.progress=False): exit 2")


def test_the_threads_of_jobs_side_by_side_divide_the_cores(monkeypatch):
    from omegaconf import OmegaConf
    from simulator import cli

    def config(n_jobs, task, launcher="hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"):
        return OmegaConf.create({"hydra": {
            "launcher": {"_target_": launcher, "n_jobs": n_jobs},
            "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper", "params": None},
            "overrides": {"task": task}}})

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cli, "usable_cores", lambda: 8)
    sweep = ["protocol=fedavg,gossip", "seed=0,1,2", "nodes=4"]  # 6 jobs
    assert cli.sweep_jobs(config(1, sweep))[4] == ["protocol=gossip", "seed=1", "nodes=4"]
    assert config("${murmur_n_jobs:}", sweep).hydra.launcher.n_jobs == 6  # a core per job, at most
    assert config("${murmur_n_jobs:}", ["seed=0,1"]).hydra.launcher.n_jobs == 2
    assert cli.threads_per_job(config("${murmur_n_jobs:}", sweep)) == 1    # 8 cores // 6 jobs
    assert cli.threads_per_job(config("${murmur_n_jobs:}", ["seed=0,1"])) == 4
    assert cli.threads_per_job(config(3, sweep)) == 2  # the threads follow hydra.launcher.n_jobs
    assert cli.threads_per_job(config(1, sweep)) == 8
    assert cli.threads_per_job(config(16, ["seed=0,1"])) == 4  # 2 jobs run at once, not 16
    basic = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
    assert cli.threads_per_job(config(1, sweep, launcher=basic)) is None  # one job after another: torch's own
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert cli.threads_per_job(config(1, sweep)) == 2  # OMP_NUM_THREADS caps them


def test_ctrl_c_stops_a_parallel_sweep_and_its_workers(tmp_path):
    import signal
    import time

    def alive(pid):  # a zombie awaiting its reaper counts as gone
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "simulator.cli", "-m", "seed=0,1,2,3", "nodes=20", "rounds=100000",
                          "protocol=gossip", "sim.progress=false", f"hydra.sweep.dir={tmp_path}/sweep"],
                         cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers = []
    try:
        deadline = time.monotonic() + 180
        while not list(Path(tmp_path, "sweep").glob("*/.hydra")):  # a job has started
            assert p.poll() is None and time.monotonic() < deadline, "no job started"
            time.sleep(0.2)
        children = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
        for c in children:
            try:
                if "loky" in Path(f"/proc/{c}/cmdline").read_text():
                    workers.append(int(c))
            except OSError:
                pass
        assert workers, children
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)  # promptly: the jobs would run for hours
        assert p.returncode == 130, err
        assert err.strip().splitlines()[-1].startswith("murmur: interrupted (SIGINT)")
        deadline = time.monotonic() + 10
        while any(alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(alive(w) for w in workers)  # the workers went with the sweep
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
        for w in workers:
            if alive(w):
                os.kill(w, signal.SIGKILL)


def test_a_sweep_killed_half_way_and_run_again_ends_with_the_uninterrupted_report(tmp_path):
    import signal
    import time

    args = ["-m", "protocol=gossip,fedavg", "seed=0,1", "nodes=6", "rounds=3", "topology=ring",
            "sim.progress=false", "hydra/launcher=basic"]
    cmd = [sys.executable, "-m", "simulator.cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sweep = Path(tmp_path, "killed")
    p = subprocess.Popen([*cmd, f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while len(list(sweep.glob("*/summary.json"))) < 2:  # two of four jobs done
            assert p.poll() is None and time.monotonic() < deadline, "the sweep ended before it was killed"
            time.sleep(0.05)
        p.send_signal(signal.SIGKILL)
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()
    assert not (sweep / "report.csv").exists()
    again = murmur(*args, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "murmur: sweep: all 4 jobs completed (" in again.stdout and "skipped: completed before)" in again.stdout
    whole = murmur(*args, f"hydra.sweep.dir={tmp_path}/whole", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    assert (sweep / "report.csv").read_text() == Path(tmp_path, "whole", "report.csv").read_text()
