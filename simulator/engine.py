"""The engine: a simpy clock whose events are batched by instant.

Events are (time, kind, node, key) plus payload columns. All events of one kind pending at
the same simulated instant form a *wave*, handed to the kind's handler in one call (one
kernel call for the whole batch). A wave is sorted by (node, key), so its order never
depends on how events were scheduled; events a handler schedules for the current instant
join the next wave. With batching off the same waves are split into one call per node, so a
batched and an unbatched run see the same events in the same order.

Kinds at one instant run in priority order (lower first; protocols.Priority names the
levels). Each kind has exactly one handler. `resolution` > 0 rounds every event time up to a
multiple of it (a clock in ticks), which turns near-coincident events into large waves.

Between two instants nothing is half done: `after_instant` runs a callback there (a
checkpoint), and `state` / `restore` carry the pending events (with their handlers, which
pickle as bound methods of the protocol) to a fresh engine (simulator.checkpoint).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import simpy

Handler = Callable[[float, np.ndarray, dict], None]


@dataclass
class _Kind:
    priority: int
    handler: Handler
    chunks: dict = field(default_factory=dict)  # time -> list of (nodes, key, payload)


class Engine:
    def __init__(self, *, batching: bool = True, resolution: float = 0.0, record: bool = False):
        self.env = simpy.Environment()
        self.batching = batching
        self.resolution = float(resolution)
        self.log: list[tuple[float, str, int, int]] | None = [] if record else None
        self.calls = 0  # handler calls so far (a batched run makes far fewer)
        self._kinds: dict[str, _Kind] = {}
        self._instants: set[float] = set()
        self._stop = self.env.event()
        self._now = 0.0
        self._after: list[Callable[[], None]] = []  # callbacks due once the current instant ends
        self.running = False  # inside run(): an instant may be half done

    @property
    def now(self) -> float:
        return self._now

    def on(self, kind: str, handler: Handler, priority: int) -> None:
        """Give event `kind` its handler; kinds due at one instant run lowest priority first."""
        if kind in self._kinds:
            raise ValueError(f"event kind {kind!r} already has a handler; each kind has exactly one")
        self._kinds[kind] = _Kind(int(priority), handler)

    def schedule(self, kind: str, times, nodes, key=None, **payload) -> None:
        """Schedule one event per node at absolute `times` (a scalar or one per node)."""
        nodes = np.atleast_1d(np.asarray(nodes, dtype=np.int64))
        if nodes.size == 0:
            return
        times = np.broadcast_to(np.asarray(times, dtype=np.float64), nodes.shape)
        if self.resolution > 0:
            times = np.ceil(times / self.resolution - 1e-9) * self.resolution
        if np.any(times < self._now - 1e-12) or not np.all(np.isfinite(times)):
            raise ValueError(f"event '{kind}' scheduled in the past or at a non-finite time")
        times = np.maximum(times, self._now)
        key = np.zeros_like(nodes) if key is None else np.broadcast_to(np.asarray(key, np.int64), nodes.shape)
        payload = {k: np.broadcast_to(np.asarray(v), nodes.shape) for k, v in payload.items()}
        if kind not in self._kinds:
            raise KeyError(f"event kind {kind!r} has no handler; register one with Engine.on first")
        slot = self._kinds[kind].chunks
        uniq, inv = np.unique(times, return_inverse=True)
        for i, t in enumerate(uniq.tolist()):
            sel = inv == i if len(uniq) > 1 else slice(None)
            slot.setdefault(t, []).append((nodes[sel], key[sel], {k: v[sel] for k, v in payload.items()}))
            if t not in self._instants:
                self._instants.add(t)
                ev = self.env.timeout(t - self.env.now)
                ev.callbacks.append(lambda _ev, t=t: self._fire(t))

    @property
    def stopped(self) -> bool:
        return self._stop.triggered

    def stop(self) -> None:
        if not self._stop.triggered:
            self._stop.succeed()

    def run(self, until: float | None = None) -> None:
        """Process events until `stop()` is called, none is left, or the next one lies past `until`."""
        env = self.env
        self.running = True
        try:
            while not self._stop.triggered:
                t = env.peek()
                if t == math.inf or (until is not None and t > until):
                    break
                env.step()
                while self._after:
                    self._after.pop(0)()
        finally:
            self.running = False

    def after_instant(self, callback: Callable[[], None]) -> None:
        """Call `callback()` once the instant being processed has ended (every kind's wave,
        and the waves they scheduled for the same instant), before the next one begins."""
        self._after.append(callback)

    def state(self) -> dict:
        """The pending events and the clock, to continue in a fresh engine (`restore`)."""
        return {"now": self._now, "calls": self.calls, "log": self.log,
                "kinds": {name: (k.priority, k.handler, k.chunks) for name, k in self._kinds.items()}}

    def restore(self, state: dict) -> None:
        """Continue from `state()` of another engine: its clock, its pending events, and the
        handlers of kinds this engine lacks (those a protocol registers when it starts)."""
        self._now, self.calls, self.log = state["now"], state["calls"], state["log"]
        self.env = simpy.Environment(initial_time=self._now)
        self._stop = self.env.event()
        self._instants = set()
        for name, (priority, handler, chunks) in state["kinds"].items():
            if name not in self._kinds:
                self.on(name, handler, priority)
            self._kinds[name].chunks = chunks
            self._instants.update(chunks)
        for t in sorted(self._instants):
            ev = self.env.timeout(t - self._now)
            ev.callbacks.append(lambda _ev, t=t: self._fire(t))

    def _next_kind(self, t: float) -> str | None:
        ready = [(k.priority, name) for name, k in self._kinds.items() if t in k.chunks]
        return min(ready)[1] if ready else None

    def _fire(self, t: float) -> None:
        if self._stop.triggered:
            return
        self._now = t
        while (name := self._next_kind(t)) is not None:
            kind = self._kinds[name]
            chunks = kind.chunks.pop(t)
            nodes = np.concatenate([c[0] for c in chunks])
            key = np.concatenate([c[1] for c in chunks])
            order = np.lexsort((key, nodes))
            nodes, key = nodes[order], key[order]
            payload = {k: np.concatenate([c[2][k] for c in chunks])[order] for k in chunks[0][2]}
            payload["key"] = key
            if self.log is not None:
                self.log.extend((t, name, int(n), int(k)) for n, k in zip(nodes.tolist(), key.tolist()))
            if self.batching:
                self.calls += 1
                kind.handler(t, nodes, payload)
            else:
                cuts = np.flatnonzero(np.diff(nodes)) + 1
                for a, b in zip([0, *cuts.tolist()], [*cuts.tolist(), len(nodes)]):
                    self.calls += 1
                    kind.handler(t, nodes[a:b], {k: v[a:b] for k, v in payload.items()})
            if self._stop.triggered:
                break
        self._instants.discard(t)
