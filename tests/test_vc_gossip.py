"""Variance-corrected gossip against the paper's formula (Tian et al. 2024) on small cases."""
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from kernels.variance import segment_indicator, segment_moments
from protocols.vc_gossip import vc_merge

# one row = a 2x3 weight (6 values) then a bias of 2: two tensors
S = segment_indicator([6, 2])
WEIGHTS_ONLY = torch.tensor([True, False])


def _vc(own, received, beta=0.5, corrected=WEIGHTS_ONLY, unbiased=False):
    """vc_merge for one node from its own row and a list of received rows."""
    rec = torch.stack(received)
    _, var = segment_moments(rec, S, unbiased=unbiased)
    return vc_merge(own.unsqueeze(0), rec.sum(0, keepdim=True), var.sum(0, keepdim=True),
                    torch.tensor([len(received)]), beta, S, corrected, unbiased=unbiased)[0]


def test_merge_equals_hand_computation():
    own = torch.tensor([1.0, 2, 3, 4, 5, 6, 0.5, -0.5])
    r1 = torch.tensor([0.0, 1, 0, 1, 0, 1, 1.0, 1.0])
    r2 = torch.tensor([2.0, 0, 2, 0, 2, 0, 0.0, 2.0])
    out = _vc(own, [r1, r2], beta=0.5)
    # by hand, weight tensor: W_bar = 0.5*own + 0.5*mean(r1, r2)
    w_bar = 0.5 * np.array([1, 2, 3, 4, 5, 6]) + 0.5 * np.array([1, 0.5, 1, 0.5, 1, 0.5])
    target = (np.var([0, 1, 0, 1, 0, 1]) + np.var([2, 0, 2, 0, 2, 0])) / 2  # 0.25 and 1.0
    expect_w = (w_bar - w_bar.mean()) * math.sqrt(target / np.var(w_bar)) + w_bar.mean()
    assert np.allclose(out[:6].numpy(), expect_w, atol=1e-6)
    # the bias is not corrected by default: the plain merge
    assert np.allclose(out[6:].numpy(), 0.5 * np.array([0.5, -0.5]) + 0.5 * np.array([0.5, 1.5]))


def test_target_is_the_received_models_variance_not_self():
    received = [torch.randn(8, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    _, var = segment_moments(torch.stack(received), S)
    for own_scale in (0.0, 1.0, 100.0):
        own = own_scale * torch.randn(8, generator=torch.Generator().manual_seed(9))
        out = _vc(own, received)
        _, v_out = segment_moments(out.unsqueeze(0), S)
        assert float(v_out[0, 0]) == pytest.approx(float(var[:, 0].mean()), rel=1e-5)


def test_mean_is_preserved_and_all_tensors_when_asked():
    g = torch.Generator().manual_seed(0)
    own, received = torch.randn(8, generator=g), [torch.randn(8, generator=g) for _ in range(4)]
    plain = 0.5 * own + 0.5 * torch.stack(received).mean(0)
    out = _vc(own, received, corrected=torch.tensor([True, True]))
    m_out, v_out = segment_moments(out.unsqueeze(0), S)
    m_plain, _ = segment_moments(plain.unsqueeze(0), S)
    assert torch.allclose(m_out, m_plain, atol=1e-6)
    _, var = segment_moments(torch.stack(received), S)
    assert torch.allclose(v_out[0], var.mean(0), rtol=1e-5)  # bias corrected too


def test_unbiased_estimator_is_used_for_target_and_current_alike():
    g = torch.Generator().manual_seed(1)
    own, received = torch.randn(8, generator=g), [torch.randn(8, generator=g) for _ in range(2)]
    out = _vc(own, received, unbiased=True)
    _, v_out = segment_moments(out.unsqueeze(0), S, unbiased=True)
    _, var = segment_moments(torch.stack(received), S, unbiased=True)
    assert float(v_out[0, 0]) == pytest.approx(float(var[:, 0].mean()), rel=1e-5)


def test_constant_tensors_give_no_nan():
    own = torch.tensor([3.0] * 6 + [1.0, 1.0])
    out = _vc(own, [torch.tensor([1.0] * 6 + [0.0, 0.0])] * 2, corrected=torch.tensor([True, True]))
    assert torch.isfinite(out).all()
    assert torch.allclose(out[:6], torch.full((6,), 2.0))


def test_identical_models_are_left_unchanged():
    w = torch.randn(8, generator=torch.Generator().manual_seed(3))
    out = _vc(w.clone(), [w.clone(), w.clone(), w.clone()], corrected=torch.tensor([True, True]))
    assert torch.allclose(out, w, atol=1e-6)


def test_many_rows_at_once_equal_row_by_row():
    g = torch.Generator().manual_seed(4)
    own = torch.randn(5, 8, generator=g)
    rec_sum, count = torch.randn(5, 8, generator=g), torch.tensor([1, 2, 3, 4, 5])
    var_sum = torch.rand(5, 2, generator=g).double() * count.view(-1, 1)
    batch = vc_merge(own, rec_sum, var_sum, count, 0.5, S, WEIGHTS_ONLY)
    for i in range(5):
        single = vc_merge(own[i:i + 1], rec_sum[i:i + 1], var_sum[i:i + 1], count[i:i + 1], 0.5,
                          S, WEIGHTS_ONLY)
        assert torch.allclose(batch[i], single[0], atol=1e-6)


ASYNC = ["nodes=16", "topology.degree=4", "model.hidden=[32,16]", "protocol.mode=async",
         "protocol.wake={kind: uniform_int, low: 8, high: 12}", "protocol.round_time=10", "speed=inf",
         "topology.latency=0", "topology.bandwidth=inf", "train.batch_size=16", "train.lr=0.2"]


def test_plain_gossip_variance_collapses_and_vc_gossip_keeps_it(tiny):
    gossip = tiny(["protocol=gossip", "rounds=10", *ASYNC])
    vc = tiny(["protocol=vc_gossip", "rounds=10", *ASYNC])
    g = [r["layer1_var_mean"] / gossip.metrics[0]["layer1_var_mean"] for r in gossip.metrics]
    v = [r["layer1_var_mean"] / vc.metrics[0]["layer1_var_mean"] for r in vc.metrics]
    assert min(g) < 0.1
    assert 0.5 < min(v) and max(v) < 2.0


def test_with_a_shared_initial_model_the_gap_disappears(tiny):
    runs = {(p, init): tiny([f"protocol={p}", f"protocol.init={init}", "rounds=40", "eval.every=40", *ASYNC])
            for p in ("gossip", "vc_gossip") for init in ("shared", "independent")}
    acc = {k: r.metrics[-1]["accuracy_mean"] for k, r in runs.items()}
    assert abs(acc["gossip", "shared"] - acc["vc_gossip", "shared"]) < 0.05
    assert acc["vc_gossip", "independent"] - acc["gossip", "independent"] > 0.2  # the gap itself


def test_experiment_sweep_writes_a_report(tmp_path):
    p = subprocess.run([sys.executable, "-m", "simulator.cli", "+experiment=vanishing_variance", "seed=0",
                        "arm=fedavg,vc_gossip", "rounds=3", "nodes=10", "topology.degree=4",
                        f"hydra.sweep.dir={tmp_path}"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    table = (tmp_path / "report.md").read_text()
    assert "| fedavg |" in table and "| vc_gossip |" in table
    assert (tmp_path / "report.png").stat().st_size > 10_000
    assert "time_to_reference_accuracy" in (tmp_path / "report.csv").read_text()
