"""The engine: waves by instant and kind, priorities, batching on/off, link delays."""
import networkx as nx
import pytest

from simulator.engine import Engine


def _trace(batching):
    eng = Engine(batching=batching, record=True)
    calls = []

    def ping(t, nodes, p):
        calls.append(("ping", t, nodes.tolist(), p["key"].tolist()))
        if t < 2:  # each wave schedules the next, one unit later, plus a same-instant 'pong'
            eng.schedule("ping", t + 1.0, nodes + 1, key=nodes)
            eng.schedule("pong", t, nodes)

    def pong(t, nodes, p):
        calls.append(("pong", t, nodes.tolist(), p["key"].tolist()))

    eng.on("ping", ping, priority=1)
    eng.on("pong", pong, priority=2)
    eng.schedule("ping", [0.5, 0.5, 0.5, 1.0], [3, 1, 3, 2], key=[9, 0, 4, 0])
    eng.run()
    return eng, calls


def test_waves_are_sorted_by_node_and_key_and_kinds_follow_priority():
    eng, calls = _trace(True)
    assert calls[0] == ("ping", 0.5, [1, 3, 3], [0, 4, 9])
    assert calls[1] == ("pong", 0.5, [1, 3, 3], [0, 0, 0])
    assert [c[1] for c in calls] == sorted(c[1] for c in calls)
    assert eng.calls == len(calls)


def test_unbatched_engine_sees_the_same_events_in_the_same_order_one_node_per_call():
    batched, calls_b = _trace(True)
    single, calls_s = _trace(False)
    assert batched.log == single.log
    assert single.calls > batched.calls
    assert all(len(set(c[2])) == 1 for c in calls_s)  # one node per handler call


def test_resolution_rounds_event_times_up_to_ticks():
    eng = Engine(resolution=1.0, record=True)
    seen = []
    eng.on("a", lambda t, n, p: seen.append((t, n.tolist())), 0)
    eng.schedule("a", [0.2, 0.9, 1.0, 1.1], [0, 1, 2, 3])
    eng.run()
    assert seen == [(1.0, [0, 1, 2]), (2.0, [3])]


def test_stop_ends_the_run_and_past_events_are_refused():
    eng = Engine()
    seen = []

    def h(t, nodes, p):
        seen.append(t)
        eng.schedule("a", t + 1, nodes)
        if t >= 3:
            eng.stop()

    eng.on("a", h, 0)
    eng.schedule("a", 0.0, 0)
    eng.run()
    assert seen == [0.0, 1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="past"):
        eng.schedule("a", 1.0, 0)


def test_message_arrival_is_send_time_plus_latency_plus_bytes_over_bandwidth(tiny):
    G = nx.path_graph(3)  # 0 - 1 - 2 with its own link attributes
    nx.set_edge_attributes(G, {(0, 1): 0.5, (1, 2): 0.25}, "latency")
    nx.set_edge_attributes(G, {(0, 1): 1000.0, (1, 2): 2000.0}, "bandwidth")
    res = tiny(["nodes=3", "rounds=1", "protocol=gossip", "model=logreg", "speed=100",
                "train.batch_size=8", "train.local_steps=1", "sim.record_events=true"], graph=G)
    n_bytes = (64 * 10 + 10) * 4
    train_end = 8 / 100
    deliveries = {(src, dst): t for t, kind, dst, src in res.event_log if kind == "deliver"}
    expected = {(0, 1): 0.5 + n_bytes / 1000, (1, 0): 0.5 + n_bytes / 1000,
                (1, 2): 0.25 + n_bytes / 2000, (2, 1): 0.25 + n_bytes / 2000}
    assert deliveries.keys() == expected.keys()
    for edge, delay in expected.items():
        assert deliveries[edge] == pytest.approx(train_end + delay, abs=1e-12)
    assert res.summary["sim_time_s"] == pytest.approx(train_end + 0.5 + n_bytes / 1000)


def test_one_handler_per_kind_and_scheduling_needs_a_handler():
    eng = Engine()
    eng.on("a", lambda t, n, p: None, 0)
    with pytest.raises(ValueError, match="already has a handler"):
        eng.on("a", lambda t, n, p: None, 1)
    with pytest.raises(KeyError, match="no handler"):
        eng.schedule("b", 1.0, 0)


def test_run_ends_when_no_event_is_left_and_at_until():
    eng = Engine()
    seen = []
    eng.on("a", lambda t, n, p: seen.append(t), 0)
    eng.schedule("a", [1.0, 2.0, 5.0], [0, 1, 2])
    eng.run(until=2.5)
    assert seen == [1.0, 2.0]
    eng.run()  # nothing stops it but the empty queue
    assert seen == [1.0, 2.0, 5.0] and eng.now == 5.0
