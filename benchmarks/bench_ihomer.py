"""Federated iHOMER at 1,000 nodes on the planted-block stream (50 labels): instances processed
per second across the federation and peak RSS, beside river's own single-stream classifier
chain (logistic regression per label) on the same instances, measured in the same process.

An instance is processed when it is predicted first (prequential) and then trained on: in
murmur, each round every node tests the rows that reached it since the last round, trains
`train.local_steps` minibatch steps, uploads its chain row and its count delta; the
coordinator pools the counts, runs ODAC and averages. river learns one instance at a time
(predict_one, then learn_one), so its rate is a single stream's.

    python benchmarks/bench_ihomer.py                     # as recorded in RESULTS.md
    python benchmarks/bench_ihomer.py --nodes 100 --river 500
"""
from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from _machine import header, set_threads


def river_chain(X: np.ndarray, Y: np.ndarray) -> float:
    """Instances per second of river's ClassifierChain (prequential: predict, then learn)."""
    from river import linear_model, multioutput

    model = multioutput.ClassifierChain(linear_model.LogisticRegression(), order=list(range(Y.shape[1])))
    names = [f"x{i}" for i in range(X.shape[1])]
    t0 = time.perf_counter()
    for x, y in zip(X, Y):
        xd = dict(zip(names, x.tolist()))
        model.predict_one(xd)
        model.learn_one(xd, {j: bool(v) for j, v in enumerate(y)})
    return len(X) / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--rows", type=int, default=100, help="stream rows per node")
    ap.add_argument("--river", type=int, default=2000, help="instances river learns")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--adwin", default="true")
    args = ap.parse_args()
    set_threads(args.threads)
    from clients.datasets import load_dataset
    from simulator import run

    n = args.nodes * args.rows
    ov = ["protocol=ihomer", "data=label_blocks", f"data.n_samples={n}", "data.n_labels=50", "data.block_size=5",
          f"nodes={args.nodes}", "data.stream_rate=1", "protocol.period=10", f"rounds={args.rows // 10}",
          "train.local_steps=2", "train.batch_size=8", "train.lr=0.5", "protocol.min_size=1",
          f"protocol.adwin={args.adwin}", "sim.progress=false", "eval.every=1000"]
    res = run(overrides=ov)
    rows = res.metrics[-1]
    loop = rows["wall_time_s"] - res.metrics[0]["wall_time_s"]
    ours = rows["instances"] / loop
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB (Linux)

    d = load_dataset("label_blocks", seed=0, n_samples=args.river, n_labels=50, block_size=5)
    theirs = river_chain(d.X_train, d.y_train)

    print(header("bench_ihomer: federated iHOMER, 50 labels"))
    print(f"- murmur: `murmur {' '.join(ov)}`")
    print(f"| | instances | seconds | instances/s |\n|---|---|---|---|")
    print(f"| murmur, {args.nodes} nodes (event loop) | {rows['instances']:,} | {loop:.2f} | {ours:,.0f} |")
    print(f"| murmur, whole process | {rows['instances']:,} | {res.summary['wall_time_s']:.2f} | "
          f"{rows['instances'] / res.summary['wall_time_s']:,.0f} |")
    print(f"| river ClassifierChain, one stream | {args.river:,} | {args.river / theirs:.2f} | {theirs:,.0f} |")
    print()
    print(f"- ratio (event loop / river): {ours / theirs:.1f}x")
    print(f"- peak RSS of the process: {rss:,.0f} MiB ({rss * 1024 / args.nodes:,.0f} KiB per node, all included)")
    print(f"- final prequential micro-F1 {rows['prequential_micro_f1']:.3f}, {rows['clusters']} clusters, "
          f"{rows['restructures']} partition changes, {rows['local_drifts']} local drift flags")


if __name__ == "__main__":
    main()
