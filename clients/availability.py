"""Who is online when: per-node (or per-link) online/offline processes, deterministic from the seed.

A process keeps, per item, its state at -inf and its sorted toggle times after it: the state
flips at each toggle (two at one time cancel, and queries see through them). Queries are
batched over items and exact; generated processes are drawn
lazily, further ahead as queries need them, from counter-based uniforms keyed by (item, span),
so when a query comes never changes what is drawn.

Kinds (the `availability` key; `topology.failures` uses `sessions` for links):

  sessions  alternating online and offline spans with durations from `on` and `off` (each a
            distribution: a number or {kind, mean, ...}; default exponential with means 600 s
            and 300 s). An item starts online with probability E[on] / (E[on] + E[off]), the
            long-run share online (the first span is a full draw: exact for exponential spans).
  diurnal   a day of `period` seconds (86,400). The share of nodes online follows
            trough + (peak - trough) * (1 + cos(2 pi (t - peak_at) / period)) / 2. Each node
            draws one uniform u per day and is online while that share exceeds u: exactly that
            share is online in expectation, each node in one window per day around the peak.
  trace     a CSV file, one `node,start,end` line per online span (seconds; a header line is
            allowed). Overlapping spans of a node join; a node the file never names is never
            online.

`messages`: what becomes of a message that reaches an offline node: `drop` (default) or `hold`
(delivered the moment the node is back online).
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping

import numpy as np
import torch

from clients.profiles import Distribution
from kernels.random import counter_uniform

KINDS = ("sessions", "diurnal", "trace")
MESSAGES = ("drop", "hold")
_KEYS = {"sessions": {"on", "off"}, "diurnal": {"peak", "trough", "period", "peak_at"}, "trace": {"path"}}
_SESSIONS = {"on": {"kind": "exponential", "mean": 600.0}, "off": {"kind": "exponential", "mean": 300.0}}
_MAX_EXTENSIONS = 256  # how far ahead next_online looks for a node that is offline for good
_MAX_BYTES = 4 * 2**30  # toggle times kept: beyond this the spans are far too short for the run


class OnlineProcess:
    """Online spans of `n` items: the state at -inf (`initial`) and the sorted toggle times
    after it [n, K] (+inf pads the end of a row). Two toggles at one time cancel (a day without
    a window, or two windows that touch): queries see through them."""
    messages = "drop"

    def __init__(self, n: int):
        self.n = n
        self.initial = np.zeros(n, dtype=bool)
        self.toggles = np.empty((n, 0))
        self.horizon = -math.inf  # every toggle before it is known

    def _extend(self) -> bool:
        """Draw further ahead (raise the horizon); False when nothing more can come."""
        return False

    def _append(self, columns: np.ndarray) -> None:
        """New toggles, each row's no earlier than its last (so rows stay sorted as they grow)."""
        self.toggles = np.concatenate([self.toggles, columns], axis=1)
        if self.toggles.nbytes > _MAX_BYTES:
            raise ValueError(f"availability: {self.toggles.shape[1]:,} on/off changes per node so far "
                             f"({self.toggles.nbytes / 1e9:.1f} GB): the spans are very short for this run's "
                             "length; lengthen availability.on/off (or period), or run fewer rounds")

    def _ensure(self, t: float) -> None:
        while self.horizon <= t and self._extend():
            pass

    def _index(self, items: np.ndarray, t) -> np.ndarray:
        """How many toggles of each item lie at or before t (a scalar or one time per item)."""
        t = np.broadcast_to(np.asarray(t, dtype=np.float64), np.shape(items))
        if len(items) == 0:
            return np.zeros(0, np.int64)
        self._ensure(float(t.max()))
        rows = torch.from_numpy(self.toggles[items])  # a fresh array: fancy indexing copies
        return torch.searchsorted(rows, torch.from_numpy(t.copy()).view(-1, 1),
                                  right=True).view(-1).numpy()

    def online(self, items, t) -> np.ndarray:
        """bool: is each item online at t?"""
        items = np.asarray(items, dtype=np.int64)
        return (self._index(items, t) % 2 == 1) ^ self.initial[items]

    def _pairs_from(self, items: np.ndarray, start: np.ndarray) -> np.ndarray:
        """[m, K // 2 + 1] bool: for each item, is the toggle pair (start + 2p, start + 2p + 1)
        a cancelling one (both at one time)? Pairs beyond the row read False."""
        k = self.toggles.shape[1]
        p = np.arange(k // 2 + 1)
        j = start[:, None] + 2 * p[None, :]
        inside = j + 1 < k
        a = np.take_along_axis(self.toggles[items], np.minimum(j, k - 1), axis=1) if k else np.zeros(j.shape)
        b = np.take_along_axis(self.toggles[items], np.minimum(j + 1, k - 1), axis=1) if k else np.zeros(j.shape)
        return inside & (a == b) & np.isfinite(a)

    def online_through(self, items, t0, t1) -> np.ndarray:
        """bool: is each item online at t0 and without a break up to t1 (t1 >= t0)?"""
        items = np.asarray(items, dtype=np.int64)
        i0, i1 = self._index(items, t0), self._index(items, t1)
        up = (i0 % 2 == 1) ^ self.initial[items]
        changed = np.flatnonzero(up & (i1 != i0))
        if len(changed):  # only cancelling pairs in between keep it online
            cancel = self._pairs_from(items[changed], i0[changed])
            pairs = (i1[changed] - i0[changed]) // 2
            odd = (i1[changed] - i0[changed]) % 2 == 1
            first_real = np.where(cancel.all(axis=1), cancel.shape[1], np.argmin(cancel, axis=1))
            up[changed] = ~odd & (first_real >= pairs)
        return up

    def next_online(self, items, t) -> np.ndarray:
        """The first time >= t at which each item is online (+inf: never)."""
        items = np.asarray(items, dtype=np.int64)
        t = np.broadcast_to(np.asarray(t, dtype=np.float64), items.shape).copy()
        for _ in range(_MAX_EXTENSIONS):
            i = self._index(items, t)
            out = t.copy()
            off = np.flatnonzero((i % 2 == 1) == self.initial[items])
            if len(off) == 0:
                return out
            # the first toggle pair from here that is not a cancelling one turns the item on
            cancel = self._pairs_from(items[off], i[off])
            first = np.argmin(cancel, axis=1)  # all cancelling: argmin 0, caught below by the index bound
            j = i[off] + 2 * first
            k = self.toggles.shape[1]
            when = np.full(len(off), np.inf)
            ok = (j < k) & ~cancel.all(axis=1)
            when[ok] = self.toggles[items[off][ok], j[ok]]
            out[off] = when
            if not np.any(when[:] > self.horizon) or not self._extend():
                return out
        return out

    def share(self, t: float) -> float:
        """The share of all items online at t."""
        return float(self.online(np.arange(self.n), t).mean()) if self.n else 1.0


class Sessions(OnlineProcess):
    """Alternating online/offline spans with seeded durations (see the module doc)."""

    def __init__(self, keys: np.ndarray, seed: int, on: Distribution, off: Distribution, chunk: int = 8):
        super().__init__(len(keys))
        self.keys = torch.as_tensor(np.asarray(keys, dtype=np.int64))
        self.seed, self.on, self.off, self.chunk = seed, on, off, chunk
        share = on.expected / (on.expected + off.expected)
        self.initial = counter_uniform(seed, self.keys, torch.zeros((), dtype=torch.long)).numpy() < share
        self.state = self.initial.copy()  # the state after each item's last drawn toggle
        self.clock = np.zeros(self.n)  # the time of that toggle
        self.drawn = 0

    def _extend(self) -> bool:
        cols = torch.arange(self.drawn + 1, self.drawn + 1 + self.chunk)
        u = counter_uniform(self.seed, self.keys.view(-1, 1), cols.view(1, -1)).numpy()
        # span j has the state the item toggles into after j spans: alternating from `state`
        parity = (np.arange(self.chunk) % 2 == 0)[None, :]
        online_span = np.where(parity, self.state[:, None], ~self.state[:, None])
        lengths = np.where(online_span, self.on.quantile(u), self.off.quantile(u))
        ends = self.clock[:, None] + np.cumsum(lengths, axis=1)
        self._append(ends)
        self.clock = ends[:, -1]
        self.state = self.state ^ (self.chunk % 2 == 1)
        self.drawn += self.chunk
        self.horizon = float(self.clock.min()) if self.n else math.inf
        return True


class Diurnal(OnlineProcess):
    """A daily cycle of the share online (see the module doc)."""

    def __init__(self, n: int, seed: int, peak: float, trough: float, period: float, peak_at: float,
                 days: int = 4):
        super().__init__(n)
        self.seed, self.peak, self.trough, self.period, self.peak_at, self.days = \
            seed, peak, trough, period, peak_at, days
        self.day = int(math.floor(-peak_at / period + 0.5)) - 1  # the first day drawn (it covers t = 0)
        self.nodes = torch.arange(n)

    def _window(self, day: int) -> np.ndarray:
        """[n, 2] each node's online window of `day`: two equal times (they cancel) where it
        stays offline; a whole day ends where the next begins (those cancel too)."""
        u = counter_uniform(self.seed, self.nodes, torch.tensor(day)).numpy()
        span = self.peak - self.trough
        if span > 0:
            c = 2 * (u - self.trough) / span - 1
            half = np.where(c <= -1, 0.5, np.arccos(np.clip(c, -1, 1)) / (2 * math.pi))
            half = np.where(c >= 1, 0.0, half)
        else:
            half = np.where(u < self.peak, 0.5, 0.0)
        centre = self.peak_at + day * self.period
        return np.stack([centre - half * self.period, centre + half * self.period], axis=1)

    def _extend(self) -> bool:
        self._append(np.concatenate([self._window(d) for d in range(self.day, self.day + self.days)], axis=1))
        self.day += self.days
        self.horizon = self.peak_at + (self.day - 0.5) * self.period
        return True


class Trace(OnlineProcess):
    """Online spans read from a file (see the module doc)."""

    def __init__(self, n: int, spans: np.ndarray):
        super().__init__(n)
        rows: list[list[float]] = [[] for _ in range(n)]
        order = np.lexsort((spans[:, 1], spans[:, 0]))
        for node, start, end in spans[order].tolist():
            row = rows[int(node)]
            if row and start <= row[-1]:  # overlaps (or touches) the previous span: join them
                row[-1] = max(row[-1], end)
            else:
                row += [start, end]
        k = max((len(r) for r in rows), default=0)
        self.toggles = np.full((n, k), np.inf)
        for i, r in enumerate(rows):
            self.toggles[i, :len(r)] = r
        self.horizon = math.inf


def read_trace(path, n: int) -> np.ndarray:
    """[k, 3] (node, start, end) rows of a trace file; ValueError naming availability.path."""
    shown = repr(str(path))
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise ValueError(f"availability.path: no such file {shown}")
    try:
        with open(path, "rb") as f:
            raw = f.read()
        text = raw.decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"availability.path {shown} is not a readable text file ({type(err).__name__})") from None
    spans, header_allowed = [], True
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        cells = [c.strip() for c in line.split(",")]
        try:
            if len(cells) != 3:
                raise ValueError
            node, start, end = int(cells[0]), float(cells[1]), float(cells[2])
        except ValueError:
            if header_allowed and not cells[0].lstrip("-").isdigit():
                header_allowed = False
                continue  # a header line
            raise ValueError(f"availability.path {shown} line {lineno}: expected 'node,start,end' "
                             f"(an integer and two numbers of seconds), got {line[:60]!r}") from None
        header_allowed = False
        if not 0 <= node < n:
            raise ValueError(f"availability.path {shown} line {lineno} names node {node}, but the scenario has "
                             f"nodes 0..{n - 1}")
        if not (math.isfinite(start) and start >= 0 and (end > start)) or math.isnan(end):
            raise ValueError(f"availability.path {shown} line {lineno}: a span needs 0 <= start < end "
                             f"(end may be inf), got start={start:g}, end={end:g}")
        spans.append((node, start, end))
    if not spans:
        raise ValueError(f"availability.path {shown} holds no 'node,start,end' spans")
    return np.asarray(spans, dtype=np.float64)


