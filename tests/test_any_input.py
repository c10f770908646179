"""Property: whatever a user types for any key of any group (or any file they point data=npz or
topology=edgelist at), `murmur` ends in one of three ways, within a time bound:

- exit 0: a completed run whose final metrics are finite;
- exit 2: exactly one line on stderr, `murmur: error: ...`;
- exit 3: exactly one line on stderr, `murmur: diverged (...)` (e.g. a learning rate of 1e5).

Never a traceback, never an internal error (exit 1). Runs are tiny (a few nodes, two rounds).
"""
import json
import signal
import sys
import warnings
from functools import lru_cache

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings, strategies as st
from omegaconf import OmegaConf

from scenarios import compose
from scenarios.schema import options

TIME_BOUND_S = 60
BASE = {"nodes": "6", "rounds": "2", "train.local_steps": "1", "eval.max_test": "60", "sim.progress": "false",
        "data.n_samples": "400", "topology.degree": "2"}


class TooSlow(BaseException):
    pass


@lru_cache(maxsize=None)
def keys_of(group: str, option: str) -> tuple[str, ...]:
    """The leaf keys of one group option (e.g. protocol=gossip: protocol.beta, ...)."""
    node = OmegaConf.to_container(compose([f"{group}={option}"])[group])
    return tuple(f"{group}.{k}" for k in node if k != "name")


@lru_cache(maxsize=None)
def top_keys() -> tuple[str, ...]:
    cfg = OmegaConf.to_container(compose([]))
    out = []
    for k, v in cfg.items():
        if k in ("protocol", "topology", "data", "model"):
            continue
        out += [f"{k}.{sub}" for sub in v] if isinstance(v, dict) else [k]
    return tuple(out)


VALUES = st.one_of(
    st.integers(-3, 12).map(str),
    st.sampled_from(["0", "1", "2", "1000000000001", "9223372036854775808", "4294967296"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e-300", "1e300", "0.5", "-0.0", "2.5", "1e5"]),
    st.sampled_from(["abc", "''", "yes", "no", "null", "true", "false", "[1,2]", "[]", "[0]", "{}", "x.y",
                     "{kind: uniform, low: 1, high: 2}", "{kind: lognormal, mean: 1, sigma: 1}",
                     "{kind: exponential}", "{kind: nope}", "{value: -1}", "cuda", "cpu",
                     # faults: availability, topology.failures and topology.dynamic take these
                     "{kind: sessions, on: 0.01, off: 0.01}", "{kind: diurnal, period: 0.05}",
                     "{kind: sessions, on: 0.01, off: 1e9, messages: hold}", "{on: 0.02, off: 0.01}",
                     "{every: 0.01}", "{every: 0.01, kind: ring}", "{every: 1e-300}",
                     "bfloat16", "float16"]),  # sim.storage's 16-bit stacks
)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Plausible user files, good and broken: npz datasets and edge lists."""
    d = tmp_path_factory.mktemp("files")
    rng = np.random.default_rng(0)
    X, y = rng.random((120, 5)).astype(np.float32), rng.integers(0, 3, 120)
    variants = {
        "good": dict(X_train=X[:100], y_train=y[:100], X_test=X[100:], y_test=y[100:]),
        "nan": dict(X_train=np.where(X[:100] > 0.99, np.nan, X[:100]), y_train=y[:100], X_test=X[100:], y_test=y[100:]),
        "no_test": dict(X_train=X[:100], y_train=y[:100], X_test=X[:0], y_test=y[:0]),
        "float_labels": dict(X_train=X[:100], y_train=y[:100] + 0.5, X_test=X[100:], y_test=y[100:]),
        "short_y": dict(X_train=X[:100], y_train=y[:50], X_test=X[100:], y_test=y[100:]),
        "missing": dict(X_train=X[:100], y_train=y[:100]),
        "multilabel": dict(X_train=X[:100], y_train=(X[:100, :4] > 0.5).astype(np.uint8),
                           X_test=X[100:], y_test=(X[100:, :4] > 0.5).astype(np.uint8)),
    }
    paths = []
    for name, arrays in variants.items():
        np.savez(d / f"{name}.npz", **arrays)
        paths.append(str(d / f"{name}.npz"))
    (d / "empty.npz").write_bytes(b"")
    (d / "text.npz").write_text("X_train,y_train\n1,2\n")
    paths += [str(d / "empty.npz"), str(d / "text.npz"), str(d / "absent.npz"), str(d)]
    edges = {"ring": "".join(f"{i} {(i + 1) % 6}\n" for i in range(6)), "empty": "", "words": "a b\nc d\n",
             "three": "0 1 2\n", "negative": "0 -1\n", "too_big": "0 99\n", "binary": "\0\1\2"}
    for name, text in edges.items():
        (d / f"{name}.edges").write_text(text)
    return paths, [str(d / f"{n}.edges") for n in edges] + [str(d / "absent.edges")]


@st.composite
def command(draw, files):
    npz, edgelists = files
    chosen = {g: draw(st.sampled_from(options(g))) for g in ("protocol", "topology", "data", "model")}
    args = {**BASE, **{g: v for g, v in chosen.items()}}
    if chosen["data"] == "npz":
        args["data.path"] = draw(st.sampled_from(npz))
    if chosen["topology"] == "edgelist":
        args["topology.path"] = draw(st.sampled_from(edgelists))
    keys = [*top_keys(), *(k for g, o in chosen.items() for k in keys_of(g, o))]
    for key in draw(st.lists(st.sampled_from(keys), min_size=1, max_size=2, unique=True)):
        args[key] = draw(VALUES)
    # keys the chosen groups do not have are dropped (a misspelt key is tested elsewhere)
    return [f"{k}={v}" for k, v in args.items() if k.split(".")[0] not in chosen or k in keys or "." not in k]


# no shrinking: it can take minutes; the failing command is printed whole
@settings(max_examples=70, deadline=None, derandomize=True, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_command_completes_or_is_one_line(data, files, tmp_path, monkeypatch, capsys):
    from simulator import cli

    out_dir = tmp_path / f"run{data.draw(st.integers(0, 10**9))}"
    args = data.draw(command(files))
    monkeypatch.setattr(sys, "argv", ["murmur", *args, f"hydra.run.dir={out_dir}"])

    def too_slow(signum, frame):
        raise TooSlow(f"murmur {' '.join(args)} took longer than {TIME_BOUND_S} s")

    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(TIME_BOUND_S)
    code = 0
    try:
        with warnings.catch_warnings(record=True) as caught:  # a real process prints them on stderr
            warnings.simplefilter("always")
            cli.main()
    except SystemExit as exit_:
        code = exit_.code
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    out = capsys.readouterr()
    if code == 2:  # a user mistake is one line: no warning printed before it either
        assert not caught, (args, [str(w.message) for w in caught])
    assert "Traceback" not in out.err, (args, out.err)
    if code == 0:
        summary = json.loads((out_dir / "summary.json").read_text())
        assert summary["status"] == "completed", args
        assert all(v is not None and np.isfinite(v) for v in summary["final"].values()), (args, summary["final"])
        return
    lines = [ln for ln in out.err.splitlines() if ln.strip()]
    assert code in (2, 3) and len(lines) == 1, (args, code, out.err)
    assert lines[0].startswith("murmur: error: " if code == 2 else "murmur: diverged ("), (args, lines)
