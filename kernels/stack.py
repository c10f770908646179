"""Node state as a stack: every node's parameters are one row of a flat [N, P] tensor.

A `Layout` records where each named parameter of a template `nn.Module` lives inside a row,
so per-layer views of the whole stack are free slices (no copies).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from kernels.random import counter_uniform


@dataclass(frozen=True)
class Layout:
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]  # len(names) + 1; parameter k lives at [offsets[k], offsets[k+1])

    @classmethod
    def from_module(cls, module: nn.Module) -> "Layout":
        if any(True for _ in module.buffers()):
            raise ValueError("modules with buffers (e.g. BatchNorm running statistics) are not "
                             "supported in a node stack; use GroupNorm or LayerNorm instead")
        names, shapes, offsets = [], [], [0]
        for name, p in module.named_parameters():
            names.append(name)
            shapes.append(tuple(p.shape))
            offsets.append(offsets[-1] + p.numel())
        if not names:
            raise ValueError("the model template has no parameters")
        return cls(tuple(names), tuple(shapes), tuple(offsets))

    @property
    def size(self) -> int:
        return self.offsets[-1]

    @property
    def n_tensors(self) -> int:
        return len(self.names)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views {name: tensor} of a [P] row or an [N, P] stack (leading dims kept)."""
        lead = flat.shape[:-1]
        return {n: flat[..., a:b].view(*lead, *s)
                for n, s, a, b in zip(self.names, self.shapes, self.offsets, self.offsets[1:])}

    def flatten(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """The inverse of `unflatten` for one model: a [P] row."""
        return torch.cat([params[n].reshape(-1) for n in self.names])

    @property
    def sizes(self) -> tuple[int, ...]:
        """Number of elements of each parameter tensor, in row order."""
        return tuple(b - a for a, b in zip(self.offsets, self.offsets[1:]))

    def is_weight(self) -> tuple[bool, ...]:
        """True for weight matrices / kernels (>= 2 dims), False for biases and gains."""
        return tuple(len(s) >= 2 for s in self.shapes)


def row_blocks(n: int, width: int, numbers: int) -> list[slice]:
    """Consecutive row ranges of an [n, width] stack, about `numbers` numbers each: work done
    block by block keeps its temporaries small (and in cache) whatever n is."""
    span = max(1, numbers // max(1, width))
    return [slice(a, min(a + span, n)) for a in range(0, n, span)]


def init_stack(module: nn.Module, layout: Layout, n: int, seed: int, *, independent: bool,
               device="cpu") -> torch.Tensor:
    """[n, P] initial parameters.

    Linear and Conv layers are drawn as torch draws them by default (weights and biases
    uniform in +-1/sqrt(fan_in)); every other parameter copies the template's value.
    `independent=False` gives every node the same draw (a shared initial model).
    Draws are keyed by (seed, node, coordinate), so node i's model does not depend on n.
    """
    rows = n if independent else 1
    out = layout.flatten(dict(module.named_parameters())).detach().to(device, torch.float32)
    out = out.unsqueeze(0).repeat(rows, 1)
    views = layout.unflatten(out)
    nodes = torch.arange(rows, device=device).view(-1, 1)
    for mod_name, mod in module.named_modules():
        if not isinstance(mod, (nn.Linear, nn.modules.conv._ConvNd)):
            continue
        fan_in = mod.weight[0].numel()
        bound = 1.0 / math.sqrt(fan_in)
        for pname in ("weight", "bias"):
            if getattr(mod, pname, None) is None:
                continue
            full = f"{mod_name}.{pname}" if mod_name else pname
            k = layout.names.index(full)
            coord = torch.arange(layout.offsets[k], layout.offsets[k + 1], device=device).view(1, -1)
            for s in row_blocks(rows, coord.numel(), 1 << 20):  # the draws' temporaries stay small
                block = views[full][s]
                block.copy_(counter_uniform(seed, nodes[s], coord).mul_(2).sub_(1).mul_(bound).view_as(block))
    return out.expand(n, -1).clone() if rows == 1 else out
