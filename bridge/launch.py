"""Try the bridge on one machine: a SuperLink and K SuperNodes on loopback, one `flwr run`.

    python -m bridge.launch --nodes 3 -- protocol=gossip topology=ring rounds=2

starts `flower-superlink` on 127.0.0.1:18000 and K `flower-supernode`s with partition ids
0..K-1, runs this checkout's Flower App with the scenario overrides after `--` (`nodes=K`
unless given), waits for the run to finish, prints its per-round metrics and stops every
process it started, by PID. Each started process leads its own process group, so what it
spawned (the SuperExec and app processes) is stopped with it. Exit code 0: the run completed.

All ports, flags and environment of a local fleet live in this module. From Python:

    with LocalFleet(3, workdir) as fleet:
        outcome = fleet.run(["protocol=gossip", "topology=ring", "rounds=2"])
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import tomli_w

HOST = "127.0.0.1"            # loopback only
SUPERLINK_PORT = 18000        # the SuperLink serves every API (Fleet, Control, health) on one port
SUPERNODE_PORT = 19090        # SuperNode i's own runtime API: SUPERNODE_PORT + i
CONNECTION = "local"          # the connection's name in FLWR_HOME/config.toml
APP_DIR = Path(__file__).resolve().parents[1]  # the checkout: pyproject.toml's [tool.flwr.app]
BIN = Path(sys.executable).parent              # the flwr commands of this environment
ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",  # the environment already has them
}


def free_port() -> int:
    """A loopback port nobody listens on now (for tests that must not collide)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass
class Outcome:
    run_id: int
    status: str         # "finished:completed" when all went well
    out_dir: Path       # the ServerApp's models.npz and summary.json
    wall_s: float
    log: str            # the run's log as `flwr log` shows it

    @property
    def completed(self) -> bool:
        return self.status == "finished:completed"

    def summary(self) -> dict:
        return json.loads((self.out_dir / "summary.json").read_text())