def _number(spec: Mapping, key: str, default: float, low: float, high: float, what: str) -> float:
    v = spec.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not low <= v <= high or math.isnan(v):
        raise ValueError(f"availability.{key} must be {what}, got {v!r}")
    return float(v)


def _durations(spec: Mapping, prefix: str) -> tuple[Distribution, Distribution]:
    out = []
    for key in ("on", "off"):
        try:
            d = Distribution.from_spec(spec.get(key, _SESSIONS[key]))
        except ValueError as err:
            raise ValueError(f"{prefix}.{key}: {err}") from None
        if not d.always_positive or not math.isfinite(d.expected):
            raise ValueError(f"{prefix}.{key} must be a finite number of seconds > 0 for every span "
                             "(check its value or low)")
        out.append(d)
    return out[0], out[1]


def _mapping(spec, key: str, example: str) -> dict | None:
    if spec is None:
        return None
    if not isinstance(spec, Mapping):
        raise ValueError(f"{key} must be a mapping such as {example} or null, got {spec!r}")
    return {str(k): v for k, v in spec.items()}


def check_spec(spec) -> dict | None:
    """The `availability` spec as a plain dict (None: always online); ValueError naming the key."""
    spec = _mapping(spec, "availability", "{kind: sessions}")
    if spec is None:
        return None
    kind = spec.get("kind")
    if kind not in KINDS:
        raise ValueError(f"availability.kind must be one of {', '.join(KINDS)}, got {kind!r}")
    unknown = sorted(set(spec) - _KEYS[kind] - {"kind", "messages"})
    if unknown:
        raise ValueError(f"availability: unknown key(s) {', '.join(unknown)} for kind {kind}; valid: "
                         f"{', '.join(sorted(_KEYS[kind] | {'kind', 'messages'}))}")
    if spec.get("messages", "drop") not in MESSAGES:
        raise ValueError(f"availability.messages must be one of {', '.join(MESSAGES)}, got {spec.get('messages')!r}")
    if kind == "sessions":
        _durations(spec, "availability")
    elif kind == "diurnal":
        peak = _number(spec, "peak", 0.8, 0, 1, "a share in [0, 1]")
        trough = _number(spec, "trough", 0.1, 0, 1, "a share in [0, 1]")
        if trough > peak:
            raise ValueError(f"availability.trough ({trough:g}) must be at most availability.peak ({peak:g})")
        _number(spec, "period", 86400.0, 1e-9, 1e12, "a finite number of seconds > 0")
        _number(spec, "peak_at", 0.0, -1e12, 1e12, "a finite number of seconds")
    elif not isinstance(spec.get("path"), (str, os.PathLike)):
        raise ValueError(f"availability.path must name a CSV file of node,start,end lines, got {spec.get('path')!r}")
    return spec


