"""Byzantine clients: which nodes attack, and what they send.

`attack='{kind: sign_flip, fraction: 0.2}'` (or `nodes: [3, 7]` instead of `fraction`) makes
a seeded set of nodes attack. Model attacks rewrite what an attacker uploads in a round, from
the model it received (the global model g) and its honest update u = w - g:

  sign_flip  g - scale * u                       (scale 1)
  gaussian   g + N(0, std^2) per parameter        (std 1; counter-keyed, batch-independent)
  scale      g + scale * u                        (model replacement; scale 10)
  alie       g + mean - z * std of the round's honest updates, coordinate-wise, with
             z = Phi^-1((n - s) / n), s = floor(n / 2 + 1) - f ("A little is enough",
             Baruch, Baruch and Goldberg 2019; n uploads, f of them attackers)

Data poisoning: `label_flip` trains the attackers on flipped labels (class c -> C - 1 - c; for
multi-label data every label bit flipped) and they upload honestly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import torch

from kernels.random import counter_normal

KINDS = ("sign_flip", "gaussian", "scale", "alie", "label_flip")
_DEFAULT_SCALE = {"sign_flip": 1.0, "scale": 10.0}


@dataclass(frozen=True)
class Attack:
    kind: str
    fraction: float = 0.0
    nodes: tuple[int, ...] = ()
    scale: float = 1.0
    std: float = 1.0

    @classmethod
    def from_spec(cls, spec) -> "Attack | None":
        """None, or a mapping {kind, fraction | nodes, scale, std}; ValueError naming attack.<key>."""
        if spec is None:
            return None
        if not hasattr(spec, "keys"):
            raise ValueError(f"attack must be a mapping such as {{kind: sign_flip, fraction: 0.2}}, got {spec!r}")
        spec = dict(spec)
        unknown = sorted(set(spec) - {"kind", "fraction", "nodes", "scale", "std"})
        if unknown:
            raise ValueError(f"attack: unknown key(s) {', '.join(map(str, unknown))}; valid: kind, fraction, nodes, "
                             "scale, std")
        kind = spec.get("kind")
        if kind not in KINDS:
            raise ValueError(f"attack.kind must be one of {', '.join(KINDS)}, got {kind!r}")
        fraction, nodes = spec.get("fraction"), spec.get("nodes")
        if (fraction is None) == (nodes is None):
            raise ValueError("attack needs exactly one of attack.fraction (a share of the nodes) and attack.nodes "
                             "(a list of node ids)")
        if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, (int, float))
                                     or not 0 <= fraction <= 1):
            raise ValueError(f"attack.fraction must be a number in [0, 1], got {fraction!r}")
        if nodes is not None and (isinstance(nodes, (str, bytes)) or not hasattr(nodes, "__iter__")
                                  or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in nodes)):
            raise ValueError(f"attack.nodes must be a list of node ids >= 0, got {nodes!r}")
        scale = spec.get("scale", _DEFAULT_SCALE.get(kind, 1.0))
        std = spec.get("std", 1.0)
        for key, v in (("scale", scale), ("std", std)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf:
                raise ValueError(f"attack.{key} must be a finite number >= 0, got {v!r}")
        return cls(kind, float(fraction or 0.0), tuple(nodes or ()), float(scale), float(std))

    def attackers(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """bool [n]: which nodes attack (a seeded draw of round(fraction * n), or the listed ones)."""
        out = np.zeros(n, dtype=bool)
        if self.nodes:
            bad = [v for v in self.nodes if v >= n]
            if bad:
                raise ValueError(f"attack.nodes lists node {bad[0]} but the scenario has nodes 0..{n - 1}")
            out[list(self.nodes)] = True
        else:
            out[rng.choice(n, size=int(round(self.fraction * n)), replace=False)] = True
        return out

    @property
    def poisons_data(self) -> bool:
        return self.kind == "label_flip"

    def flip_labels(self, y: np.ndarray, n_classes: int) -> np.ndarray:
        """label_flip's labels: c -> C - 1 - c, or every bit of a multi-label row flipped."""
        return (1 - y).astype(y.dtype) if y.ndim == 2 else (n_classes - 1 - y).astype(y.dtype)

    def apply(self, rows: torch.Tensor, bad: torch.Tensor, global_model: torch.Tensor, seed: int,
              nodes: torch.Tensor, round_, honest: tuple | None = None) -> torch.Tensor:
        """The uploads [k, P] of one round with the attackers' rows (bad [k] bool) rewritten;
        `round_` keys the Gaussian noise (a number, or one per row). alie: `honest` = (mean, std,
        n, f) of the honest updates, when the attackers see more than these rows."""
        if self.poisons_data or not bool(bad.any()):
            return rows
        g = global_model.view(1, -1).to(rows.dtype)
        out = rows.clone()
        u = rows[bad] - g
        if self.kind == "sign_flip":
            out[bad] = g - self.scale * u
        elif self.kind == "scale":
            out[bad] = g + self.scale * u
        elif self.kind == "gaussian":
            coord = torch.arange(rows.shape[1], device=rows.device).view(1, -1)
            rounds = torch.broadcast_to(torch.as_tensor(round_, dtype=torch.long, device=rows.device), nodes.shape)
            noise = counter_normal(seed, nodes[bad].view(-1, 1), rounds[bad].view(-1, 1), coord)
            out[bad] = g + self.std * noise.to(rows.dtype)
        else:  # alie: from the honest updates of the round (or the statistics given)
            if honest is None:
                h = (rows[~bad] - g).double() if bool((~bad).any()) else u.double()
                honest = (h.mean(0), h.std(0, unbiased=False), rows.shape[0], int(bad.sum()))
            mean, std, n, f = honest
            s = n // 2 + 1 - f
            z = NormalDist().inv_cdf(min(max((n - s) / n, 1e-6), 1 - 1e-6))
            out[bad] = (g.double() + mean - z * std).to(rows.dtype)
        return out
