"""Sweeps on an existing engine: `hydra/launcher=ray` (hydra_plugins/murmur_ray_launcher) runs a
sweep's jobs as Ray tasks on a real two-node Ray cluster on loopback and writes the same metrics
as the basic launcher; the cluster leaves no process behind. And `hydra/launcher=submitit_local`
(the SLURM launcher's code path without the scheduler) runs a sweep end to end."""
import contextlib
import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

# tiny jobs: a ring, so that 8 nodes are enough
JOBS = ["protocol=gossip", "nodes=8", "topology=ring", "rounds=3", "seed=0,1,2,3", "sim.progress=false"]
START_TIMEOUT_S = 90  # one Ray node's start-up (~15 s on two busy cores)
SWEEP_TIMEOUT_S = 150


def env() -> dict:
    out = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    out.pop("RAY_ADDRESS", None)  # never join a cluster of someone else's
    return out


def murmur(*args, cwd, timeout=SWEEP_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "simulator.cli", "-m", *args], cwd=cwd, env=env(),
                          capture_output=True, text=True, timeout=timeout)


def murmur_in_background(*args, cwd) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "simulator.cli", "-m", *args], cwd=cwd, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def free_ports(n: int) -> list[int]:
    """n distinct loopback ports free right now (held together, so never the same one twice)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def node_ports(head: bool) -> list[str]:
    """The ports of a node, all free ones: several default to fixed numbers that another Ray on
    the machine may hold. A head's first one is its GCS port, the cluster's address."""
    keys = ["--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
            "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port"]
    if head:
        keys = ["--port", "--ray-client-server-port", "--dashboard-port", *keys]
    return [f"{k}={p}" for k, p in zip(keys, free_ports(len(keys)))]


RAY = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"  # this Python's Ray


def processes_of(sessions: set[int], root: Path) -> list[tuple[int, str]]:
    """(pid, command line) of every live process in one of these sessions or naming root."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmdline = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        state, _ppid, _pgrp, session = stat.rsplit(")", 1)[1].split()[:4]
        if state != "Z" and (int(session) in sessions or str(root) in cmdline):
            found.append((int(d.name), cmdline.strip()))
    return found


@contextlib.contextmanager
def ray_cluster(root: Path):
    """A head and a second node, each `ray start --block` in a session of its own, bound to
    127.0.0.1, with temp dirs under root; yields the head's address. On the way out: SIGTERM
    to the two `ray start` processes (they stop their node), then SIGKILL, by pid, to whatever
    of their sessions is left. (Not `ray stop`: it stops every Ray process on the machine.)"""
    started: list[subprocess.Popen] = []

    def start(name: str, args: list[str]) -> None:
        with open(root / f"{name}.out", "w") as out:
            started.append(subprocess.Popen(
                [RAY, "start", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                 f"--temp-dir={root / name}", "--disable-usage-stats",
                 "--object-store-memory=100000000", *args],
                stdout=out, stderr=subprocess.STDOUT, env=env(), start_new_session=True))

    def wait_up(name: str, proc: subprocess.Popen) -> None:
        log, deadline = root / f"{name}.out", time.monotonic() + START_TIMEOUT_S
        while "will now block forever" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray start ({name}) did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)

    try:
        head = node_ports(head=True)
        address = f"127.0.0.1:{head[0].split('=')[1]}"
        start("head", ["--head", "--include-dashboard=false", *head])
        wait_up("head", started[0])
        start("node", [f"--address={address}", *node_ports(head=False)])
        wait_up("node", started[1])
        yield address, {p.pid for p in started}
    finally:
        for p in started:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        while processes_of({p.pid for p in started}, root) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid, _ in processes_of({p.pid for p in started}, root):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for p in started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)


def metrics_of(sweep: Path) -> dict[str, list[dict]]:
    """{job directory name: metrics.csv rows without the wall-clock column}."""
    out = {}
    for f in sorted(sweep.glob("*/metrics.csv")):
        with open(f) as fh:
            out[f.parent.name] = [{k: v for k, v in row.items() if k != "wall_time_s"}
                                  for row in csv.DictReader(fh)]
    return out