def check_failures(spec) -> dict | None:
    """The `topology.failures` spec (links: sessions, on and off only) as a plain dict, or None."""
    spec = _mapping(spec, "topology.failures", "{on: 600, off: 60}")
    if spec is None:
        return None
    unknown = sorted(set(spec) - {"kind", "on", "off"})
    if unknown or spec.get("kind", "sessions") != "sessions":
        raise ValueError(f"topology.failures takes on and off (span distributions, seconds); got "
                         f"{', '.join(unknown) or 'kind=' + repr(spec.get('kind'))}")
    _durations(spec, "topology.failures")
    return spec


def build(spec, n: int, seed: int) -> OnlineProcess | None:
    """The nodes' process for a checked spec (None: always online)."""
    spec = check_spec(spec)
    if spec is None:
        return None
    kind = spec["kind"]
    if kind == "sessions":
        proc = Sessions(np.arange(n), seed, *_durations(spec, "availability"))
    elif kind == "diurnal":
        proc = Diurnal(n, seed, float(spec.get("peak", 0.8)), float(spec.get("trough", 0.1)),
                       float(spec.get("period", 86400.0)), float(spec.get("peak_at", 0.0)))
    else:
        proc = Trace(n, read_trace(spec["path"], n))
    proc.messages = spec.get("messages", "drop")
    return proc


def link_sessions(spec, pairs: np.ndarray, n: int, seed: int) -> Sessions | None:
    """Failing and recovering links: sessions over undirected pairs [E, 2] (u < v), keyed by
    the pair, so a link keeps its process when a dynamic graph redraws around it."""
    spec = check_failures(spec)
    if spec is None:
        return None
    return Sessions(pairs[:, 0] * n + pairs[:, 1], seed, *_durations(spec, "topology.failures"))
