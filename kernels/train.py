"""Batched local training and evaluation of many models at once (torch.func).

`functional_call` runs the template with one row's parameters, `vmap` maps it over the
stack, so one call computes every row's loss and gradient on that row's own minibatch. The
rows may come from any stack (one model per node, an archive, per-cluster sub-models): the
caller names each row's data range and random stream explicitly. Loss and metrics come from a
task (kernels.tasks).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from kernels.random import counter_uniform
from kernels.stack import Layout
from kernels.tasks import TASKS, Task


@dataclass(frozen=True)
class SGDConfig:
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0


def linear_relu_chain(module: nn.Module) -> list[str] | None:
    """Module names of the Linear layers if `module` computes Linear (ReLU Linear)*, else None.

    Such models (logistic regression, MLPs) get hand-written batched matmuls, several times
    faster than vmap for small per-node matrices; anything else goes through torch.func.
    """
    from kernels.models import MLP, LogisticRegression

    if type(module) is LogisticRegression:
        return ["linear"]
    seq, prefix = (module.net, "net.") if type(module) is MLP else (module, "")
    if not isinstance(seq, nn.Sequential) or len(seq) % 2 == 0:
        return None
    for i, layer in enumerate(seq):
        if not isinstance(layer, nn.Linear if i % 2 == 0 else nn.ReLU) or (i % 2 == 0 and layer.bias is None):
            return None
    return [f"{prefix}{i}" for i in range(0, len(seq), 2)]


class BatchedModel:
    """A template module, its layout and its task: the batched loss, gradient and evaluation of
    a stack of rows.

    `fast=True` (default) uses hand-written bmm kernels when the template is a Linear/ReLU
    chain; `fast=False` always uses torch.func (the reference the fast path is tested against).
    """

    def __init__(self, module: nn.Module, task: Task | str = "multiclass", fast: bool = True):
        self.module = module
        self.layout = Layout.from_module(module)
        self.task = TASKS[task] if isinstance(task, str) else task
        self.chain = linear_relu_chain(module) if fast else None

        def loss(row, x, y):
            logits = functional_call(self.module, self.layout.unflatten(row), (x,))
            return self.task.loss(logits, y)

        def logits(row, x):
            return functional_call(self.module, self.layout.unflatten(row), (x,))

        self._grad = vmap(grad_and_value(loss))
        self._logits = vmap(logits, in_dims=(0, None))
        self._own_logits = vmap(logits)

    def grad(self, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
        """params [n, P], x [n, B, F], y [n, B] -> (grads [n, P], losses [n])."""
        if self.chain is None:
            return self._grad(params, x, y)
        return self._chain_grad(params, x, y)

    def _chain_layers(self, flat: torch.Tensor):
        views = self.layout.unflatten(flat)
        return [(views[f"{m}.weight"], views[f"{m}.bias"]) for m in self.chain]

    def _chain_forward(self, params: torch.Tensor, x: torch.Tensor):
        """Activations of every layer; x is [n, B, F] or a shared [T, F]."""
        acts = [x]
        layers = self._chain_layers(params)
        for k, (w, b) in enumerate(layers):
            z = torch.matmul(acts[-1], w.transpose(1, 2)).add_(b.unsqueeze(1))  # in place: one tensor less
            acts.append(z.relu_() if k < len(layers) - 1 else z)
        return acts

    def _chain_grad(self, params, x, y):
        acts = self._chain_forward(params, x)
        losses, dz = self.task.loss_and_dlogits(acts[-1], y)
        grads = torch.empty_like(params)
        glayers = self._chain_layers(grads)
        wlayers = self._chain_layers(params)
        for k in range(len(wlayers) - 1, -1, -1):
            gw, gb = glayers[k]
            torch.bmm(dz.transpose(1, 2), acts[k], out=gw)
            torch.sum(dz, 1, out=gb)
            if k:
                dz = torch.bmm(dz, wlayers[k][0]).mul_(acts[k] > 0)
        return grads, losses

    @torch.no_grad()
    def logits(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """params [n, P]; x shared [T, F] or one set per row [n, T, F] -> logits [n, T, C]."""
        if self.chain is not None:
            if params.shape[0] == 1 and x.dim() == 2:  # one model on a shared set: plain 2-D products
                h = x
                layers = self._chain_layers(params[0])
                for k, (w, b) in enumerate(layers):
                    h = torch.addmm(b, h, w.t())
                    if k < len(layers) - 1:
                        h.relu_()
                return h.unsqueeze(0)
            return self._chain_forward(params, x)[-1]
        return self._logits(params, x) if x.dim() == 2 else self._own_logits(params, x)

    @torch.no_grad()
    def evaluate(self, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                 max_elements: int = 3 << 19) -> dict[str, torch.Tensor]:
        """Every model on one labelled set: {metric: [n]} (the task's metrics), chunked over
        models. For a Linear/ReLU chain a chunk's widest activation [rows, T, width] holds about
        `max_elements` numbers, so it stays in cache while the next layer reads it (1.8x faster
        than chunks 8x larger on 1,000 MLPs, the same numbers); other models (vmap) get a
        sixth of that for their logits, their hidden activations being larger."""
        if self.chain is not None:
            width = max(w.shape[0] for w, _ in self._chain_layers(params[0]))
            chunk = max(1, max_elements // max(1, x.shape[0] * width))
        else:
            chunk = max(1, max_elements // 6 // max(1, x.shape[0]))
        parts: dict[str, list] = {}
        for a in range(0, params.shape[0], chunk):
            for k, v in self.task.evaluate(self.logits(params[a:a + chunk], x), y).items():
                parts.setdefault(k, []).append(v)
        return {k: torch.cat(v) for k, v in parts.items()}


def sample_minibatches(seed: int, nodes: torch.Tensor, step: torch.Tensor, offsets: torch.Tensor,
                       sizes: torch.Tensor, batch_size: int) -> torch.Tensor:
    """[n, B] global sample indices: node i draws B of its own samples uniformly (with
    replacement) at its local step counter `step[i]`. Keyed by (seed, node, step, slot), so the
    draw does not depend on which other nodes share the call."""
    slot = torch.arange(batch_size, device=nodes.device).view(1, -1)
    u = counter_uniform(seed, nodes.view(-1, 1), step.view(-1, 1), slot)
    local = (u * sizes.view(-1, 1).to(torch.float64)).long()
    return offsets.view(-1, 1) + torch.minimum(local, sizes.view(-1, 1) - 1)


def sgd_update(params: torch.Tensor, buf: torch.Tensor, grads: torch.Tensor, cfg: SGDConfig,
               active: torch.Tensor | None = None) -> None:
    """torch.optim.SGD's update (dampening 0, no Nesterov) on every row, in place, with the
    same operations in the same order. `grads` is consumed (overwritten). Rows where `active`
    is False are left untouched (nodes that finished their local steps)."""
    if active is not None and not bool(active.all()):
        idx = active.nonzero().squeeze(1)
        p, b = params[idx], buf[idx]
        sgd_update(p, b, grads[idx], cfg)
        params.index_copy_(0, idx, p)
        buf.index_copy_(0, idx, b)
        return
    g = grads
    if cfg.weight_decay:
        g.add_(params, alpha=cfg.weight_decay)
    if cfg.momentum:
        g = buf.mul_(cfg.momentum).add_(g)
    params.add_(g, alpha=-cfg.lr)


def local_sgd(model: BatchedModel, params: torch.Tensor, buf: torch.Tensor, X: torch.Tensor,
              y: torch.Tensor, nodes: torch.Tensor, step_counter: torch.Tensor,
              offsets: torch.Tensor, sizes: torch.Tensor, steps: torch.Tensor, batch_size: int,
              cfg: SGDConfig, seed: int) -> torch.Tensor:
    """Run `steps[i]` local SGD steps on each of the n rows of `params` (in place).

    `nodes` key the rows' random streams (node ids when there is one model per node),
    `step_counter` their local step counts so far (advanced in place), `offsets`/`sizes` their
    data ranges in X/y (a row with `steps` 0 is left alone). Returns each row's mean training
    loss over its steps (NaN for rows with no step).
    """
    n = params.shape[0]
    total = torch.zeros(n, dtype=torch.float64, device=params.device)
    for s in range(int(steps.max()) if n else 0):
        active = steps > s
        idx = sample_minibatches(seed, nodes, step_counter, offsets, sizes, batch_size)
        grads, losses = model.grad(params, X[idx], y[idx])
        sgd_update(params, buf, grads, cfg, active)
        total += torch.where(active, losses.double(), torch.zeros_like(total))
        step_counter += active.long()
    return torch.where(steps > 0, total / steps.clamp(min=1), torch.full_like(total, float("nan")))


def full_batch_adam(model: BatchedModel, rows: torch.Tensor, x: torch.Tensor, y: torch.Tensor, steps: int,
                    lr: float, betas=(0.9, 0.999), eps: float = 1e-8) -> torch.Tensor:
    """`steps` full-batch Adam steps (Kingma and Ba; optax's defaults) on rows [n, D], each on
    the same set x [T, F], y [T]; returns the trained rows."""
    p = rows.clone()
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    xb, yb = x.expand(len(p), *x.shape), y.expand(len(p), *y.shape)
    for t in range(1, steps + 1):
        g, _ = model.grad(p, xb, yb)
        m.mul_(betas[0]).add_(g, alpha=1 - betas[0])
        v.mul_(betas[1]).addcmul_(g, g, value=1 - betas[1])
        p -= lr * (m / (1 - betas[0] ** t)) / ((v / (1 - betas[1] ** t)).sqrt() + eps)
    return p
