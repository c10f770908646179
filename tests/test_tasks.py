"""Tasks: multilabel loss, gradient and metrics against torch and scikit-learn; pooled counts;
the same metrics written by whole runs."""
import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, hamming_loss
from torch import nn

from kernels import MLP, BatchedModel, LogisticRegression, init_stack
from kernels.tasks import TASKS

ML = TASKS["multilabel"]


@pytest.mark.parametrize("make", [lambda: MLP(16, 5, (12,)), lambda: LogisticRegression(16, 5)])
def test_multilabel_bmm_path_equals_torch_func(make):
    template = make()
    fast, ref = BatchedModel(template, "multilabel"), BatchedModel(template, "multilabel", fast=False)
    assert fast.chain is not None
    params = init_stack(template, fast.layout, 4, seed=1, independent=True)
    x = torch.randn(4, 7, 16)
    y = (torch.rand(4, 7, 5) < 0.4).float()
    (g1, l1), (g2, l2) = fast.grad(params, x, y), ref.grad(params, x, y)
    assert torch.allclose(g1, g2, atol=1e-6) and torch.allclose(l1, l2, atol=1e-6)
    # and the loss is the mean binary cross-entropy over examples and labels
    logits = fast.logits(params, x)
    torch.testing.assert_close(l1, nn.functional.binary_cross_entropy_with_logits(
        logits, y, reduction="none").mean((1, 2)))


def random_case(n_models=5, rows=60, labels=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n_models, rows, labels, generator=g)
    y = (torch.rand(rows, labels, generator=g) < 0.3).float()
    y[:, -1] = 0  # a label nobody has: macro-F1's 0/0 case
    logits[0, :, -1] = -1.0  # ... that model 0 also never predicts
    return logits, y


def test_multilabel_metrics_equal_scikit_learn():
    logits, y = random_case()
    m = ML.evaluate(logits, y)
    for i in range(logits.shape[0]):
        pred = (logits[i] > 0).int().numpy()
        truth = y.int().numpy()
        assert float(m["micro_f1"][i]) == pytest.approx(f1_score(truth, pred, average="micro", zero_division=0))
        assert float(m["macro_f1"][i]) == pytest.approx(f1_score(truth, pred, average="macro", zero_division=0))
        assert float(m["subset_accuracy"][i]) == pytest.approx(accuracy_score(truth, pred))
        assert float(m["hamming_loss"][i]) == pytest.approx(hamming_loss(truth, pred))


def test_pooled_counts_equal_metrics_over_the_union_of_rows():
    """Counts over ragged batches (a mask), added up, give the metrics of all rows at once."""
    for task, make_y in (("multilabel", lambda r: (torch.rand(r, 6) < 0.3).float()),
                         ("multiclass", lambda r: torch.randint(0, 6, (r,)))):
        t = TASKS[task]
        torch.manual_seed(3)
        logits = torch.randn(3, 10, 6)
        y = torch.stack([make_y(10) for _ in range(3)])
        mask = torch.arange(10).view(1, -1) < torch.tensor([[4], [10], [1]])
        pooled = t.from_counts(t.counts(logits[:2], y[:2], mask[:2]) + t.counts(logits[2:], y[2:], mask[2:]))
        flat_logits = torch.cat([logits[i, :int(mask[i].sum())] for i in range(3)]).unsqueeze(0)
        flat_y = torch.cat([y[i, :int(mask[i].sum())] for i in range(3)])
        whole = t.evaluate(flat_logits, flat_y)
        for k in t.metrics:
            assert pooled[k] == pytest.approx(float(whole[k][0]), abs=1e-6), (task, k)


@pytest.mark.parametrize("protocol", ["fedavg", "gossip"])
def test_run_f1_columns_equal_scikit_learn_on_the_same_predictions(tiny, protocol):
    from scenarios import assemble, resolve

    ov = [f"protocol={protocol}", "data=synthetic_multilabel", "data.n_samples=600", "nodes=6",
          "topology=ring", "rounds=4", "train.local_steps=3"]
    res = tiny(ov)
    row = res.metrics[-1]
    world = assemble(resolve(overrides=["nodes=10", "rounds=3", "sim.progress=false", "train.local_steps=1", *ov]))
    X, Y = world.test_set
    truth = Y.int().numpy()
    per_model = {"micro": [], "macro": [], "subset": [], "hamming": []}
    for model in res.final_models:
        pred = (world.model.logits(model.view(1, -1), X)[0] > 0).int().numpy()
        per_model["micro"].append(f1_score(truth, pred, average="micro", zero_division=0))
        per_model["macro"].append(f1_score(truth, pred, average="macro", zero_division=0))
        per_model["subset"].append(accuracy_score(truth, pred))
        per_model["hamming"].append(hamming_loss(truth, pred))
    assert row["micro_f1_mean"] == pytest.approx(np.mean(per_model["micro"]), abs=1e-6)
    assert row["micro_f1_min"] == pytest.approx(np.min(per_model["micro"]), abs=1e-6)
    assert row["macro_f1_mean"] == pytest.approx(np.mean(per_model["macro"]), abs=1e-6)
    assert row["subset_accuracy_mean"] == pytest.approx(np.mean(per_model["subset"]), abs=1e-6)
    assert row["hamming_loss_mean"] == pytest.approx(np.mean(per_model["hamming"]), abs=1e-6)
    assert row["loss_mean"] < res.metrics[0]["loss_mean"] and row["hamming_loss_mean"] < res.metrics[0]["hamming_loss_mean"]
