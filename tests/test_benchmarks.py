"""The benchmark scripts that no session can run in full here still run: benchmarks/gpu.py (the
GPU path) at small sizes on the CPU, so the day a GPU machine is at hand it is ready."""
import subprocess
import sys
from pathlib import Path


BENCH = Path(__file__).parent.parent / "benchmarks"


def test_the_gpu_script_runs_on_the_cpu_at_small_sizes():
    p = subprocess.run([sys.executable, "gpu.py", "--device", "cpu", "--equality-device", "cpu", "--sizes", "500",
                        "--rounds", "2", "--timeout", "200"], cwd=BENCH, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    out = p.stdout
    assert out.count("| yes |") == 7 and "| NO |" not in out  # every equality scenario agrees
    assert "| 500 | 2 |" in out and "completed" in out


def test_the_sweep_benchmark_runs_at_a_small_size():
    p = subprocess.run([sys.executable, "bench_sweep.py", "--protocols", "gossip", "--seeds", "2", "--nodes", "10",
                        "--rounds", "1", "--threads", "1"], cwd=BENCH, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "| side by side (default: joblib) | 1 |" in p.stdout
    assert "identical in 2 of 2 jobs" in p.stdout  # one thread each: the same numbers bit for bit