class LocalFleet:
    """A SuperLink and `nodes` SuperNodes on loopback; a context manager that stops them all."""

    def __init__(self, nodes: int, workdir: str | Path, *, port: int = SUPERLINK_PORT,
                 node_port: int = SUPERNODE_PORT, start_timeout: float = 60.0):
        self.nodes, self.port, self.node_port = nodes, port, node_port
        self.workdir = Path(workdir)
        self.start_timeout = start_timeout
        self.procs: dict[str, subprocess.Popen] = {}
        # BIN first on PATH: the SuperLink and SuperNodes start flower-superexec by name
        self.env = {**os.environ, **ENV, "FLWR_HOME": str(self.workdir / "flwr-home"),
                    "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        self._runs = 0

    # commands
    def superlink_cmd(self) -> list[str]:
        return [str(BIN / "flower-superlink"), "--insecure", "--host", HOST, "--port", str(self.port),
                "--database", ":flwr-in-memory:", "--disable-runtime-dependency-installation"]

    def supernode_cmd(self, i: int) -> list[str]:
        return [str(BIN / "flower-supernode"), "--insecure", "--superlink", f"{HOST}:{self.port}",
                "--host", HOST, "--port", str(self.node_port + i), "--max-wait-time", "60",
                "--node-config", f"partition-id={i} num-partitions={self.nodes}"]

    def flwr(self, *args: str, timeout: float = 60.0) -> str:
        done = subprocess.run([str(BIN / "flwr"), *args], env=self.env, cwd=APP_DIR, capture_output=True,
                              text=True, timeout=timeout)
        if done.returncode:
            raise RuntimeError(f"flwr {' '.join(args[:2])} failed ({done.returncode}): "
                               f"{(done.stderr or done.stdout).strip()[-2000:]}")
        return done.stdout

    # lifecycle
    def __enter__(self) -> "LocalFleet":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        home = self.workdir / "flwr-home"
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(tomli_w.dumps({"superlink": {
            "default": CONNECTION, CONNECTION: {"address": f"{HOST}:{self.port}", "insecure": True}}}))
        self._spawn("superlink", self.superlink_cmd())
        self._wait_healthy()
        for i in range(self.nodes):
            self._spawn(f"supernode-{i}", self.supernode_cmd(i))

    def _spawn(self, name: str, cmd: list[str]) -> None:
        with open(self.workdir / "logs" / f"{name}.log", "wb") as out:
            self.procs[name] = subprocess.Popen(cmd, env=self.env, cwd=self.workdir, stdout=out,
                                                stderr=subprocess.STDOUT, start_new_session=True)

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.procs["superlink"].poll() is not None:
                raise RuntimeError(f"flower-superlink exited; see {self.workdir / 'logs' / 'superlink.log'}")
            try:
                with urllib.request.urlopen(f"http://{HOST}:{self.port}/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(f"flower-superlink not healthy within {self.start_timeout:g} s")

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs.values()]

    def stop(self, grace: float = 10.0) -> None:
        """SuperNodes first, then the SuperLink; each with its process group (by its PID)."""
        order = [n for n in self.procs if n != "superlink"] + [n for n in self.procs if n == "superlink"]
        for name in order:
            _signal_group(self.procs[name], signal.SIGTERM)
        for name in order:
            p = self.procs[name]
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                _signal_group(p, signal.SIGKILL)
                p.wait(grace)
            _signal_group(p, signal.SIGKILL)  # whatever it spawned and left behind
            deadline = time.monotonic() + grace
            while _signal_group(p, 0) and time.monotonic() < deadline:  # until the group is gone
                time.sleep(0.1)
        self.procs.clear()

    # runs
    def run(self, overrides: list[str], *, timeout: float = 300.0, round_timeout: float = 60.0,
            out_dir: str | Path | None = None) -> Outcome:
        """Run the app once with these scenario overrides; waits for it to finish."""
        if not any(o.startswith("nodes=") for o in overrides):
            overrides = [f"nodes={self.nodes}", *overrides]
        self._runs += 1
        out = Path(out_dir) if out_dir else self.workdir / f"run-{self._runs}"
        run_config = self.workdir / f"run-{self._runs}.toml"
        run_config.write_text(tomli_w.dumps({"overrides": shlex.join(overrides), "out-dir": str(out),
                                             "round-timeout": float(round_timeout),
                                             "connect-timeout": float(self.start_timeout)}))
        t0 = time.perf_counter()
        started = json.loads(self.flwr("run", str(APP_DIR), CONNECTION, "--run-config", str(run_config),
                                       "--format", "json"))
        if not started.get("success", True) or "run-id" not in started:
            raise RuntimeError(f"flwr run did not start a run: {started}")
        run_id = int(started["run-id"])
        status = ""
        while not status.startswith("finished") and time.perf_counter() - t0 < timeout:
            time.sleep(0.5)
            status = self._status(run_id)
        wall = time.perf_counter() - t0
        if not status.startswith("finished"):
            self.flwr("stop", str(run_id), CONNECTION)
            status = f"timed out after {timeout:g} s ({status})"
        return Outcome(run_id, status, out, wall, self.flwr("log", str(run_id), CONNECTION, "--show"))

    def _status(self, run_id: int) -> str:
        runs = json.loads(self.flwr("list", CONNECTION, "--run-id", str(run_id), "--format", "json"))
        return str(runs["runs"][0]["status"])


def _signal_group(p: subprocess.Popen, sig: int) -> bool:
    """Signal the process group this launcher created for p; False when it has no process left."""
    try:
        os.killpg(p.pid, sig)
        return True
    except ProcessLookupError:
        return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bridge.launch",
                                 description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                 epilog="example: python -m bridge.launch --nodes 3 -- "
                                        "protocol=gossip topology=ring rounds=2")
    ap.add_argument("--nodes", type=int, default=3, help="SuperNodes to start (partition ids 0..K-1)")
    ap.add_argument("--port", type=int, default=SUPERLINK_PORT, help="the SuperLink's port")
    ap.add_argument("--node-port", type=int, default=SUPERNODE_PORT, help="SuperNode i's runtime port is this + i")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds the run may take")
    ap.add_argument("--round-timeout", type=float, default=60.0, help="seconds to wait for replies per round")
    ap.add_argument("--workdir", help="logs, FLWR_HOME and outputs (default: a temporary directory)")
    ap.add_argument("overrides", nargs="*", help="scenario overrides, as for `murmur` (after --)")
    args = ap.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="murmuration-flower-"))
    print(f"launch: {args.nodes} SuperNodes on {HOST}:{args.port}; logs and outputs in {workdir}", flush=True)
    with LocalFleet(args.nodes, workdir, port=args.port, node_port=args.node_port) as fleet:
        outcome = fleet.run(args.overrides, timeout=args.timeout, round_timeout=args.round_timeout)
    print(outcome.log)
    if (outcome.out_dir / "summary.json").exists():
        for row in outcome.summary()["metrics"]:
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    print(f"launch: run {outcome.run_id} {outcome.status} in {outcome.wall_s:.1f} s; "
          f"final models in {outcome.out_dir / 'models.npz'}")
    return 0 if outcome.completed else 1


if __name__ == "__main__":
    sys.exit(main())
