"""Try the bridge on one machine: a SuperLink and K SuperNodes on loopback, one `flwr run`.

    python -m bridge.launch --nodes 3 -- protocol=gossip topology=ring rounds=2
    python -m bridge.launch --nodes 3 --secure -- protocol=gossip topology=ring rounds=2

checks the scenario (the overrides after `--`, `nodes=K` unless given) and the ports, then
starts `flower-superlink` on 127.0.0.1:18000 and K `flower-supernode`s with partition ids
0..K-1, waits until all K are online, runs this checkout's Flower App, waits for the run to
finish, prints its per-round metrics and stops every process it started, by PID: each started
process leads its own process group, and stopping it signals that group and the groups of all
it spawned (Flower starts the SuperLink's SuperExec, and so the ServerApp, in a session of its
own). `--secure` deploys as the README's "Deploy to a fleet" does: a CA and a
certificate made with openssl, TLS, one ssh-keygen key per SuperNode registered with
`flwr supernode register`, and SuperNode authentication.

Exit codes: 0 the run completed; 1 the fleet or the run failed; 2 a user error (one line on
stderr, nothing started); 130 SIGINT, 143 SIGTERM (everything started is stopped first).

All ports, flags and environment of a local fleet live in this module. From Python:

    with LocalFleet(3, workdir) as fleet:
        outcome = fleet.run(["protocol=gossip", "topology=ring", "rounds=2"])
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import tomli_w

HOST = "127.0.0.1"            # every process listens on loopback only
NAME = "localhost"            # the host name SuperNodes use with --secure (the certificate's DNS name)
SUPERLINK_PORT = 18000        # the SuperLink serves every API (Fleet, Control, Runtime, health) on one port
SUPERNODE_PORT = 19090        # SuperNode i's own runtime API: SUPERNODE_PORT + i
CONNECTION = "local"          # the connection's name in FLWR_HOME/config.toml
APP_DIR = Path(__file__).resolve().parents[1]  # the checkout: pyproject.toml's [tool.flwr.app]
BIN = Path(sys.executable).parent              # the flwr commands of this environment
PROG = "python -m bridge.launch"
ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",  # the environment already has them
}


class FleetError(RuntimeError):
    """The fleet did not start, a process of it died, or a `flwr` command failed (one line)."""


class LaunchConfigError(ValueError):
    """A launcher setting that cannot work (a busy port, a missing tool): a user error."""


class Stopped(BaseException):
    """SIGINT or SIGTERM reached the launcher (main() turns them into this exception)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# --secure: the README's recipe, run in the fleet's directory (relative paths as shown there)
CA_SUBJECT = "/CN=murmuration fleet CA"


def certificate_commands(host: str) -> list[list[str]]:
    """openssl commands making certs/ca.{key,crt} and certs/server.{key,pem} for `host`. The
    names are in certs/server.ext (`server_extensions`), written before the last command."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    return [
        ["openssl", "req", "-x509", *ec, "-days", "365", "-subj", CA_SUBJECT,
         "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-keyout", "certs/ca.key", "-out", "certs/ca.crt"],
        ["openssl", "req", *ec, "-subj", f"/CN={host}", "-keyout", "certs/server.key", "-out", "certs/server.csr"],
        ["openssl", "x509", "-req", "-in", "certs/server.csr", "-CA", "certs/ca.crt", "-CAkey", "certs/ca.key",
         "-CAcreateserial", "-days", "365", "-extfile", "certs/server.ext", "-out", "certs/server.pem"],
    ]


def server_extensions(host: str) -> str:
    """The certificate's names: `host` for SuperNodes, and 127.0.0.1, where the SuperLink's own
    SuperExec connects (without it every run stays `pending`)."""
    return f"subjectAltName=DNS:{host},IP:127.0.0.1\n"


def key_command(name: str) -> list[str]:
    """ssh-keygen making a SuperNode's key pair keys/<name> and keys/<name>.pub."""
    return ["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f", f"keys/{name}"]


