import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def tiny():
    """Run a small scenario through the Python API: tiny(["protocol=gossip", ...])."""
    from simulator import run

    def _run(overrides=(), **kwargs):
        base = ["nodes=10", "rounds=3", "sim.progress=false", "train.local_steps=1"]
        return run(overrides=base + list(overrides), **kwargs)

    return _run
