"""Benchmark (d): batched local training throughput and sparse gossip mixing.

Training: MLPs 64-H-10 (H = 32 and 256), one SGD step for every node on its own minibatch,
through kernels.local_sgd (minibatch sampling + gather + grad + update) and through
BatchedModel.grad + sgd_update on a pre-gathered batch. Both ceilings are measured in the same
run: a dense fp32 matmul (compute) and a large tensor copy (memory bandwidth); each step is
reported against the roofline min(matmul peak, intensity x bandwidth), with the intensity its
FLOPs over the bytes a step must move at the least (see `step_bytes`). Mixing:
kernels.sum_rows_into (the mailbox's blocked sum) against the sparse product it replaced and a gather + index_add_ baseline.

    python benchmarks/bench_kernels.py
    python benchmarks/bench_kernels.py --nodes 50 --mix-nodes 500 --steps 3   # smoke test
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from _machine import header, set_threads, table
from kernels import MLP, BatchedModel, SGDConfig, local_sgd, sgd_update, sum_rows_into

def timeit(fn, warmup: int, reps: int) -> float:
    """Median seconds of one call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def step_bytes(n: int, B: int, F: int, H: int, C: int, P: int) -> float:
    """The least bytes one SGD step on n nodes moves (float32): parameters read by the forward
    and the backward pass, gradients written then read by the update, parameters read and
    written by the update (6 P), the minibatch (B F) and the activations (B (H + C), written
    forward, read backward)."""
    return 4.0 * n * (6 * P + B * F + 2 * B * (H + C))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--hiddens", type=int, nargs="+", default=[32, 256])
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--samples", type=int, default=64, help="training samples per node")
    ap.add_argument("--steps", type=int, default=10, help="timed repetitions")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--matmul", type=int, default=2048, help="dense matmul size")
    ap.add_argument("--copy-mb", type=int, default=512, help="size of the tensor copied for the bandwidth")
    ap.add_argument("--mix-nodes", type=int, default=10000)
    ap.add_argument("--degree", type=int, default=8)
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    set_threads(args.threads)
    torch.manual_seed(0)
    n, F, C = args.nodes, 64, 10

    a, b = torch.randn(args.matmul, args.matmul), torch.randn(args.matmul, args.matmul)
    mm_gflops = 2 * args.matmul**3 / timeit(lambda: a @ b, args.warmup, args.steps) / 1e9
    big = torch.randn(args.copy_mb * 2**20 // 4)
    dst_big = torch.empty_like(big)
    bw_gbs = 2 * big.numel() * 4 / timeit(lambda: dst_big.copy_(big), args.warmup, args.steps) / 1e9
    del big, dst_big

    rows = []
    for H in args.hiddens:
        model = BatchedModel(MLP(F, C, (H,)))
        P = model.layout.size
        params = torch.randn(n, P) * 0.05
        buf = torch.zeros(n, 0)  # momentum 0: SGD keeps no buffer (as the Fleet does)
        X, y = torch.randn(n * args.samples, F), torch.randint(0, C, (n * args.samples,))
        nodes = torch.arange(n)
        counter = torch.zeros(n, dtype=torch.long)
        offsets, sizes = nodes * args.samples, torch.full((n,), args.samples)
        one_step = torch.ones(n, dtype=torch.long)
        cfg = SGDConfig(lr=0.01)
        for B in args.batches:
            flop = 6 * B * (F * H + H * C) * n
            roof = min(mm_gflops, flop / step_bytes(n, B, F, H, C, P) * bw_gbs)
            xb, yb = torch.randn(n, B, F), torch.randint(0, C, (n, B))

            def step_local_sgd():
                local_sgd(model, params, buf, X, y, nodes, counter, offsets, sizes, one_step, B, cfg, seed=0)

            def step_grad_update():
                grads, _ = model.grad(params, xb, yb)
                sgd_update(params, buf, grads, cfg)

            for label, fn in (("local_sgd", step_local_sgd), ("grad + sgd_update", step_grad_update)):
                t = timeit(fn, args.warmup, args.steps)
                gf = flop / t / 1e9
                target = 0.30 if B <= 8 else 0.50
                rows.append([f"{n:,}", f"{F}-{H}-{C}", B, label, f"{1e3 * t:.1f}", f"{gf:.1f}",
                             f"{roof:.1f}", f"{gf / roof:.2f}", f">= {target}: {'yes' if gf / roof >= target else 'NO'}"])
        del params, X, y

    # mixing: every node sums its in-neighbours' rows (4 random permutations and their
    # inverses: `degree` in-edges per node, like a random regular graph)
    m, Pm = args.mix_nodes, BatchedModel(MLP(F, C, (32,))).layout.size  # 2,410 (MLP 64-32-10)
    perms = [torch.randperm(m) for _ in range(args.degree // 2)]
    src = torch.cat([p for p in perms] + [torch.argsort(p) for p in perms])
    dst = torch.arange(m).repeat(len(perms) * 2)
    dst, src = torch.unique(torch.stack([dst, src]), dim=1)  # a graph: no (receiver, sender) pair twice
    models = torch.randn(m, Pm)
    def sparse_mm():  # the mailbox's kernel before issue 12: a sparse incidence matrix product
        ind = torch.sparse_coo_tensor(torch.stack([dst, src]), torch.ones(len(dst)), (m, m)).coalesce()
        return torch.sparse.mm(ind, models)

    t_blocks = timeit(lambda: sum_rows_into(dst, src, models, m), args.warmup, args.steps)
    t_sparse = timeit(sparse_mm, args.warmup, args.steps)
    t_dense = timeit(lambda: torch.zeros(m, Pm).index_add_(0, dst, models[src]), args.warmup, args.steps)
    same = (torch.equal(sum_rows_into(dst, src, models, m), sparse_mm())
            and torch.allclose(sparse_mm(), torch.zeros(m, Pm).index_add_(0, dst, models[src]), atol=1e-4))

    print(header("(d) Kernels: batched local training and gossip mixing"))
    print(f"- dense fp32 matmul {args.matmul}x{args.matmul}: {mm_gflops:.1f} GFLOP/s "
          f"(2*n^3 FLOPs, median of {args.steps})")
    print(f"- tensor copy of {args.copy_mb} MB: {bw_gbs:.1f} GB/s (bytes read + written, median of {args.steps})")
    print(f"- training FLOPs per node per step: 6 * batch * ({F}*H + H*{C}) "
          "(2 forward + 4 backward per multiply-add weight; biases, loss and update not counted)")
    print("- roofline: min(matmul, FLOPs / step_bytes x bandwidth); step_bytes counts the parameters read "
          "twice (forward, backward), the gradients written and read, the parameters updated (read + write), "
          "the minibatch read and the activations written and read")
    print(f"- one SGD step on every node, median of {args.steps} after {args.warmup} warm-up; "
          f"local_sgd includes minibatch sampling and the X[idx] gather\n")
    print(table(["nodes", "MLP", "batch", "path", "ms / step", "GFLOP/s", "roofline GFLOP/s", "/ roofline",
                 "target"], rows))
    print(f"\nGossip mixing: {m:,} nodes, {args.degree} in-edges each ({dst.numel():,} edges), "
          f"{Pm:,} parameters, median of {args.steps}; results agree (the two sums bit for bit): {same}\n")
    print(table(["kernel", "ms", "speed-up over baseline"], [
        ["kernels.sum_rows_into (destination blocks, slot by slot)", f"{1e3 * t_blocks:.1f}",
         f"{t_dense / t_blocks:.2f}x"],
        ["sparse COO incidence matrix x rows (before issue 12)", f"{1e3 * t_sparse:.1f}", f"{t_dense / t_sparse:.2f}x"],
        ["gather rows[src] + index_add_ (baseline)", f"{1e3 * t_dense:.1f}", "1.00x"],
    ]))


if __name__ == "__main__":
    main()
