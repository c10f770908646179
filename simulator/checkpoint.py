"""Checkpoints: everything a run needs to continue, written between two simulated instants.

A checkpoint holds the run's config, the protocol's whole state (every attribute: node
stacks, momentum, counters, buffers, inboxes, its random generators), the engine's clock and
pending events, the recorder's rows, the evaluation's yardsticks and the global random
states. What the scenario assembly rebuilds from the config (the World: data, owners, graph,
links, speeds, template) is not stored: it is written as a reference and the resumed run's
own World takes its place, so a checkpoint is the size of the state, not of the data.

The file is a magic line, a pickled header (format, config, round) and the pickled state; it
is written to a temporary name, flushed to disk and renamed over the previous checkpoint, so
a crash (or kill -9) mid-write leaves the previous one whole. A checkpoint is a pickle: load
only your own (as with torch.load).
"""
from __future__ import annotations

import hashlib
import os
import pickle
import random
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from scenarios import ConfigError, RunConfig, resolve
from simulator.report import flatten

MAGIC = b"MURMUR-CHECKPOINT\n"
FORMAT = 1
NAME = "checkpoint.pt"
# keys a resumed run may change: they do not change what the run computes
FREE_KEYS = ("resume", "sim.checkpoint_every", "sim.progress", "log.")


def _statics(world, protocol, engine, on_round) -> dict[int, tuple]:
    """id -> reference for the objects a resumed run rebuilds instead of loading: the World,
    each of its attributes that is an object, the engine, the protocol itself, on_round."""
    refs = {id(world): ("world",), id(engine): ("engine",), id(protocol): ("protocol",),
            id(on_round): ("on_round",)}
    for key, value in vars(world).items():
        if not isinstance(value, (type(None), bool, int, float, str, tuple)):
            refs.setdefault(id(value), ("world", key))
    return refs


def fingerprint(world) -> str:
    """What the config alone does not say about a World: the graph actually used and, for a
    module given to run(model=...), its weights (a resumed run must be given the same)."""
    h = hashlib.sha1()
    for key in ("src", "dst"):
        h.update(np.ascontiguousarray(world.edges[key]).tobytes())
    if world.given_weights:
        h.update(world.template_row().cpu().numpy().tobytes())
    return h.hexdigest()


class _Pickler(pickle.Pickler):
    def __init__(self, file, refs: dict[int, tuple]):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.refs = refs

    def persistent_id(self, obj):
        return self.refs.get(id(obj))


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, objects: dict[str, object]):
        super().__init__(file)
        self.objects = objects

    def persistent_load(self, ref):
        obj = self.objects[ref[0]]
        return getattr(obj, ref[1]) if len(ref) > 1 else obj


def save(path: Path, cfg: RunConfig, round_: int, *, world, protocol, engine, on_round, run_state: dict) -> None:
    """Write the checkpoint atomically: to a temporary file, flushed to disk, then renamed
    over the previous one (which stays whole if anything fails on the way)."""
    state = {"protocol": dict(vars(protocol)), "engine": engine.state(), "run": run_state,
             "random": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}}
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(MAGIC)
            pickle.dump({"format": FORMAT, "config": cfg, "round": round_, "sim_time_s": engine.now,
                         "world": fingerprint(world), "written": time.time()}, f, protocol=pickle.HIGHEST_PROTOCOL)
            _Pickler(f, _statics(world, protocol, engine, on_round)).dump(state)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class Checkpoint:
    """A checkpoint read back: `config`, `round`, and the state `restore` puts into a run."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                if f.read(len(MAGIC)) != MAGIC:
                    raise ConfigError(f"resume: {self.path} is not a murmur checkpoint (resume takes the "
                                      f"{NAME} a run with sim.checkpoint_every or an interrupt wrote)")
                try:
                    header = pickle.load(f)
                except Exception as err:
                    raise ConfigError(f"resume: {self.path} is damaged ({type(err).__name__}); "
                                      "resume from an earlier checkpoint or start again") from None
                self._state_at = f.tell()  # the state is read by restore(), not now
        except OSError as err:
            raise ConfigError(f"resume: cannot read {self.path}: {err.strerror or err}") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise ConfigError(f"resume: {self.path} was written by another version of murmur "
                              f"(checkpoint format {header.get('format') if isinstance(header, dict) else '?'}, "
                              f"this one reads {FORMAT})")
        self.config: RunConfig = header["config"]
        self.round: int = header["round"]
        self.sim_time_s: float = header["sim_time_s"]
        self.world: str = header["world"]

    def restore(self, *, world, protocol, engine, on_round) -> dict:
        """Put the saved state into a freshly built run (its World, attached protocol, engine
        and on_round); returns the run's own saved state (recorder rows, yardsticks)."""
        if fingerprint(world) != self.world:
            raise ConfigError(f"resume: {self.path} was written by a run on another graph or from another "
                              "given model: pass run() the same graph= and model= as the run that wrote it")
        objects = {"world": world, "engine": engine, "protocol": protocol, "on_round": on_round}
        try:
            with open(self.path, "rb") as f:
                f.seek(self._state_at)
                state = _Unpickler(f, objects).load()
        except Exception as err:
            raise ConfigError(f"resume: {self.path} is damaged ({type(err).__name__}: {err}); "
                              "resume from an earlier checkpoint or start again") from None
        vars(protocol).update(state["protocol"])
        engine.restore(state["engine"])
        rnd = state["random"]
        torch.set_rng_state(rnd["torch"])
        np.random.set_state(rnd["numpy"])
        random.setstate(rnd["python"])
        return state["run"]


def _flat(cfg: RunConfig) -> dict:
    """The config as dotted keys, the free keys left out."""
    return {k: v for k, v in flatten(asdict(cfg)).items() if not k.startswith(FREE_KEYS)}


def continued_config(cfg: RunConfig, saved: RunConfig) -> RunConfig:
    """The config a resumed run runs: the checkpoint's, with the free keys (resume,
    sim.checkpoint_every, sim.progress, log.*) taken from `cfg`. `cfg` must either say nothing
    else (the defaults: `murmur resume=...` alone) or say the same as the checkpoint; any other
    difference is a ConfigError naming the first key."""
    mine, theirs = _flat(cfg), _flat(saved)
    if mine != theirs and mine != _flat(resolve()):
        key = next(k for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k))
        raise ConfigError(f"resume: the checkpoint's run has {key}={theirs.get(key)!r}, this one {key}="
                          f"{mine.get(key)!r}; a resumed run continues its checkpoint's config (give "
                          "resume=... alone, or the same settings)")
    return replace(saved, resume=cfg.resume, log=cfg.log,
                   sim=replace(saved.sim, checkpoint_every=cfg.sim.checkpoint_every, progress=cfg.sim.progress))
