"""Time-varying topologies: the graph re-drawn every `every` simulated seconds.

`topology.dynamic` is null (a fixed graph) or a mapping:

  every   seconds between redraws (> 0); version v of the graph holds from v * every on
  kind    a topology name (default: the scenario's own) drawn afresh for each version from the
          run's seed, e.g. random_regular: the random peer sampling of Epidemic Learning;
          degree, p, k, m as for the topology (default: the scenario's)
  paths   instead of kind: a list of edge-list files, version v is paths[v % len(paths)]
          (version 0 included)

Each version's links get fresh latencies and bandwidths from the same distributions.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from topologies.graphs import TOPOLOGIES

_KEYS = {"every", "kind", "degree", "p", "k", "m", "paths"}


@dataclass(frozen=True)
class Dynamic:
    every: float
    kind: str | None = None
    paths: tuple[str, ...] = ()
    options: dict = field(default_factory=dict)  # degree, p, k, m given here

    @classmethod
    def from_spec(cls, spec) -> "Dynamic | None":
        """None, or a checked mapping (ValueError naming topology.dynamic.<key>)."""
        if spec is None:
            return None
        if not isinstance(spec, Mapping):
            raise ValueError(f"topology.dynamic must be a mapping such as {{every: 5.0, kind: random_regular}} "
                             f"or null, got {spec!r}")
        spec = {str(k): v for k, v in spec.items()}
        unknown = sorted(set(spec) - _KEYS)
        if unknown:
            raise ValueError(f"topology.dynamic: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(_KEYS))}")
        every = spec.get("every")
        if isinstance(every, bool) or not isinstance(every, (int, float)) or not 0 < every < math.inf:
            raise ValueError(f"topology.dynamic.every must be a finite number of seconds > 0, got {every!r}")
        kind, paths = spec.get("kind"), spec.get("paths")
        if kind is not None and paths is not None:
            raise ValueError("topology.dynamic takes kind or paths, not both")
        if kind is not None and kind not in TOPOLOGIES:
            raise ValueError(f"topology.dynamic.kind must be one of {', '.join(TOPOLOGIES)}, got {kind!r}")
        if paths is not None:
            if isinstance(paths, (str, bytes)) or not hasattr(paths, "__iter__") or not paths or \
                    not all(isinstance(p, str) for p in paths):
                raise ValueError(f"topology.dynamic.paths must be a non-empty list of edge-list files, got {paths!r}")
            paths = tuple(paths)
        for key, low in (("degree", 1), ("k", 2), ("m", 1)):
            v = spec.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
                raise ValueError(f"topology.dynamic.{key} must be an integer >= {low}, got {v!r}")
        p = spec.get("p")
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1):
            raise ValueError(f"topology.dynamic.p must be in [0, 1], got {p!r}")
        options = {k: spec[k] for k in ("degree", "p", "k", "m") if spec.get(k) is not None}
        return cls(float(every), kind, paths or (), options)

    def version(self, t: float) -> int:
        """Which graph holds at simulated time t."""
        return int(math.floor(t / self.every + 1e-9))

    def topology(self, version: int, name: str, defaults: dict) -> tuple[str, dict]:
        """(topology name, build_graph keyword arguments) of a version."""
        if self.paths:
            return "edgelist", {**defaults, "path": self.paths[version % len(self.paths)]}
        return self.kind or name, {**defaults, **self.options}
