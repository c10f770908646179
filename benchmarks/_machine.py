"""The header every benchmark prints: the exact command and the machine it ran on."""
from __future__ import annotations

import os
import platform
import shlex
import sys

import torch


def set_threads(n: int | None) -> None:
    """Pin torch's intra-op threads here and, through OMP_NUM_THREADS, in child processes."""
    if n:
        os.environ["OMP_NUM_THREADS"] = str(n)
        torch.set_num_threads(n)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def header(title: str) -> str:
    cmd = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    return "\n".join([
        f"## {title}", "",
        f"- command: `{cmd}`",
        f"- machine: {cpu_model()}, {os.cpu_count()} logical cores, {platform.system()}",
        f"- python {platform.python_version()}, torch {torch.__version__}, "
        f"torch threads {torch.get_num_threads()}", ""])


def table(columns: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)