def free_port() -> int:
    """A loopback port nobody listens on now (for tests that must not collide)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def check_port(port: int, what: str, flag: str) -> None:
    """Refuse a port something already listens on, naming it and the flag that moves it."""
    if not 0 < port < 65536:
        raise LaunchConfigError(f"{what} is {port}, outside 1..65535; choose another with {flag}")
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # what a server does: TIME_WAIT is free
        try:
            s.bind((HOST, port))
        except OSError as err:
            raise LaunchConfigError(f"port {port} on {HOST}, {what}, is already in use ({err.strerror}); "
                                    f"choose another with {flag}") from None


def check_ports(port: int, node_port: int, nodes: int) -> None:
    """The SuperLink's port and the SuperNodes' node_port + i: valid, distinct and free."""
    check_port(port, "the SuperLink's port", "--port")
    for i in range(nodes):
        if node_port + i == port:
            raise LaunchConfigError(f"SuperNode {i}'s port {port} (--node-port + {i}) is the SuperLink's "
                                    "port; choose another --node-port")
        check_port(node_port + i, f"SuperNode {i}'s port (--node-port + {i})", "--node-port")


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
    """A SuperLink and `nodes` SuperNodes on loopback; a context manager that stops them all.

    secure=True: TLS with a fresh CA, and SuperNode authentication with registered keys (the
    README's deployment, on loopback); certs/ and keys/ are made in `workdir`."""

    def __init__(self, nodes: int, workdir: str | Path, *, port: int = SUPERLINK_PORT,
                 node_port: int = SUPERNODE_PORT, start_timeout: float = 60.0, secure: bool = False):
        self.nodes, self.port, self.node_port, self.secure = nodes, port, node_port, secure
        self.workdir = Path(workdir).resolve()
        self.start_timeout = start_timeout
        self.procs: dict[str, subprocess.Popen] = {}
        # BIN first on PATH: the SuperLink and SuperNodes start flower-superexec by name
        self.env = {**os.environ, **ENV, "FLWR_HOME": str(self.workdir / "flwr-home"),
                    "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        self._runs = 0

    # commands
    def superlink_cmd(self) -> list[str]:
        tls = (["--ssl-ca-certfile", "certs/ca.crt", "--ssl-certfile", "certs/server.pem",
                "--ssl-keyfile", "certs/server.key", "--enable-supernode-auth"] if self.secure else ["--insecure"])
        return [str(BIN / "flower-superlink"), *tls, "--disable-runtime-dependency-installation",
                "--host", HOST, "--port", str(self.port), "--database", ":flwr-in-memory:"]

    def supernode_cmd(self, i: int, key: str | None = None) -> list[str]:
        """SuperNode i's command; `key` names its key pair in keys/ (--secure; default node-<i>)."""
        if self.secure:
            link = ["--superlink", f"{NAME}:{self.port}", "--root-certificates", "certs/ca.crt",
                    "--auth-supernode-private-key", f"keys/{key or f'node-{i}'}"]
        else:
            link = ["--insecure", "--superlink", f"{HOST}:{self.port}"]
        return [str(BIN / "flower-supernode"), *link, "--port", str(self.node_port + i),
                "--node-config", f"partition-id={i} num-partitions={self.nodes}"]

    def connection(self) -> dict:
        """The `flwr` connection, as config.toml's [superlink.<name>] table."""
        if self.secure:  # as the operator on the server: the certificate names 127.0.0.1
            return {"address": f"{HOST}:{self.port}", "root-certificates": str(self.workdir / "certs" / "ca.crt")}
        return {"address": f"{HOST}:{self.port}", "insecure": True}

    def flwr(self, *args: str, timeout: float = 60.0) -> str:
        """A `flwr` command on this fleet's connection; FleetError when it fails."""
        done = _run([str(BIN / "flwr"), *args], cwd=APP_DIR, env=self.env, timeout=timeout)
        if done.returncode:
            raise FleetError(f"flwr {' '.join(args[:2])} failed (exit {done.returncode}): "
                             f"{_one_line(done.stderr or done.stdout)}")
        return done.stdout

    def flwr_json(self, *args: str) -> dict:
        """A `flwr ... --format json` command's answer; FleetError when it says it failed (which
        it does with exit code 0)."""
        text = self.flwr(*args, "--format", "json")
        try:
            answer = json.loads(text)
        except ValueError:
            raise FleetError(f"flwr {' '.join(args[:2])} answered no JSON: {_one_line(text)}") from None
        if not answer.get("success", True):
            raise FleetError(f"flwr {' '.join(args[:2])} failed: {_one_line(answer.get('error-message', ''))}")
        return answer

    # lifecycle
    def __enter__(self) -> "LocalFleet":
        self._exit = contextlib.ExitStack()
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            self._exit.enter_context(stopping_on(signal.SIGTERM))  # a SIGTERM unwinds the `with`: all stopped
        try:
            self.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        with self._exit:
            self.stop()

    def start(self) -> None:
        """Check the ports; start the SuperLink and the SuperNodes; return once all are online."""
        check_ports(self.port, self.node_port, self.nodes)
        home = self.workdir / "flwr-home"
        for d in (self.workdir / "logs", home):
            d.mkdir(parents=True, exist_ok=True)
        if self.secure:
            self._make_credentials()
        (home / "config.toml").write_text(tomli_w.dumps(
            {"superlink": {"default": CONNECTION, CONNECTION: self.connection()}}))
        self._spawn("superlink", self.superlink_cmd())
        self._wait_healthy()
        if self.secure:
            for i in range(self.nodes):
                self.flwr_json("supernode", "register", str(self.workdir / "keys" / f"node-{i}.pub"), CONNECTION)
        for i in range(self.nodes):
            self._spawn(f"supernode-{i}", self.supernode_cmd(i))
        self._wait_online()

    def _make_credentials(self) -> None:
        for tool in ("openssl", "ssh-keygen"):
            if not shutil.which(tool):
                raise LaunchConfigError(f"--secure needs the {tool} command on PATH")
        for d in ("certs", "keys"):
            (self.workdir / d).mkdir(exist_ok=True)
        (self.workdir / "certs" / "server.ext").write_text(server_extensions(NAME))
        steps = certificate_commands(NAME) + [key_command(f"node-{i}") for i in range(self.nodes)]
        for cmd in steps:
            done = _run(cmd, cwd=self.workdir, env=self.env, timeout=60)
            if done.returncode:
                raise FleetError(f"{shlex.join(cmd[:2])} failed (exit {done.returncode}): "
                                 f"{_one_line(done.stderr or done.stdout)}")

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        with _signals_held(), open(self.workdir / "logs" / f"{name}.log", "wb") as out:
            # its own session: a terminal's Ctrl-C reaches the launcher alone, which stops the group
            self.procs[name] = subprocess.Popen(cmd, env=self.env, cwd=self.workdir, stdout=out,
                                                stderr=subprocess.STDOUT, start_new_session=True)
        return self.procs[name]

    def _ssl_context(self) -> ssl.SSLContext | None:
        return ssl.create_default_context(cafile=str(self.workdir / "certs" / "ca.crt")) if self.secure else None

    def _wait_healthy(self) -> None:
        url = f"{'https' if self.secure else 'http'}://{HOST}:{self.port}/health"
        context = self._ssl_context()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            self.check_alive(["superlink"])
            try:
                with urllib.request.urlopen(url, timeout=2, context=context):
                    return
            except OSError:
                time.sleep(0.3)
        raise FleetError(f"flower-superlink not healthy within {self.start_timeout:g} s; "
                         f"see {self.workdir / 'logs' / 'superlink.log'}")

    def _wait_online(self) -> None:
        """Until the SuperLink lists every SuperNode online; FleetError naming one that died or
        that did not connect in time."""
        deadline = time.monotonic() + self.start_timeout
        names = [f"supernode-{i}" for i in range(self.nodes)]
        while True:
            self.check_alive()
            try:
                nodes = self.flwr_json("supernode", "list", CONNECTION)["nodes"]
            except FleetError:
                self.check_alive()  # a process that died meanwhile is the better message
                raise
            online = {str(n["node-id"]) for n in nodes if n.get("status") == "online"}
            if len(online) >= self.nodes:
                return
            if time.monotonic() >= deadline:
                missing = [n for n in names if self._node_id(n) not in online]
                raise FleetError(f"{len(online)} of {self.nodes} SuperNodes online after {self.start_timeout:g} s; "
                                 f"not online: {', '.join(missing) or '?'}; see their logs in {self.workdir / 'logs'}")
            time.sleep(1.0)

    def _node_id(self, name: str) -> str | None:
        """The node id a SuperNode logged once it connected (None before)."""
        found = re.search(r"SuperNode ID: (\d+)", (self.workdir / "logs" / f"{name}.log").read_text(errors="replace"))
        return found.group(1) if found else None

    def check_alive(self, names: list[str] | None = None) -> None:
        """FleetError naming the first of these started processes (default: all) that exited."""
        for name in names or list(self.procs):
            code = self.procs[name].poll()
            if code is not None:
                log = self.workdir / "logs" / f"{name}.log"
                raise FleetError(f"{name} exited (code {code}): {_last_error(log)}; see {log}")

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs.values()]

    def stop(self, grace: float = 10.0) -> None:
        """SuperNodes first, then the SuperLink; each with its process group (by its PID). A
        signal that arrives meanwhile waits until all are stopped."""
        with _signals_held():
            self._stop(grace)

    def _stop(self, grace: float) -> None:
        nodes = [p for n, p in self.procs.items() if n != "superlink"]
        for batch in (nodes, [self.procs["superlink"]] if "superlink" in self.procs else []):
            # each process's own group, and the groups of what it spawned: the SuperLink starts its
            # SuperExec (and so the ServerApp) in a session of its own
            groups = {p.pid for p in batch} | process_groups_below([p.pid for p in batch])
            groups.discard(os.getpgrp())
            for g in groups:
                _signal_group(g, signal.SIGTERM)
            deadline = time.monotonic() + grace
            for p in batch:
                try:
                    p.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
            _wait_gone(groups, deadline)
            for g in groups:  # what is left after the grace period
                _signal_group(g, signal.SIGKILL)
            for p in batch:
                p.wait(grace)
            _wait_gone(groups, time.monotonic() + grace)
        self.procs.clear()

    # runs
    def run(self, overrides: list[str], *, timeout: float = 300.0, round_timeout: float = 60.0,
            out_dir: str | Path | None = None, started=None) -> Outcome:
        """Run the app once with these scenario overrides; waits for it to finish. `started`,
        when given, is called with the run id once the SuperLink accepted the run."""
        if not any(o.startswith("nodes=") for o in overrides):
            overrides = [f"nodes={self.nodes}", *overrides]
        self._runs += 1
        out = Path(out_dir).resolve() if out_dir else self.workdir / f"run-{self._runs}"
        run_config = self.workdir / f"run-{self._runs}.toml"
        run_config.write_text(tomli_w.dumps({"overrides": shlex.join(overrides), "out-dir": str(out),
                                             "round-timeout": float(round_timeout),
                                             "connect-timeout": float(self.start_timeout)}))
        t0 = time.perf_counter()
        started_run = self.flwr_json("run", str(APP_DIR), CONNECTION, "--run-config", str(run_config))
        if "run-id" not in started_run:
            raise FleetError(f"flwr run did not start a run: {started_run}")
        run_id = int(started_run["run-id"])
        if started:
            started(run_id)
        status = ""
        while not status.startswith("finished") and time.perf_counter() - t0 < timeout:
            time.sleep(0.5)
            self.check_alive(["superlink"])
            status = self._status(run_id)
        wall = time.perf_counter() - t0
        if not status.startswith("finished"):
            with contextlib.suppress(FleetError):  # the SuperLink stops with the fleet anyway
                self.flwr("stop", str(run_id), CONNECTION)
            status = f"timed out after {timeout:g} s ({status})"
        return Outcome(run_id, status, out, wall, self.flwr("log", str(run_id), CONNECTION, "--show"))

    def _status(self, run_id: int) -> str:
        return str(self.flwr_json("list", CONNECTION, "--run-id", str(run_id))["runs"][0]["status"])


def _run(cmd: list[str], *, cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
    """A short command, its output captured; FleetError when it outlives `timeout` (then killed)."""
    try:
        return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise FleetError(f"{shlex.join(cmd[:3])} did not finish within {timeout:g} s") from None


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip() and set(ln.strip()) - set("─│╭╮╰╯ ")]
    return " | ".join(lines)[-400:] or "no output"


def _last_error(log: Path) -> str:
    """The log's last line that looks like an error (else its last line), without colour codes."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in log.read_text(errors="replace").splitlines()]
    lines = [ln for ln in lines if ln]
    errors = [ln for ln in lines if "ERROR" in ln or "Error" in ln or "Failed" in ln]
    return (errors or lines or ["its log is empty"])[-1][:300]


def _signal_group(pgid: int, sig: int) -> bool:
    """Signal a process group (by its leader's PID); False when it has no process left."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False


def _wait_gone(groups: set[int], deadline: float) -> None:
    while any(_signal_group(g, 0) for g in groups) and time.monotonic() < deadline:
        time.sleep(0.1)


def process_table() -> list[tuple[int, int, int]]:
    """(pid, parent pid, process group) of every process: from /proc, else from `ps`."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        out = subprocess.run(["ps", "-e", "-o", "pid=,ppid=,pgid="], capture_output=True, text=True, timeout=30)
        return [tuple(map(int, line.split())) for line in out.stdout.splitlines() if line.strip()]
    rows = []
    for d in proc.iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:  # gone meanwhile
                continue
            fields = stat[stat.rindex(")") + 2:].split()  # after "pid (name) ": state ppid pgrp ...
            rows.append((int(d.name), int(fields[1]), int(fields[2])))
    return rows


def process_groups_below(pids: list[int]) -> set[int]:
    """The process groups of every live descendant of these processes."""
    children: dict[int, list[tuple[int, int]]] = {}
    for pid, ppid, pgid in process_table():
        children.setdefault(ppid, []).append((pid, pgid))
    groups, todo = set(), list(pids)
    while todo:
        for pid, pgid in children.get(todo.pop(), []):
            groups.add(pgid)
            todo.append(pid)
    return groups


# Signals. Within `stopping_on(...)` the first of those signals raises Stopped, so that
# `with LocalFleet` stops everything; later ones wait for that cleanup, and one that arrives while
# a process is being started waits until the process is recorded.
_signal_got: int | None = None
_signal_holding = False


def _on_signal(signum: int, _frame) -> None:
    global _signal_got
    if _signal_got is not None:  # already stopping: let the cleanup finish
        return
    _signal_got = signum
    if not _signal_holding:
        raise Stopped(signum)


@contextlib.contextmanager
def stopping_on(*signums: int):
    """Within: these signals raise Stopped (once); the previous handlers come back after."""
    global _signal_got
    previous = {s: signal.signal(s, _on_signal) for s in signums}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _signal_got = None


@contextlib.contextmanager
def _signals_held():
    global _signal_holding
    _signal_holding = True
    try:
        yield
    finally:
        _signal_holding = False
    if _signal_got is not None:
        raise Stopped(_signal_got)


def check_scenario(overrides: list[str], nodes: int) -> list[str]:
    """The overrides the fleet runs (nodes=K added), checked as the ServerApp will check them:
    resolved and assembled with the simulator's own code, refused where the bridge would run
    them differently. Raises one of user_errors()."""
    from bridge.scenario import load
    from bridge.server import check_bridged
    from scenarios import ConfigError

    if not any(o.startswith("nodes=") for o in overrides):
        overrides = [f"nodes={nodes}", *overrides]
    sc = load(shlex.join(overrides))
    check_bridged(sc)
    if sc.cfg.nodes != nodes:
        raise ConfigError(f"the scenario has nodes={sc.cfg.nodes} but --nodes is {nodes}: the launcher "
                          "starts one SuperNode per scenario node; give the same number")
    return overrides


def user_errors() -> tuple[type[Exception], ...]:
    from clients.datasets import DataError
    from clients.partition import PartitionError
    from protocols import ProtocolError
    from scenarios import ConfigError
    from topologies import TopologyError

    return (ConfigError, DataError, PartitionError, ProtocolError, TopologyError, LaunchConfigError)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        raise LaunchConfigError(f"{message} (see --help)")


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} is not positive")
        return value
    return parse


def main(argv: list[str] | None = None) -> int:
    try:
        with stopping_on(signal.SIGINT, signal.SIGTERM):
            return _main(argv)
    except Stopped as stop:
        print(f"launch: stopped by {stop}; every process it started is stopped", file=sys.stderr, flush=True)
        return 128 + stop.signum


def _main(argv: list[str] | None) -> int:
    ap = _Parser(prog=PROG, description=__doc__.split("\n\n")[0],
                 formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                 epilog="example: python -m bridge.launch --nodes 3 -- protocol=gossip topology=ring rounds=2")
    ap.add_argument("--nodes", type=_positive(int), default=3, help="SuperNodes to start (partition ids 0..K-1)")
    ap.add_argument("--port", type=int, default=SUPERLINK_PORT, help="the SuperLink's port")
    ap.add_argument("--node-port", type=int, default=SUPERNODE_PORT, help="SuperNode i's runtime port is this + i")
    ap.add_argument("--secure", action="store_true",
                    help="TLS and SuperNode authentication, as the README's deployment (needs openssl, ssh-keygen)")
    ap.add_argument("--timeout", type=_positive(float), default=600.0, help="seconds the run may take")
    ap.add_argument("--round-timeout", type=_positive(float), default=60.0,
                    help="seconds to wait for replies per round")
    ap.add_argument("--workdir", help="logs, FLWR_HOME, certificates and outputs; None: a new temporary directory")
    ap.add_argument("overrides", nargs="*", help="scenario overrides, as for `murmur` (after --)")
    errors = user_errors()
    try:
        args = ap.parse_args(argv)
        overrides = check_scenario(args.overrides, args.nodes)
        check_ports(args.port, args.node_port, args.nodes)
        workdir = Path(args.workdir or tempfile.mkdtemp(prefix="murmuration-flower-")).resolve()
        fleet = LocalFleet(args.nodes, workdir, port=args.port, node_port=args.node_port, secure=args.secure)
    except errors as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    nodes = f"{args.nodes} SuperNode{'s' if args.nodes > 1 else ''}"
    print(f"launch: {nodes} on {HOST}:{args.port}{' (TLS, SuperNode authentication)' if args.secure else ''}; "
          f"logs and outputs in {workdir}", flush=True)
    died = None
    try:
        with fleet:
            print(f"launch: fleet up: SuperLink and {nodes} online", flush=True)
            outcome = fleet.run(overrides, timeout=args.timeout, round_timeout=args.round_timeout,
                                started=lambda run_id: print(f"launch: run {run_id} started", flush=True))
            try:
                fleet.check_alive()  # a SuperNode that died during the run: not a success
            except FleetError as err:
                died = err
    except errors as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except FleetError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    print(outcome.log)
    if (outcome.out_dir / "summary.json").exists():
        for row in outcome.summary()["metrics"]:
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    print(f"launch: run {outcome.run_id} {outcome.status} in {outcome.wall_s:.1f} s; "
          f"final models in {outcome.out_dir / 'models.npz'}")
    if not outcome.completed or died:
        print(f"{PROG}: error: " + (f"run {outcome.run_id} {outcome.status}; its log is above" if not outcome.completed
                                    else f"during the run {died}"), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
