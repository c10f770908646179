"""Tasks: what a model's outputs mean. Pure torch, batched over models.

A task gives the training loss (and, for the hand-written fast path, its gradient with respect
to the logits), the per-model metrics of many models on one labelled set, and additive counts
from which the same metrics can be pooled over rows seen one batch at a time (prequential
test-then-train evaluation).

    multiclass  y: int64 class ids [..., T]; softmax cross-entropy; accuracy
    multilabel  y: float 0/1 [..., T, L]; sigmoid binary cross-entropy per label, averaged over
                labels; micro-F1, macro-F1, subset accuracy (exact match), Hamming loss
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class Task:
    name = ""
    metrics: tuple[str, ...] = ()  # per-model columns of `evaluate`, headline first, then "loss"
    label_dtype = torch.long

    @property
    def headline(self) -> str:
        """The metric a person reads first (the summary line, curves.png)."""
        return self.metrics[0]

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean loss of one model's batch (what torch.func differentiates)."""
        raise NotImplementedError

    def loss_and_dlogits(self, logits: torch.Tensor, y: torch.Tensor):
        """logits [n, B, C] -> (mean loss per model [n], d(mean loss)/d(logits) [n, B, C]).
        May overwrite `logits` (the caller does not use them again)."""
        raise NotImplementedError

    def evaluate(self, logits: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every metric of n models on one set: logits [n, T, C], y shared [T(, L)] -> {metric: [n]}."""
        raise NotImplementedError

    def correct(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-example correctness of n models: logits [n, T, C], y shared [T(, L)] -> bool [n, T]
        (M2N2's scores)."""
        raise NotImplementedError

    def columns(self, metrics: dict[str, torch.Tensor]) -> dict[str, float]:
        """metrics.csv columns of many models' metrics: the headline's mean, std, min and max,
        then the mean of every other metric (loss last)."""
        h = metrics[self.headline]
        out = {f"{self.headline}_mean": float(h.mean()), f"{self.headline}_std": float(h.std(unbiased=False)),
               f"{self.headline}_min": float(h.min()), f"{self.headline}_max": float(h.max())}
        out.update({f"{k}_mean": float(v.mean()) for k, v in metrics.items() if k != self.headline})
        return out

    def counts(self, logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, per_model: bool = False) -> torch.Tensor:
        """Additive counts (float64 [K]) over the rows where mask [n, T] is True; logits [n, T, C],
        y [n, T(, L)]. Summing counts and calling `from_counts` pools the metrics. `per_model`:
        one count vector per model [n, K] (on the models' device)."""
        raise NotImplementedError

    def from_counts(self, counts: torch.Tensor) -> dict[str, float]:
        raise NotImplementedError


class Multiclass(Task):
    name = "multiclass"
    metrics = ("accuracy", "loss")
    label_dtype = torch.long

    def loss(self, logits, y):
        return F.cross_entropy(logits, y)

    def loss_and_dlogits(self, logits, y):
        logp = logits.log_softmax(-1)
        losses = -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1).mean(1)
        dz = logp.exp_()  # d(mean cross-entropy)/d(logits) = (softmax - onehot) / B
        dz.scatter_add_(-1, y.unsqueeze(-1), torch.full_like(dz[..., :1], -1.0))
        dz /= logits.shape[1]
        return losses, dz

    def correct(self, logits, y):
        return logits.argmax(-1) == y

    def evaluate(self, logits, y):
        acc = (logits.argmax(-1) == y).float().mean(1)
        loss = F.cross_entropy(logits.transpose(1, 2), y.expand(logits.shape[0], -1), reduction="none").mean(1)
        return {"accuracy": acc, "loss": loss}

    def counts(self, logits, y, mask, per_model=False):
        m = mask.double()
        correct = ((logits.argmax(-1) == y).double() * m).sum(1)
        loss = (F.cross_entropy(logits.transpose(1, 2), y, reduction="none").double() * m).sum(1)
        out = torch.stack([correct, loss, m.sum(1)], 1)
        return out if per_model else out.sum(0).cpu()

    def from_counts(self, counts):
        correct, loss, rows = counts.tolist()
        if rows == 0:
            return {"accuracy": float("nan"), "loss": float("nan")}
        return {"accuracy": correct / rows, "loss": loss / rows}