def assert_completed(sweep: Path, n: int) -> None:
    summaries = sorted(sweep.glob("*/summary.json"))
    assert len(summaries) == n, sorted(p.name for p in sweep.iterdir())
    for s in summaries:
        assert json.loads(s.read_text())["status"] == "completed", s


def test_hydra_finds_the_ray_launcher_and_its_config():
    from hydra import compose, initialize_config_dir
    from hydra.core.plugins import Plugins
    from hydra.plugins.launcher import Launcher
    from hydra.utils import instantiate

    from hydra_plugins.murmur_ray_launcher._core import threads_for
    from scenarios import SCENARIOS, compose as compose_scenario

    compose_scenario()  # the protocols' and models' options join Hydra's config store
    found = {f"{p.__module__}.{p.__name__}" for p in Plugins.instance().discover(Launcher)}
    assert "hydra_plugins.murmur_ray_launcher.ray_launcher.RayLauncher" in found
    with initialize_config_dir(config_dir=str(SCENARIOS), version_base=None):
        cfg = compose("config", ["hydra/launcher=ray", "hydra.launcher.ray.init.address=auto",
                                 "hydra.launcher.ray.remote.num_cpus=2"], return_hydra_config=True)
    launcher = instantiate(cfg.hydra.launcher)
    # null keys are left to Ray's defaults
    assert launcher.init_kwargs == {"address": "auto", "log_to_driver": True}
    assert launcher.remote_options == {"num_cpus": 2, "num_gpus": 0}
    assert [threads_for(n) for n in (2, 1, 0.5, 0, None)] == [2, 1, 1, 1, 1]  # torch threads


def test_a_sweep_on_a_two_node_ray_cluster_equals_the_basic_launcher_and_leaves_nothing(tmp_path):
    # Ray's socket paths are limited to ~107 bytes: a short temp dir of our own
    root = Path(tempfile.mkdtemp(prefix="mr", dir="/tmp"))
    # the reference: the same jobs with the basic launcher, run while the cluster starts
    basic = murmur_in_background("hydra/launcher=basic", *JOBS, f"hydra.sweep.dir={tmp_path}/basic",
                                 cwd=tmp_path)
    try:
        with ray_cluster(root) as (address, sessions):
            swept = murmur("hydra/launcher=ray", f"hydra.launcher.ray.init.address={address}", *JOBS,
                           f"hydra.sweep.dir={tmp_path}/ray", cwd=tmp_path)
        left = processes_of(sessions, root)
        _, basic_err = basic.communicate(timeout=SWEEP_TIMEOUT_S)
    finally:
        basic.kill()  # if the test failed before it ended
        basic.wait()
        shutil.rmtree(root, ignore_errors=True)
    assert not left, f"Ray processes left behind: {left}"
    out = swept.stdout + swept.stderr
    assert swept.returncode == 0, out[-3000:]
    assert swept.stdout.strip().splitlines()[-1] == "murmur: sweep: all 4 jobs completed"
    assert_completed(tmp_path / "ray", 4)
    # every job reports where it ran; two nodes of one CPU each share the four jobs
    ran_on = re.findall(r"#(\d) ran on \S+ \(Ray node (\w+)\)", out)
    assert sorted(int(i) for i, _ in ran_on) == [0, 1, 2, 3], out[-3000:]
    assert len({node for _, node in ran_on}) == 2, ran_on
    assert out.count("murmur: completed: ") == 4  # each job's last line reaches the driver

    assert basic.returncode == 0, basic_err[-3000:]
    on_ray, here = metrics_of(tmp_path / "ray"), metrics_of(tmp_path / "basic")
    assert len(here) == 4 and all(here.values())
    assert on_ray == here


def test_submitit_local_runs_a_sweep(tmp_path):
    """submitit's local executor: the SLURM launcher's path (pickled jobs, one process each,
    results read back from the submitit folder) without a scheduler."""
    pytest.importorskip("submitit")
    p = murmur("hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", *JOBS[:4], "seed=0,1",
               "sim.progress=false", f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    assert_completed(tmp_path / "sweep", 2)
