"""The loopback launcher (`python -m bridge.launch`) and the README's deployment guide: user
errors before anything starts, a fleet that did not fully start, SIGTERM, and the guide's
commands being the ones `--secure` runs (tests/test_flower.py deploys them for real)."""
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import pytest

pytest.importorskip("flwr")  # the flower extra: pip install -e ".[flower]"

from bridge import launch
from bridge.launch import LocalFleet, free_port, main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["protocol=gossip", "topology=ring", "rounds=1", "train.local_epochs=null", "train.local_steps=1"]


@pytest.fixture
def no_process(monkeypatch):
    """Fail the test if the launcher starts any process."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a process was started: {args[0] if args else kwargs}")

    monkeypatch.setattr(launch.subprocess, "Popen", refuse)


def one_error_line(capsys, started: bool = False) -> str:
    """The one line on stderr; stdout is empty unless the launcher got as far as starting."""
    out, err = capsys.readouterr()
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("python -m bridge.launch: error: ") and "Traceback" not in err
    assert (out != "") == started, out
    return err


@pytest.mark.parametrize("argv, says", [
    (["--", "protocol=nope"], "unknown protocol 'nope'"),
    (["--", "rounds=-1"], "rounds must be an integer from 1"),
    (["--", "protocol=gossip", "topology=ring", "protocol.mode=async"], "synchronous rounds"),  # the bridge's own
    (["--nodes", "3", "--", "nodes=5"], "nodes=5 but --nodes is 3"),
    (["--nodes", "0"], "--nodes: '0' is not positive"),
    (["--port", "http"], "--port: invalid int value: 'http'"),
    (["--port", "70000"], "the SuperLink's port is 70000, outside 1..65535; choose another with --port"),
])
def test_a_user_error_is_one_line_and_exit_2_before_any_process_starts(no_process, capsys, tmp_path, argv, says):
    assert main(["--workdir", str(tmp_path), *argv]) == 2
    assert says in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []  # nothing written either


@pytest.mark.parametrize("which, flag", [("superlink", "--port"), ("supernode", "--node-port")])
def test_a_busy_port_is_one_line_naming_the_port_and_its_flag(no_process, capsys, tmp_path, which, flag):
    port, node_port = free_port(), free_port()
    busy = port if which == "superlink" else node_port + 1  # SuperNode 1's port
    with socket.socket() as s:
        s.bind((launch.HOST, busy))
        s.listen()
        assert main(["--nodes", "2", "--port", str(port), "--node-port", str(node_port),
                     "--workdir", str(tmp_path), "--", *TINY]) == 2
    err = one_error_line(capsys)
    assert f"port {busy} on 127.0.0.1" in err and "in use" in err and err.rstrip().endswith(f"choose another with {flag}")


# a stand-in SuperLink that answers /health (the launcher's first check), nothing else
FAKE_SUPERLINK = """
import http.server, sys
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
"""


def test_a_supernode_that_dies_at_start_is_an_error_naming_it(monkeypatch, capsys, tmp_path):
    def fake_supernode(self, i, key=None):
        code = ("import sys; print('ERROR: no route to the SuperLink'); sys.exit(3)" if i == 1
                else "import time; time.sleep(60)")
        return [sys.executable, "-c", code]

    started = []
    spawn = LocalFleet._spawn
    monkeypatch.setattr(LocalFleet, "_spawn", lambda self, name, cmd: started.append(spawn(self, name, cmd)) or started[-1])
    monkeypatch.setattr(LocalFleet, "superlink_cmd", lambda self: [sys.executable, "-c", FAKE_SUPERLINK, str(self.port)])
    monkeypatch.setattr(LocalFleet, "supernode_cmd", fake_supernode)
    assert main(["--nodes", "3", "--port", str(free_port()), "--node-port", str(free_port()),
                 "--workdir", str(tmp_path), "--", *TINY]) == 1
    err = one_error_line(capsys, started=True)
    assert "supernode-1 exited (code 3): ERROR: no route to the SuperLink; see " in err
    assert len(started) == 4 and all(p.poll() is not None for p in started)  # all stopped


def descendants(pid: int) -> dict[int, str]:
    """Every live process below pid (children, their children, ...) and its command line."""
    children: dict[int, list[int]] = {}
    for p, parent, _ in launch.process_table():
        children.setdefault(parent, []).append(p)
    found, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.add(c)
            todo.append(c)
    return {p: ps(p, "args") for p in found}


def ps(pid: int, field: str) -> str:
    return subprocess.run(["ps", "-o", f"{field}=", "-p", str(pid)], capture_output=True, text=True,
                          timeout=30).stdout.strip()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return ps(pid, "stat")[:1] not in ("Z", "")  # a zombie has exited


def test_sigterm_stops_a_running_launcher_and_everything_it_started(tmp_path):
    """A real launcher (1 SuperNode), SIGTERM once its ServerApp runs: exit 143, one line, no
    traceback, and no process it started (SuperLink, SuperNode, their SuperExecs, which Flower
    starts in sessions of their own, the ServerApp) left."""
    cmd = [sys.executable, "-m", "bridge.launch", "--nodes", "1", "--port", str(free_port()),
           "--node-port", str(free_port()), "--workdir", str(tmp_path), "--",
           *[o for o in TINY if not o.startswith("rounds=")], "rounds=50"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe flowing
    below: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 150
        while not any("flwr-serverapp" in args for args in below.values()):
            assert proc.poll() is None and time.monotonic() < deadline, "no ServerApp started"
            time.sleep(0.5)
            below = descendants(proc.pid)
        assert sum("flower-superexec" in args for args in below.values()) == 2, below
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
        err = proc.stderr.read()
    finally:
        for pid in [proc.pid, *below]:  # whatever is left (a failed test), by PID and process group
            for kill in (os.killpg, os.kill):
                try:
                    if alive(pid):
                        kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        proc.wait(timeout=30)
    assert rc == 143, err
    assert err == "launch: stopped by SIGTERM; every process it started is stopped\n"
    assert {pid: args for pid, args in below.items() if alive(pid)} == {}


# --- the README's guide is what `--secure` runs -------------------------------------------------

def guide() -> tuple[list[list[str]], dict]:
    """The commands (argv lists, in order) and the TOML connection of README's "Deploy to a fleet"."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Deploy to a fleet"):]
    section = section[:section.index("\n## ", 1)]
    commands, toml = [], None
    for lang, body in re.findall(r"```(\w+)\n(.*?)```", section, re.S):
        if lang == "toml":
            toml = tomllib.loads(body)
            commands.append(["<toml>"])
        elif lang == "bash":
            for line in body.replace("\\\n", " ").splitlines():
                argv = shlex.split(line, comments=True)
                if argv:
                    commands.append(argv)
    return commands, toml


