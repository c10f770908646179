import os
import tempfile

import networkx as nx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import topologies.graphs as graphs
from messages import one_line
from topologies import TOPOLOGIES, TopologyError, attach_links, build_graph, check_graph, edge_arrays


def rng(seed=0):
    return np.random.default_rng(seed)


def edges_of(G):
    return sorted((min(u, v), max(u, v)) for u, v in G.edges())


def degrees(G):
    return sorted(d for _, d in G.degree())


def test_complete():
    G = build_graph("complete", 10, rng())
    assert list(G.nodes) == list(range(10))
    assert G.number_of_edges() == 10 * 9 // 2


def test_star_hub_is_node_zero():
    G = build_graph("star", 12, rng())
    assert G.degree(0) == 11
    assert all(G.degree(i) == 1 for i in range(1, 12))
    assert G.number_of_edges() == 11


def test_ring():
    G = build_graph("ring", 9, rng())
    assert set(G.nodes) == set(range(9))
    assert degrees(G) == [2] * 9
    assert nx.is_connected(G)


def test_random_regular():
    G = build_graph("random_regular", 20, rng(), degree=4)
    assert set(G.nodes) == set(range(20))
    assert degrees(G) == [4] * 20
    assert nx.number_of_selfloops(G) == 0


def test_erdos_renyi_extremes():
    assert build_graph("erdos_renyi", 15, rng(), p=1.0).number_of_edges() == 15 * 14 // 2
    G = build_graph("erdos_renyi", 15, rng(), p=0.0)
    assert G.number_of_nodes() == 15 and G.number_of_edges() == 0


def test_small_world_is_connected_with_ring_lattice_edge_count():
    G = build_graph("small_world", 30, rng(), k=4, p=0.2)
    assert set(G.nodes) == set(range(30))
    assert nx.is_connected(G)
    # Rewiring moves edges but keeps their number at n*k/2.
    assert G.number_of_edges() == 30 * 4 // 2


def test_scale_free_edge_count():
    n, m = 40, 3
    G = build_graph("scale_free", n, rng(), m=m)
    assert set(G.nodes) == set(range(n))
    assert G.number_of_edges() == (n - m) * m
    assert min(d for _, d in G.degree()) >= m


def test_torus():
    G = build_graph("torus", 16, rng())
    assert set(G.nodes) == set(range(16))
    assert degrees(G) == [4] * 16
    assert G.number_of_edges() == 32
    # 4x4 row-major: node 0 wraps to 3 (same row) and 12 (same column).
    assert set(G[0]) == {1, 3, 4, 12}


def test_torus_non_square():
    G = build_graph("torus", 12, rng())  # 3 x 4
    assert degrees(G) == [4] * 12


def test_torus_prime_suggests_factorable_nodes():
    with pytest.raises(TopologyError, match=r"nodes=7.*nodes=6 or nodes=8"):
        build_graph("torus", 7, rng())


def test_every_name_builds(tmp_path):
    path = tmp_path / "g.txt"
    path.write_text("".join(f"{i} {(i + 1) % 16}\n" for i in range(16)))
    for name in TOPOLOGIES:
        G = build_graph(name, 16, rng(), degree=4, path=str(path))
        assert list(G.nodes) == list(range(16)), name
        assert not G.is_directed(), name
        assert nx.number_of_selfloops(G) == 0, name


@pytest.mark.parametrize("name", ["random_regular", "erdos_renyi", "small_world", "scale_free"])
def test_same_seed_same_graph(name):
    a = build_graph(name, 50, rng(7), degree=4, p=0.2)
    b = build_graph(name, 50, rng(7), degree=4, p=0.2)
    assert edges_of(a) == edges_of(b)


def test_different_seed_different_graph():
    a = build_graph("random_regular", 50, rng(1), degree=4)
    b = build_graph("random_regular", 50, rng(2), degree=4)
    assert edges_of(a) != edges_of(b)


def test_rng_consumption_does_not_depend_on_topology():
    r1, r2 = rng(3), rng(3)
    build_graph("ring", 10, r1)
    build_graph("random_regular", 10, r2, degree=4)
    assert r1.integers(2**31) == r2.integers(2**31)


