"""Communication graphs: building, validating, link attributes and array export.

Graphs are undirected ``nx.Graph`` objects whose nodes are the ints 0..N-1.
Each edge carries ``latency`` (seconds) and ``bandwidth`` (bytes per second)
once ``attach_links`` has run; ``edge_arrays`` turns the graph into sorted
directed edge arrays for vectorized message passing.
"""

from __future__ import annotations

import math
import os
import re
from typing import Callable

import networkx as nx
import numpy as np


class TopologyError(ValueError):
    """A bad topology request; message is one line naming the problem and how to fix it."""


TOPOLOGIES = (
    "complete",
    "star",
    "ring",
    "random_regular",
    "erdos_renyi",
    "small_world",
    "scale_free",
    "torus",
    "edgelist",
)


def _torus_rows(n: int) -> int:
    """Largest divisor of n that is <= sqrt(n)."""
    for rows in range(math.isqrt(n), 0, -1):
        if n % rows == 0:
            return rows
    return 1


def _torus_suggestion(n: int) -> str:
    up = n + 1
    while _torus_rows(up) == 1:
        up += 1
    down = n - 1
    while down >= 4 and _torus_rows(down) == 1:
        down -= 1
    if down >= 4:
        return f"nodes={down} or nodes={up}"
    return f"nodes={up}"


def _canonical(G: nx.Graph, n: int) -> nx.Graph:
    """Rebuild G with nodes 0..n-1 inserted in order and edges in sorted order.

    A fixed insertion order makes iteration (and so everything derived from
    it) identical for identical inputs, whatever generator produced G.
    """
    if set(G.nodes) != set(range(n)):
        G = nx.convert_node_labels_to_integers(G, ordering="sorted")
    edges = sorted(
        ((min(u, v), max(u, v), d) for u, v, d in G.edges(data=True) if u != v),
        key=lambda e: (e[0], e[1]),
    )
    H = nx.Graph()
    H.add_nodes_from(range(n))
    H.add_edges_from(edges)
    return H


_EDGELIST_HOWTO = "write one 'u v' pair of node ids 0..nodes-1 per line ('#' starts a comment)"
_NODE_ID = re.compile(r"-?[0-9]+")


def _show(text: str) -> str:
    """Text fit for a one-line message: as is when printable, else its repr (escapes newlines)."""
    return text if text.isprintable() else repr(text)


def _snippet(line: str) -> str:
    return repr(line if len(line) <= 40 else line[:40] + "...")


def _read_edgelist(path: str | None, n: int) -> nx.Graph:
    """The graph of an edge-list file on nodes 0..n-1.

    Each line holds two integer node ids "u v" separated by spaces or tabs; "#" starts a
    comment and blank lines are skipped. Ids are used as they are (no relabelling): they must
    lie in 0..n-1 and the largest must be n-1, so the file says how many nodes it is for; ids
    below it that appear in no edge are isolated nodes (check_graph then calls the graph
    disconnected unless that is allowed). A self loop "v v" is dropped (a node never sends to
    itself) but still names node v; a repeated edge, in either direction, counts once.
    Every problem is a one-line TopologyError naming the file and, for a bad line, its number.
    """
    if path is None:
        raise TopologyError("topology 'edgelist' needs a file; set topology.path to an edge list file")
    path = os.path.expanduser(str(path))
    shown = _show(path)
    if os.path.isdir(path):
        raise TopologyError(f"edgelist path {shown} is a directory; set topology.path to an edge list file")
    if not os.path.exists(path):
        raise TopologyError(f"edgelist file not found: {shown}")
    where = f"edgelist file {shown}"
    edges: set[tuple[int, int]] = set()
    top = -1
    try:
        with open(path, "rb") as f:
            if b"\0" in f.read(8192):
                raise TopologyError(f"{where} holds binary data, not text; {_EDGELIST_HOWTO}")
            f.seek(0)
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise TopologyError(f"{where} line {lineno} is not UTF-8 text; {_EDGELIST_HOWTO}") from None
                if lineno == 1:
                    line = line.removeprefix("\ufeff")  # a byte-order mark some editors write
                line = line.split("#", 1)[0].strip()
                if not line:
                    continue
                ids = line.split()
                if len(ids) != 2 or not all(_NODE_ID.fullmatch(t) for t in ids):
                    raise TopologyError(f"could not parse {where} line {lineno} {_snippet(line)}: expected two "
                                        f"integer node ids; {_EDGELIST_HOWTO}")
                pair = []
                for token in ids:
                    try:
                        v = int(token)
                    except ValueError:  # more digits than Python converts
                        v = n if token[0] != "-" else -1
                    if not 0 <= v < n:
                        shown_id = token if len(token) <= 20 else token[:20] + "..."
                        raise TopologyError(f"{where} line {lineno} names node {shown_id}, but with nodes={n} "
                                            f"node ids are 0..{n - 1}; renumber the file or change nodes")
                    pair.append(v)
                u, v = pair
                top = max(top, u, v)
                if u != v:
                    edges.add((min(u, v), max(u, v)))
    except PermissionError:
        raise TopologyError(f"{where} is not readable (permission denied); make it readable") from None
    except OSError as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise TopologyError(f"{where} could not be read ({reason})") from None
    if not edges:
        kind = "only self loops" if top >= 0 else "no edges"
        raise TopologyError(f"{where} has {kind}; {_EDGELIST_HOWTO}")
    if top < n - 1:
        raise TopologyError(f"{where} names nodes 0..{top} at most but nodes={n}; set nodes={top + 1} "
                            f"(or name node {n - 1} in the file)")
    G = nx.Graph()
    G.add_nodes_from(range(n))
    G.add_edges_from(sorted(edges))
    return G