def flags(argv: list[str]) -> set[str]:
    return {a for a in argv if a.startswith("--")}


def test_the_readme_guide_is_what_the_secure_launcher_runs():
    commands, toml = guide()
    fleet = LocalFleet(3, "unused", secure=True)
    host = "server.example.org"

    def index(first: list[str]) -> int:
        found = [i for i, c in enumerate(commands) if c[:len(first)] == first]
        assert found, f"README shows no {' '.join(first)} command"
        return found[0]

    for cmd in launch.certificate_commands(host):  # the openssl recipe, argument for argument
        assert cmd in commands, shlex.join(cmd)
    printf = commands[index(["printf"])]
    assert printf[1] == launch.server_extensions(host).replace("\n", "\\n") and printf[-1] == "certs/server.ext"
    assert launch.key_command("device-3") in commands
    link, node = commands[index(["flower-superlink"])], commands[index(["flower-supernode"])]
    assert flags(link) == flags(fleet.superlink_cmd()[1:]) and flags(node) == flags(fleet.supernode_cmd(0))
    assert link[link.index("--host") + 1] == "127.0.0.1"  # never all interfaces: the Control API is on this port
    connection = toml["superlink"][toml["superlink"]["default"]]
    assert set(connection) == set(fleet.connection()) and Path(connection["root-certificates"]).is_absolute()
    # in the launcher's order: certificates, SuperLink, connection, registration, SuperNodes
    order = [index(["openssl", "x509"]), index(["flower-superlink"]), index(["<toml>"]),
             index(["flwr", "supernode", "register"]), index(["flower-supernode"])]
    assert order == sorted(order)