def _f1(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
    """2tp / (2tp + fp + fn), 0 where nothing was true or predicted (scikit-learn's default)."""
    den = 2 * tp + fp + fn
    return torch.where(den > 0, 2 * tp / den.clamp(min=1), torch.zeros_like(den))


class Multilabel(Task):
    name = "multilabel"
    metrics = ("micro_f1", "macro_f1", "subset_accuracy", "hamming_loss", "loss")
    label_dtype = torch.float32

    def loss(self, logits, y):
        return F.binary_cross_entropy_with_logits(logits, y)

    def loss_and_dlogits(self, logits, y):
        losses = F.binary_cross_entropy_with_logits(logits, y, reduction="none").mean((1, 2))
        dz = logits.sigmoid_().sub_(y).div_(logits.shape[1] * logits.shape[2])
        return losses, dz

    def correct(self, logits, y):  # every label right (subset accuracy's per-example test)
        return ((logits > 0) == y.bool()).all(-1)

    def evaluate(self, logits, y):
        pred = logits > 0
        truth = y.bool().expand_as(pred)
        tp = (pred & truth).sum(1).double()   # [n, L]
        fp = (pred & ~truth).sum(1).double()
        fn = (~pred & truth).sum(1).double()
        loss = F.binary_cross_entropy_with_logits(logits, y.expand_as(logits), reduction="none").mean((1, 2))
        return {"micro_f1": _f1(tp.sum(1), fp.sum(1), fn.sum(1)).float(),
                "macro_f1": _f1(tp, fp, fn).mean(1).float(),
                "subset_accuracy": (pred == truth).all(-1).float().mean(1),
                "hamming_loss": (pred != truth).float().mean((1, 2)),
                "loss": loss}

    def counts(self, logits, y, mask, per_model=False):
        """[tp, fp, fn, summed loss] per label (4 x L), then exact matches, summed mean loss, rows."""
        m = mask.unsqueeze(-1)
        pred, truth = (logits > 0) & m, y.bool() & m
        tp = (pred & truth).sum(1).double()
        fp = (pred & ~truth).sum(1).double()
        fn = (~pred & truth).sum(1).double()
        label_loss = (F.binary_cross_entropy_with_logits(logits, y, reduction="none").double() * m).sum(1)
        exact = (((logits > 0) == y.bool()).all(-1) & mask).sum(1).double()
        rows = mask.sum(1).double()
        out = torch.cat([tp, fp, fn, label_loss, torch.stack([exact, label_loss.mean(-1), rows], 1)], 1)
        return out if per_model else out.sum(0).cpu()

    @staticmethod
    def label_losses(counts: torch.Tensor) -> torch.Tensor:
        """The summed loss per label [..., L] inside counts [..., 4L + 3]."""
        n_labels = (counts.shape[-1] - 3) // 4
        return counts[..., 3 * n_labels:4 * n_labels]

    def from_counts(self, counts):
        n_labels = (len(counts) - 3) // 4
        tp, fp, fn = counts[:n_labels], counts[n_labels:2 * n_labels], counts[2 * n_labels:3 * n_labels]
        exact, loss, rows = counts[-3:].tolist()
        if rows == 0:
            return {k: float("nan") for k in self.metrics}
        return {"micro_f1": float(_f1(tp.sum(), fp.sum(), fn.sum())), "macro_f1": float(_f1(tp, fp, fn).mean()),
                "subset_accuracy": exact / rows,
                "hamming_loss": float(fp.sum() + fn.sum()) / (rows * n_labels), "loss": loss / rows}


TASKS: dict[str, Task] = {"multiclass": Multiclass(), "multilabel": Multilabel()}