def test_edgelist_round_trip(tmp_path):
    G = build_graph("random_regular", 12, rng(), degree=3)
    path = tmp_path / "edges.txt"
    with open(path, "w") as f:
        f.write("# a comment line\n\n")
        for u, v in G.edges():
            f.write(f"{v}\t{u}   # reversed, tab-separated, commented\r\n")
    H = build_graph("edgelist", 12, rng(), path=str(path))
    assert edges_of(H) == edges_of(G)
    assert list(H.nodes) == list(range(12))


def test_edgelist_ids_are_used_as_they_are(tmp_path):
    # No relabelling: a file's ids are the node ids, so 100, 110, ... are out of range for 12 nodes.
    path = tmp_path / "shifted.txt"
    path.write_text("100 110\n110 120\n")
    with pytest.raises(TopologyError) as info:
        build_graph("edgelist", 12, rng(), path=str(path))
    one_line(info, str(path), "line 1", "node 100", "0..11")


def test_edgelist_missing_file(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(TopologyError, match="edgelist file not found: .*nope.txt"):
        build_graph("edgelist", 4, rng(), path=str(missing))


def test_edgelist_node_count_mismatch(tmp_path):
    path = tmp_path / "e.txt"
    path.write_text("0 1\n1 2\n")
    with pytest.raises(TopologyError) as info:
        build_graph("edgelist", 5, rng(), path=str(path))
    one_line(info, str(path), "nodes 0..2", "nodes=5; set nodes=3")


def test_edgelist_bad_labels(tmp_path):
    path = tmp_path / "e.txt"
    path.write_text("a b\n")
    with pytest.raises(TopologyError, match="could not parse"):
        build_graph("edgelist", 2, rng(), path=str(path))


def test_edgelist_needs_path():
    with pytest.raises(TopologyError, match="topology.path"):
        build_graph("edgelist", 4, rng())


def test_self_loops_removed(tmp_path):
    path = tmp_path / "e.txt"
    path.write_text("0 0\n0 1\n1 2\n")
    G = build_graph("edgelist", 3, rng(), path=str(path))
    assert nx.number_of_selfloops(G) == 0
    assert edges_of(G) == [(0, 1), (1, 2)]


@pytest.mark.parametrize(
    "name, kwargs, pattern",
    [
        ("random_regular", {"degree": 0}, "degree"),
        ("random_regular", {"degree": 10}, "degree"),
        ("random_regular", {"degree": 3}, "nodes\\*degree even"),
        ("erdos_renyi", {"p": 1.5}, "0 <= p <= 1"),
        ("erdos_renyi", {"p": -0.1}, "0 <= p <= 1"),
        ("small_world", {"p": 2.0}, "0 <= p <= 1"),
        ("small_world", {"k": 3}, "even k"),
        ("small_world", {"k": 10}, "k < nodes"),
        ("scale_free", {"m": 0}, "1 <= m < nodes"),
        ("scale_free", {"m": 9}, "1 <= m < nodes"),
    ],
)
def test_bad_parameters(name, kwargs, pattern):
    n = 9 if kwargs == {"degree": 3} or kwargs == {"m": 9} else 10
    with pytest.raises(TopologyError, match=pattern):
        build_graph(name, n, rng(), **kwargs)


def test_irrelevant_parameters_are_not_checked():
    # degree=8 default must not stop a 4-node ring.
    assert build_graph("ring", 4, rng(), degree=8, p=5.0, m=100).number_of_edges() == 4


def test_unknown_name_and_bad_n():
    with pytest.raises(TopologyError, match="unknown topology 'mesh'.*random_regular"):
        build_graph("mesh", 4, rng())
    with pytest.raises(TopologyError, match="nodes must be an integer >= 1"):
        build_graph("ring", 0, rng())


def test_check_graph_disconnected():
    G = nx.Graph()
    G.add_nodes_from(range(6))
    G.add_edges_from([(0, 1), (2, 3), (4, 5)])
    with pytest.raises(TopologyError, match=r"disconnected \(3 components\).*allow_disconnected"):
        check_graph(G)
    assert check_graph(G, allow_disconnected=True) is G


def test_check_graph_isolated_node_is_an_error():
    G = nx.path_graph(4)
    G.add_node(4)
    with pytest.raises(TopologyError, match="disconnected"):
        check_graph(G)


def test_check_graph_node_count():
    with pytest.raises(TopologyError, match="graph has 5 nodes but nodes=6"):
        check_graph(nx.path_graph(5), n=6)
    assert check_graph(nx.path_graph(5), n=5).number_of_nodes() == 5


def test_check_graph_relabels_string_nodes():
    G = nx.Graph([("b", "c"), ("a", "b")])
    G.edges["a", "b"]["latency"] = 0.5
    H = check_graph(G)
    assert set(H.nodes) == {0, 1, 2}
    # Sorted order: a->0, b->1, c->2.
    assert edges_of(H) == [(0, 1), (1, 2)]
    assert H.edges[0, 1]["latency"] == 0.5
    assert set(G.nodes) == {"a", "b", "c"}  # the user's graph is untouched


def test_check_graph_unsortable_labels():
    G = nx.Graph([("x", 1), (1, (2, 3))])
    H = check_graph(G)
    assert set(H.nodes) == {0, 1, 2}
    assert H.number_of_edges() == 2


def test_check_graph_directed_becomes_undirected():
    D = nx.DiGraph([(0, 1), (1, 2), (2, 1)])
    H = check_graph(D)
    assert not H.is_directed()
    assert edges_of(H) == [(0, 1), (1, 2)]


def test_attach_links_constants():
    G = attach_links(nx.cycle_graph(5), 0.01, 1e6)
    assert all(d["latency"] == 0.01 and d["bandwidth"] == 1e6 for _, _, d in G.edges(data=True))


def test_attach_links_callable_in_sorted_edge_order():
    G = nx.Graph()
    G.add_edges_from([(3, 1), (0, 2), (2, 1)])  # insertion order differs from sorted order
    calls = []

    def lat(n_edges):
        calls.append(n_edges)
        return np.arange(n_edges, dtype=float)

    attach_links(G, lat, lambda n_edges: np.full(n_edges, 5.0))
    assert calls == [3]
    # Sorted edges: (0, 2), (1, 2), (1, 3) -> 0, 1, 2.
    assert G.edges[0, 2]["latency"] == 0.0
    assert G.edges[1, 2]["latency"] == 1.0
    assert G.edges[1, 3]["latency"] == 2.0
    assert all(d["bandwidth"] == 5.0 for _, _, d in G.edges(data=True))


def test_attach_links_keeps_existing_attributes():
    G = nx.path_graph(3)
    G.edges[0, 1]["latency"] = 0.7
    attach_links(G, 0.1, 100.0)
    assert G.edges[0, 1]["latency"] == 0.7
    assert G.edges[1, 2]["latency"] == 0.1
    assert G.edges[0, 1]["bandwidth"] == 100.0


def test_attach_links_rejects_bad_values():
    with pytest.raises(TopologyError, match="latency"):
        attach_links(nx.path_graph(3), -1.0, 1.0)
    with pytest.raises(TopologyError, match="bandwidth"):
        attach_links(nx.path_graph(3), 0.0, 0.0)
    with pytest.raises(TopologyError, match="bandwidth"):
        attach_links(nx.path_graph(3), 0.0, lambda n: np.array([1.0, np.nan]))
    with pytest.raises(TopologyError, match="latency sampler returned shape"):
        attach_links(nx.path_graph(3), lambda n: np.zeros(n + 1), 1.0)


def test_edge_arrays():
    G = build_graph("scale_free", 30, rng(), m=2)
    lat = np.random.default_rng(1).uniform(0.0, 1.0, G.number_of_edges())
    attach_links(G, lambda n: lat, 1e6)
    a = edge_arrays(G)
    E = G.number_of_edges()
    for key in ("src", "dst", "latency", "bandwidth"):
        assert len(a[key]) == 2 * E
    assert a["src"].dtype == np.int64 and a["dst"].dtype == np.int64
    assert a["latency"].dtype == np.float64 and a["bandwidth"].dtype == np.float64
    pairs = list(zip(a["src"].tolist(), a["dst"].tolist()))
    assert pairs == sorted(pairs)
    assert set(pairs) == {(u, v) for u, v in G.edges()} | {(v, u) for u, v in G.edges()}
    assert a["degree"].tolist() == [G.degree(i) for i in range(30)]
    assert a["offsets"][0] == 0 and a["offsets"][-1] == 2 * E
    assert np.array_equal(np.diff(a["offsets"]), a["degree"])
    for i in range(30):
        rows = slice(a["offsets"][i], a["offsets"][i + 1])
        assert np.all(a["src"][rows] == i)
        assert sorted(a["dst"][rows].tolist()) == sorted(G[i])
    # Both directions of an edge carry the same latency as the graph.
    for s, d, lv in zip(a["src"].tolist(), a["dst"].tolist(), a["latency"].tolist()):
        assert lv == G.edges[s, d]["latency"]


def test_edge_arrays_defaults_and_isolated_nodes():
    G = nx.Graph()
    G.add_nodes_from(range(4))
    G.add_edge(1, 2)
    a = edge_arrays(G)
    assert a["src"].tolist() == [1, 2] and a["dst"].tolist() == [2, 1]
    assert a["latency"].tolist() == [0.0, 0.0]
    assert np.all(np.isinf(a["bandwidth"]))
    assert a["degree"].tolist() == [0, 1, 1, 0]
    assert a["offsets"].tolist() == [0, 0, 1, 2, 2]


# ---- every bad edge-list file is one TopologyError line naming the file ----


def edgelist_error(tmp_path, content, n=4, *needles):
    path = tmp_path / "edges.txt"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(TopologyError) as info:
        build_graph("edgelist", n, rng(), path=str(path))
    return one_line(info, f"edgelist file {path}", *needles)


@pytest.mark.parametrize(
    "content, needles",
    [
        ("", ["has no edges", "'u v'", "0..nodes-1"]),
        ("# only a comment\n\n   \n", ["has no edges"]),
        ("0 0\n3 3\n", ["has only self loops"]),
        (bytes(range(256)) * 8, ["binary data, not text"]),
        (b"0 1\n\xff\xfe 2 3\n", ["line 2 is not UTF-8"]),
        ("0 1\n1\n", ["line 2", "'1'", "two integer node ids"]),
        ("0 1\n1 2 3\n", ["line 2", "'1 2 3'"]),
        ("0 1\n# c\n\n1 2.0\n", ["line 4", "'1 2.0'"]),
        ("0,1\n", ["line 1", "'0,1'"]),
        ("0 1\n0x1 2\n", ["line 2"]),
        ("0 1\n" + "1 " + "2" * 100 + "\n", ["line 2", "..."]),  # long lines are cut short
        ("0 1\n-1 2\n", ["line 2", "node -1", "node ids are 0..3"]),
        ("0 1\n1 4\n", ["line 2", "node 4", "nodes=4", "0..3"]),
        ("1 2\n2 3\n3 4\n4 1\n", ["line 3", "node 4"]),  # a 1-based file
        ("0 1\n1 " + "9" * 5000 + "\n", ["line 2", "node 9999999"]),  # too many digits for int()
        ("0 1\n1 -" + "9" * 5000 + "\n", ["line 2", "node -999999"]),
        ("0 1\n1 2\n", ["nodes 0..2 at most but nodes=4; set nodes=3"]),
    ],
)
def test_edgelist_bad_files_are_one_line_errors(tmp_path, content, needles):
    message = edgelist_error(tmp_path, content, 4, *needles)
    assert "nodes=0" not in message


def test_empty_edgelist_with_default_nodes_names_no_edges(tmp_path):
    message = edgelist_error(tmp_path, "", 100, "has no edges")
    assert "set nodes" not in message


def test_edgelist_directory(tmp_path):
    with pytest.raises(TopologyError) as info:
        build_graph("edgelist", 4, rng(), path=str(tmp_path))
    one_line(info, str(tmp_path), "is a directory", "topology.path")


def test_edgelist_path_with_newline_stays_one_line(tmp_path):
    with pytest.raises(TopologyError) as info:
        build_graph("edgelist", 4, rng(), path=str(tmp_path / "a\nb.txt"))
    one_line(info, "not found", "a\\nb.txt")


def test_edgelist_without_read_permission(tmp_path, monkeypatch):
    path = tmp_path / "edges.txt"
    path.write_text("0 1\n1 2\n2 3\n")
    os.chmod(path, 0)
    if os.access(path, os.R_OK):  # root reads anything: make open() refuse as it would for others
        def refuse(file, *args, **kwargs):
            raise PermissionError(13, "Permission denied", file)
        monkeypatch.setattr(graphs, "open", refuse, raising=False)
    with pytest.raises(TopologyError) as info:
        build_graph("edgelist", 4, rng(), path=str(path))
    one_line(info, str(path), "not readable (permission denied)")


def test_edgelist_self_loops_dropped_but_name_their_node(tmp_path):
    # "3 3" is no link, but it says the file is for 4 nodes; node 3 is then isolated.
    path = tmp_path / "e.txt"
    path.write_text("\ufeff0 1\n1 2\n1 0\n3 3\n")  # a byte-order mark, a repeated edge
    G = build_graph("edgelist", 4, rng(), path=str(path))
    assert list(G.nodes) == [0, 1, 2, 3] and edges_of(G) == [(0, 1), (1, 2)]
    with pytest.raises(TopologyError, match="disconnected"):
        check_graph(G, 4)
    assert check_graph(G, 4, allow_disconnected=True) is G


# Hypothesis: any bytes or lines in an edge-list file give a sound graph or one TopologyError line.

TOKENS = st.one_of(st.integers(-2, 7).map(str), st.sampled_from(["a", "1.5", "0x1", "+1", "#", "# 3 4", "\t", "١"]))
LINES = st.one_of(st.lists(TOKENS, max_size=4).map(" ".join), st.sampled_from(["", "# comment", "\r"]))


@st.composite
def edgelist_files(draw):
    """(file bytes, nodes): random bytes, random lines, or a valid edge list with one line swapped
    for a random one, or left valid."""
    n = draw(st.integers(1, 7))
    kind = draw(st.sampled_from(["bytes", "lines", "swapped", "valid", "valid"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300)), n
    if kind == "lines":
        return "\n".join(draw(st.lists(LINES, max_size=10))).encode(), n
    pairs = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), min_size=1, max_size=12))
    seps = draw(st.lists(st.sampled_from([" ", "\t", "  "]), min_size=len(pairs), max_size=len(pairs)))
    lines = [f"{u}{sep}{v}" for (u, v), sep in zip(pairs, seps)]
    if kind == "swapped":
        lines[draw(st.integers(0, len(lines) - 1))] = draw(LINES)
    return "\n".join(lines).encode() + draw(st.sampled_from([b"", b"\n", b"\r\n"])), n


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=edgelist_files())
def test_any_edgelist_builds_soundly_or_is_one_topology_error(case):
    content, n = case
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "drawn.txt")
        with open(path, "wb") as f:
            f.write(content)
        try:
            G = build_graph("edgelist", n, rng(), path=path)
        except TopologyError as err:
            assert str(err) and "\n" not in str(err) and "edgelist file" in str(err), str(err)
            return
    assert list(G.nodes) == list(range(n)) and nx.number_of_selfloops(G) == 0 and G.number_of_edges() > 0
    pairs = set()  # what the file says, read independently
    for line in content.decode("utf-8-sig").split("\n"):
        ids = line.split("#")[0].split()
        if ids:
            u, v = map(int, ids)
            pairs.add((min(u, v), max(u, v)))
    assert set(edges_of(G)) == {(u, v) for u, v in pairs if u != v}
    assert max(max(p) for p in pairs) == n - 1
