"""Batched local training and evaluation of many models at once (torch.func).

`functional_call` runs the template with one node's parameters, `vmap` maps it over the
stack, so one call computes every node's loss and gradient on that node's own minibatch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from kernels.random import counter_uniform
from kernels.stack import Layout


@dataclass(frozen=True)
class SGDConfig:
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0


class BatchedModel:
    """A template module plus its layout: the batched loss, gradient and evaluation of a stack."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.layout = Layout.from_module(module)

        def loss(row, x, y):
            logits = functional_call(self.module, self.layout.unflatten(row), (x,))
            return F.cross_entropy(logits, y)

        def logits(row, x):
            return functional_call(self.module, self.layout.unflatten(row), (x,))

        self._grad = vmap(grad_and_value(loss))
        self._logits = vmap(logits, in_dims=(0, None))

    def grad(self, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
        """params [n, P], x [n, B, F], y [n, B] -> (grads [n, P], losses [n])."""
        return self._grad(params, x, y)

    @torch.no_grad()
    def evaluate(self, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                 max_elements: int = 1 << 18):
        """Every model on one test set: (accuracy [n], mean loss [n]), chunked over models."""
        chunk = max(1, max_elements // max(1, x.shape[0]))
        accs, losses = [], []
        for a in range(0, params.shape[0], chunk):
            out = self._logits(params[a:a + chunk], x)  # [c, T, C]
            accs.append((out.argmax(-1) == y).float().mean(1))
            losses.append(F.cross_entropy(out.transpose(1, 2), y.expand(out.shape[0], -1),
                                          reduction="none").mean(1))
        return torch.cat(accs), torch.cat(losses)


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
    """torch.optim.SGD's update (dampening 0, no Nesterov) on every row, in place.
    Rows where `active` is False are left untouched (nodes that finished their local steps)."""
    g = grads
    if cfg.weight_decay:
        g = g + cfg.weight_decay * params
    if cfg.momentum:
        new_buf = cfg.momentum * buf + g
        g = new_buf
    step = cfg.lr * g
    if active is None:
        if cfg.momentum:
            buf.copy_(new_buf)
        params.sub_(step)
    else:
        m = active.view(-1, 1)
        if cfg.momentum:
            buf.copy_(torch.where(m, new_buf, buf))
        params.sub_(torch.where(m, step, torch.zeros((), dtype=step.dtype, device=step.device)))


def local_sgd(model: BatchedModel, params: torch.Tensor, buf: torch.Tensor, X: torch.Tensor,
              y: torch.Tensor, nodes: torch.Tensor, step_counter: torch.Tensor,
              offsets: torch.Tensor, sizes: torch.Tensor, steps: torch.Tensor, batch_size: int,
              cfg: SGDConfig, seed: int) -> torch.Tensor:
    """Run `steps[i]` local SGD steps on each of the n rows of `params` (in place).

    `nodes` are the rows' node ids (for the random stream), `step_counter` their local step
    counts so far (advanced in place), `offsets`/`sizes` their data ranges in X/y.
    Returns each row's mean training loss over its steps.
    """
    n = params.shape[0]
    total = torch.zeros(n, dtype=torch.float64, device=params.device)
    for s in range(int(steps.max()) if n else 0):
        active = steps > s
        idx = sample_minibatches(seed, nodes, step_counter, offsets, sizes, batch_size)
        grads, losses = model.grad(params, X[idx], y[idx])
        all_active = bool(active.all())
        sgd_update(params, buf, grads, cfg, None if all_active else active)
        total += torch.where(active, losses.double(), torch.zeros_like(total))
        step_counter += active.long()
    return total / steps.clamp(min=1)
