"""Sweep reports (murmur-report), TensorBoard logging and graph.png."""
from __future__ import annotations

import csv
import json
import math
import statistics
import sys

import networkx as nx
import numpy as np
import pytest

from scenarios import ConfigError
from simulator.metrics import Recorder, plot_graph
from simulator.report import flatten, group_jobs, load_jobs, main, swept_keys, write_report

COLUMNS = ["round", "sim_time_s", "accuracy_mean", "accuracy_min", "loss_mean", "consensus_distance", "bytes_sent"]


def fake_job(sweep, name, *, lr, seed, acc, times=None, status="completed", protocol="gossip", **cfg):
    """A job directory as a run leaves it: summary.json (the resolved config) and metrics.csv."""
    d = sweep / name
    d.mkdir(parents=True)
    times = times or [float(i) for i in range(len(acc))]
    config = {"protocol": {"name": protocol, **({"beta": 0.5} if protocol == "gossip" else {"fraction": 1.0})},
              "train": {"lr": lr, "batch_size": 8}, "model": {"hidden": [32]}, "nodes": 8, "seed": seed,
              "label": "", "resume": None,
              # never reasons to tell runs apart: differ per job on purpose
              "sim": {"progress": seed % 2 == 0, "checkpoint_every": seed}, "log": {"tensorboard": seed == 1}}
    for k, v in cfg.items():
        config[k] = v
    (d / "summary.json").write_text(json.dumps({
        "status": status, "status_detail": "" if status == "completed" else "an error",
        "config": config, "headline": "accuracy", "label": "", "seed": seed, "final": {}}))
    with open(d / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for i, (t, a) in enumerate(zip(times, acc)):
            w.writerow([i, t, a, a - 0.1 * seed - 0.05, 2.0 - a + lr, "" if protocol == "fedavg" else 1.0 + seed,
                        1000 * i * (seed + 1)])
    return d


RUNS = {  # (lr, seed): accuracy at each evaluation
    (0.1, 0): [0.1, 0.3, 0.5, 0.6], (0.1, 1): [0.1, 0.4, 0.45, 0.55], (0.1, 2): [0.1, 0.2, 0.6, 0.7],
    (0.2, 0): [0.1, 0.6, 0.8, 0.9], (0.2, 1): [0.1, 0.5, 0.85, 0.85], (0.2, 2): [0.1, 0.7, 0.75, 0.95],
}


@pytest.fixture
def sweep(tmp_path):
    s = tmp_path / "sweep"
    for n, ((lr, seed), acc) in enumerate(RUNS.items()):
        fake_job(s, str(n), lr=lr, seed=seed, acc=acc)
    fake_job(s, "6", lr=0.2, seed=3, acc=[0.1, float("nan")], status="diverged")
    (s / "7" / ".hydra").mkdir(parents=True)  # a job killed before it wrote anything
    (s / "multirun.yaml").write_text("hydra: {}\n")
    return s


def read_csv(path):
    return {row["group"]: row for row in csv.DictReader(open(path))}


def by_hand(lr, col, target=None):
    """(mean, population std) over seeds of a column's final value, or of the time to target."""
    vals = []
    for (l, seed), acc in RUNS.items():
        if l != lr:
            continue
        final = {"accuracy_mean": acc[-1], "accuracy_min": acc[-1] - 0.1 * seed - 0.05,
                 "loss_mean": 2.0 - acc[-1] + lr, "consensus_distance": 1.0 + seed,
                 "bytes_sent": 1000 * (len(acc) - 1) * (seed + 1), "sim_time_s": len(acc) - 1.0}
        vals.append(next(i for i, a in enumerate(acc) if a >= target) if col == "time" else final[col])
    return statistics.fmean(vals), statistics.pstdev(vals)


def test_report_groups_by_swept_keys_and_averages_over_seeds(sweep):
    written = write_report(sweep)
    assert [p.name for p in written] == ["report.md", "report.csv", "report.png"]
    rows = read_csv(sweep / "report.csv")
    # seed, sim.progress, sim.checkpoint_every and log.* differ too: only train.lr tells groups apart
    assert list(rows) == ["train.lr=0.1", "train.lr=0.2"]
    assert "seed" not in rows["train.lr=0.1"] and "sim.progress" not in rows["train.lr=0.1"]
    assert rows["train.lr=0.2"]["train.lr"] == "0.2"
    assert [r["runs"] for r in rows.values()] == ["3", "3"]  # the diverged job is left out
    assert rows["train.lr=0.2"]["seeds"] == "0 1 2"
    for lr in (0.1, 0.2):
        row = rows[f"train.lr={lr}"]
        for col in ("accuracy_mean", "accuracy_min", "loss_mean", "consensus_distance", "bytes_sent", "sim_time_s"):
            mean, std = by_hand(lr, col)
            assert float(row[f"final_{col}"]) == pytest.approx(mean, rel=1e-12, abs=1e-12), col
            assert float(row[f"final_{col}_std"]) == pytest.approx(std, rel=1e-12, abs=1e-12), col
    # default target: 90% of the best group's mean final accuracy
    target = 0.9 * statistics.fmean([0.9, 0.85, 0.95])
    assert float(rows["train.lr=0.1"]["target"]) == pytest.approx(target)
    assert rows["train.lr=0.1"]["time_to_target"] == "inf" and rows["train.lr=0.1"]["reached"] == "0"
    mean, std = by_hand(0.2, "time", target)
    assert float(rows["train.lr=0.2"]["time_to_target"]) == pytest.approx(mean)
    assert float(rows["train.lr=0.2"]["time_to_target_std"]) == pytest.approx(std)
    md = (sweep / "report.md").read_text()
    assert "| train.lr | runs |" in md and "| 0.2 | 3 | 0.9 ± 0.04082 |" in md
    assert "- 6 (train.lr=0.2): diverged (an error)" in md
    assert "- 7: unfinished (no summary.json" in md
    assert (sweep / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_an_explicit_target_and_a_run_that_never_reaches_it(sweep):
    write_report(sweep, target=0.58)
    rows = read_csv(sweep / "report.csv")
    row = rows["train.lr=0.1"]  # seed 1 never reaches 0.58: the group's mean is inf, 2 of 3 reached
    assert row["target"] == "0.58" and row["time_to_target"] == "inf" and row["reached"] == "2"
    assert row["time_to_target_std"] == ""
    mean, std = by_hand(0.2, "time", 0.58)
    assert float(rows["train.lr=0.2"]["time_to_target"]) == pytest.approx(mean) == pytest.approx(4 / 3)
    assert "| never | 2/3 |" in (sweep / "report.md").read_text()


def test_the_same_jobs_give_the_same_report_whatever_their_folders(tmp_path):
    outputs = []
    for k, order in enumerate([list(RUNS), list(reversed(RUNS))]):
        s = tmp_path / str(k)
        for n, key in enumerate(order):
            fake_job(s, f"job{n}_{k}", lr=key[0], seed=key[1], acc=RUNS[key])
        write_report(s)
        write_report(s)  # and again: the report itself is not read as a job
        outputs.append((s / "report.csv").read_text())
    assert outputs[0] == outputs[1]


def test_groups_are_named_by_the_fewest_keys_that_tell_them_apart(tmp_path):
    s = tmp_path / "s"
    n = 0
    for protocol in ("gossip", "fedavg"):
        for nodes in (16, 8):
            for seed in (0, 1):
                fake_job(s, str(n), lr=0.1, seed=seed, acc=[0.1, 0.5 + 0.01 * nodes], protocol=protocol, nodes=nodes)
                n += 1
    jobs = load_jobs(s)
    keys = swept_keys([j.summary["config"] for j in jobs])
    assert keys == ["protocol.name", "protocol.beta", "nodes", "protocol.fraction"]  # config order
    groups, _ = group_jobs(jobs)
    # protocol.beta / .fraction follow from protocol.name; numbers sort by value
    assert [g.name for g in groups] == ["protocol.name=fedavg, nodes=8", "protocol.name=fedavg, nodes=16",
                                        "protocol.name=gossip, nodes=8", "protocol.name=gossip, nodes=16"]
    write_report(s)
    md = (s / "report.md").read_text()
    assert "swept: protocol.name, nodes; 2 more keys following from them" in md
    assert "| fedavg | 8 | 2 |" in md
    rows = read_csv(s / "report.csv")
    assert rows["protocol.name=fedavg, nodes=8"]["final_consensus_distance"] == ""  # not measured: blank


def test_one_group_when_only_the_seed_differs(tmp_path):
    s = tmp_path / "s"
    for seed in (0, 1):
        fake_job(s, str(seed), lr=0.1, seed=seed, acc=RUNS[0.1, seed])
    write_report(s)
    rows = read_csv(s / "report.csv")
    assert list(rows) == ["all runs"] and rows["all runs"]["runs"] == "2"


def test_flatten_keeps_lists_as_values():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": {}}) == {"a.b": 1, "a.c": [1, 2], "d": {}}


def test_a_sweep_where_no_run_completed_still_lists_them(tmp_path):
    s = tmp_path / "s"
    fake_job(s, "0", lr=0.1, seed=0, acc=[0.1], status="failed")
    assert [p.name for p in write_report(s)] == ["report.md", "report.csv"]
    assert "- 0: failed (an error)" in (s / "report.md").read_text()
    assert write_report(tmp_path / "empty_or_missing") == []


def one_line_error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("murmur-report: error: "), err
    assert "Traceback" not in err
    return err


def test_the_command_line(sweep, tmp_path, capsys):
    assert "no such directory" in one_line_error(capsys, [str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    assert "no runs found" in one_line_error(capsys, [str(tmp_path / "empty")])
    assert "it is one run" in one_line_error(capsys, [str(sweep / "0")])
    assert "no column 'evaluations'" in one_line_error(capsys, [str(sweep), "--x", "evaluations"])
    assert "--target must be a finite number" in one_line_error(capsys, [str(sweep), "--target", "nan"])
    assert "names no group of this sweep; its groups: train.lr=0.1; train.lr=0.2" in one_line_error(
        capsys, [str(sweep), "--reference", "fedavg"])
    (tmp_path / "file").write_text("")
    assert "not a directory" in one_line_error(capsys, [str(tmp_path / "file")])

    assert main([str(sweep), "--target", "0.58", "--title", "lr sweep", "--x", "round"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# lr sweep") and "murmur-report: wrote" in out
    assert read_csv(sweep / "report.csv")["train.lr=0.1"]["target"] == "0.58"


def test_the_command_reuses_the_options_of_the_sweeps_own_report(sweep, capsys):
    (sweep / "multirun.yaml").write_text(
        "hydra:\n  callbacks:\n    report:\n      _target_: simulator.report.SweepReport\n"
        "      reference: train.lr=0.2\n      title: from the sweep\n")
    assert main([str(sweep)]) == 0
    assert capsys.readouterr().out.startswith("# from the sweep")
    rows = read_csv(sweep / "report.csv")
    # the reference's mean final accuracy is the target; its own mean curve reaches it at its end
    assert float(rows["train.lr=0.1"]["target"]) == pytest.approx(0.9)
    assert rows["train.lr=0.2"]["time_to_reference_accuracy"] == "3.0"
    assert rows["train.lr=0.2"]["time_over_reference_duration"] == "1.0"


def test_a_real_sweep(tmp_path):
    from simulator import run
    for seed in (0, 1):
        run(overrides=["nodes=4", "rounds=2", "sim.progress=false", "train.local_steps=1", f"seed={seed}"],
            out_dir=tmp_path / f"seed{seed}")
    assert [p.name for p in write_report(tmp_path)] == ["report.md", "report.csv", "report.png"]
    rows = read_csv(tmp_path / "report.csv")
    finals = [json.loads((tmp_path / f"seed{s}" / "summary.json").read_text())["final"]["accuracy_mean"] for s in (0, 1)]
    assert rows["all runs"]["runs"] == "2"
    assert float(rows["all runs"]["final_accuracy_mean"]) == pytest.approx(np.mean(finals), rel=1e-12)


# ---- TensorBoard -----------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:curves.png not drawn")  # rows with a few columns only
def test_tensorboard_scalars_equal_metrics_csv(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    rec = Recorder(tmp_path, tensorboard=True)
    for r in range(3):
        rec.add({"round": r, "sim_time_s": 0.5 * r, "accuracy_mean": 0.1 + 0.3 * r, "bytes_sent": 123457 * r,
                 "train_loss": math.nan if r == 0 else 1.0 / r, "name": "x", "flag": True})
    rec.close({})
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert sorted(tags) == ["accuracy_mean", "bytes_sent", "round", "sim_time_s", "train_loss"]
    for tag in tags:
        want = [(int(row["round"]), float(row[tag])) for row in rows if row[tag] != ""]
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in want], tag
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6), tag  # float32 events


def test_tensorboard_off_or_without_a_directory_writes_nothing(tmp_path):
    Recorder(tmp_path).close({})
    assert not (tmp_path / "tensorboard").exists()
    rec = Recorder(None, tensorboard=True)
    rec.add({"round": 0, "accuracy_mean": 0.5})
    rec.close({})


def test_tensorboard_missing_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as when not installed
    with pytest.raises(ConfigError, match=r"log.tensorboard=true needs the tensorboard package: pip install"):
        Recorder(tmp_path, tensorboard=True)


# ---- graph.png --------------------------------------------------------------------------------
def test_a_small_graph_draws(tmp_path):
    g = nx.connected_watts_strogatz_graph(30, 4, 0.2, seed=1)
    title = plot_graph(g, np.arange(20), np.linspace(0, 1, 20), tmp_path / "graph.png", seed=0, title="ring")
    assert title == "ring"
    assert (tmp_path / "graph.png").read_bytes()[:4] == b"\x89PNG"
    # the same seed, the same picture
    plot_graph(g, np.arange(20), np.linspace(0, 1, 20), tmp_path / "again.png", seed=0, title="ring")
    assert (tmp_path / "graph.png").read_bytes() == (tmp_path / "again.png").read_bytes()


def test_a_large_graph_draws_a_seeded_sample(tmp_path):
    g = nx.random_regular_graph(6, 5000, seed=0)
    nodes = np.arange(0, 5000, 5)  # 1,000 nodes with values: all of them are drawn, 1,000 others
    title = plot_graph(g, nodes, np.linspace(0, 1, len(nodes)), tmp_path / "graph.png", seed=0, title="big")
    assert title.startswith("big\nsampled: 2,000 of 5,000 nodes")
    assert (tmp_path / "graph.png").stat().st_size > 10_000