def build_graph(
    name: str,
    n: int,
    rng: np.random.Generator,
    *,
    degree: int = 8,
    p: float = 0.1,
    k: int = 4,
    m: int = 2,
    path: str | None = None,
) -> nx.Graph:
    """Build the named topology on nodes 0..n-1, self loops removed.

    Only the parameters of the chosen topology are checked. Connectivity is
    not checked here; pass the result through ``check_graph``. An edge-list
    file (``path``) names node ids 0..n-1 directly, the largest being n-1;
    ``_read_edgelist`` gives the format and what is an error.
    """
    if name not in TOPOLOGIES:
        raise TopologyError(f"unknown topology {name!r}; choose one of: {', '.join(TOPOLOGIES)}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise TopologyError(f"nodes must be an integer >= 1 (got nodes={n!r})")
    n = int(n)
    # Always draw exactly one seed so later draws from rng do not depend on
    # which topology was chosen.
    seed = int(rng.integers(2**31))

    if name == "complete":
        G = nx.complete_graph(n)
    elif name == "star":
        G = nx.star_graph(n - 1)  # node 0 is the hub
    elif name == "ring":
        G = nx.cycle_graph(n)
    elif name == "random_regular":
        if not 1 <= degree < n:
            raise TopologyError(f"random_regular needs 1 <= degree < nodes (got degree={degree}, nodes={n})")
        if (n * degree) % 2:
            raise TopologyError(
                f"random_regular needs nodes*degree even (got degree={degree}, nodes={n}); change degree or nodes"
            )
        G = nx.random_regular_graph(degree, n, seed=seed)
    elif name == "erdos_renyi":
        if not 0.0 <= p <= 1.0:
            raise TopologyError(f"erdos_renyi needs 0 <= p <= 1 (got p={p})")
        # fast_gnp is O(n + edges) instead of O(n^2), same distribution.
        G = nx.fast_gnp_random_graph(n, p, seed=seed)
    elif name == "small_world":
        if not 0.0 <= p <= 1.0:
            raise TopologyError(f"small_world needs 0 <= p <= 1 (got p={p})")
        if k % 2 or not 2 <= k < n:
            raise TopologyError(f"small_world needs an even k with 2 <= k < nodes (got k={k}, nodes={n})")
        try:
            G = nx.connected_watts_strogatz_graph(n, k, p, tries=100, seed=seed)
        except nx.NetworkXError:
            raise TopologyError(
                f"small_world found no connected graph in 100 tries (k={k}, p={p}); raise k or lower p"
            ) from None
    elif name == "scale_free":
        if not 1 <= m < n:
            raise TopologyError(f"scale_free needs 1 <= m < nodes (got m={m}, nodes={n})")
        G = nx.barabasi_albert_graph(n, m, seed=seed)
    elif name == "torus":
        rows = _torus_rows(n)
        if rows == 1:
            raise TopologyError(
                f"torus needs nodes = rows x cols with rows >= 2, but nodes={n} does not factor; "
                f"try {_torus_suggestion(n)}"
            )
        # Tuple labels (r, c) sort row-major, so _canonical maps them to r*cols + c.
        G = nx.grid_2d_graph(rows, n // rows, periodic=True)
    else:  # edgelist
        G = _read_edgelist(path, n)
    return _canonical(G, n)


def check_graph(G: nx.Graph, n: int | None = None, *, allow_disconnected: bool = False) -> nx.Graph:
    """Validate a graph and return it with nodes 0..N-1.

    Other hashable labels are relabelled in sorted order (insertion order if
    they do not sort); directed and multi graphs become simple undirected
    graphs and self loops are dropped. Those changes are made on a copy; a
    graph that needs none is returned as is.
    """
    if not isinstance(G, nx.Graph):
        raise TopologyError(f"topology must be a networkx graph (got {type(G).__name__})")
    N = G.number_of_nodes()
    if N == 0:
        raise TopologyError("graph has no nodes; add nodes 0..N-1")
    if n is not None and N != n:
        raise TopologyError(f"graph has {N} nodes but nodes={n}; make them match")
    if G.is_directed() or G.is_multigraph():
        G = nx.Graph(G)
    if not all(type(v) is int for v in G) or set(G) != set(range(N)):
        try:
            G = nx.convert_node_labels_to_integers(G, ordering="sorted")
        except TypeError:
            G = nx.convert_node_labels_to_integers(G, ordering="default")
    if nx.number_of_selfloops(G):
        G = G.copy()
        G.remove_edges_from(list(nx.selfloop_edges(G)))
    if not allow_disconnected:
        parts = nx.number_connected_components(G)
        if parts > 1:
            raise TopologyError(
                f"topology is disconnected ({parts} components); "
                "use a denser graph or set topology.allow_disconnected=true"
            )
    return G


LinkValue = float | Callable[[int], np.ndarray]


def _link_values(spec: LinkValue, n_edges: int, name: str) -> np.ndarray:
    if callable(spec):
        values = np.asarray(spec(n_edges), dtype=np.float64)
        if values.shape != (n_edges,):
            raise TopologyError(f"{name} sampler returned shape {values.shape}, expected ({n_edges},)")
        return values
    return np.full(n_edges, float(spec))


def _check_links(latency: np.ndarray, bandwidth: np.ndarray) -> None:
    # Written as "not ok" masks so NaN counts as bad.
    bad_lat = ~((latency >= 0) & np.isfinite(latency))
    if bad_lat.any():
        raise TopologyError(f"latency must be finite and >= 0 seconds (got {latency[bad_lat][0]})")
    bad_bw = ~(bandwidth > 0)
    if bad_bw.any():
        raise TopologyError(f"bandwidth must be > 0 bytes/s (got {bandwidth[bad_bw][0]})")


def attach_links(G: nx.Graph, latency: LinkValue, bandwidth: LinkValue) -> nx.Graph:
    """Set ``latency`` (s) and ``bandwidth`` (bytes/s) on every edge, in place; returns G.

    Each of ``latency`` and ``bandwidth`` is a number for all edges or a
    callable ``f(n_edges) -> array`` of per-edge values. Edges are visited in
    sorted (min(u, v), max(u, v)) order, so seeded samplers give the same
    value to the same edge. Attributes already on an edge are kept; only
    missing ones are filled (the sampler still draws a value for every edge,
    so which edges had attributes does not shift the others' values).
    """
    edges = sorted((min(u, v), max(u, v)) for u, v in G.edges())
    drawn_lat = _link_values(latency, len(edges), "latency")
    drawn_bw = _link_values(bandwidth, len(edges), "bandwidth")
    lat = np.array([G.edges[e].get("latency", x) for e, x in zip(edges, drawn_lat)], dtype=np.float64)
    bw = np.array([G.edges[e].get("bandwidth", x) for e, x in zip(edges, drawn_bw)], dtype=np.float64)
    _check_links(lat, bw)
    for e, lv, bv in zip(edges, lat.tolist(), bw.tolist()):
        G.edges[e]["latency"] = lv
        G.edges[e]["bandwidth"] = bv
    return G


def edge_arrays(G: nx.Graph) -> dict[str, np.ndarray]:
    """Directed edge arrays (both directions of each edge), sorted by (src, dst).

    Keys: src, dst (int64), latency, bandwidth (float64; missing values are
    0.0 s and inf bytes/s), degree (int64, per node) and offsets (int64 CSR
    row pointers: node i's out-edges are rows offsets[i]:offsets[i+1]).
    """
    N = G.number_of_nodes()
    if G.is_directed() or set(G) != set(range(N)):
        raise TopologyError("edge_arrays needs an undirected graph on nodes 0..N-1; pass it through check_graph first")
    rows = [
        (u, v, float(d.get("latency", 0.0)), float(d.get("bandwidth", math.inf)))
        for u, v, d in G.edges(data=True)
        if u != v
    ]
    u = np.array([r[0] for r in rows], dtype=np.int64)
    v = np.array([r[1] for r in rows], dtype=np.int64)
    lat = np.array([r[2] for r in rows], dtype=np.float64)
    bw = np.array([r[3] for r in rows], dtype=np.float64)
    src = np.concatenate([u, v])
    dst = np.concatenate([v, u])
    order = np.lexsort((dst, src))
    degree = np.bincount(src, minlength=N).astype(np.int64)
    offsets = np.zeros(N + 1, dtype=np.int64)
    np.cumsum(degree, out=offsets[1:])
    return {
        "src": src[order],
        "dst": dst[order],
        "latency": np.concatenate([lat, lat])[order],
        "bandwidth": np.concatenate([bw, bw])[order],
        "degree": degree,
        "offsets": offsets,
    }


def link_delay(latency, bandwidth, n_bytes: float):
    """Seconds for a message of n_bytes to cross links: latency + bytes / bandwidth."""
    return latency + n_bytes / bandwidth
