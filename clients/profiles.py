"""Device profiles: seeded scalar distributions for per-node and per-link values."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from numbers import Real

import numpy as np

def _erfinv(x: np.ndarray) -> np.ndarray:
    import torch  # torch's erfinv is exact to float64; numpy has none

    return torch.special.erfinv(torch.as_tensor(x, dtype=torch.float64)).numpy()


KINDS = ("constant", "uniform", "uniform_int", "lognormal", "exponential")


@dataclass(frozen=True)
class Distribution:
    """A seeded scalar distribution for per-node or per-link values.

    kind   one of constant, uniform, uniform_int, lognormal, exponential.
    value  constant: every sample equals `value` (may be .inf: an infinite speed or bandwidth
           makes training or transfer instantaneous).
    low    uniform: samples lie in [low, high); uniform_int: integers low..high inclusive
           (e.g. whole clock ticks).
    high   uniform, uniform_int: upper bound.
    mean   lognormal: the MEDIAN of the samples (the underlying normal has mu = log(mean)),
           so `mean` reads as "a typical node"; exponential: the mean. Must be > 0.
    sigma  lognormal: standard deviation of log-values (0 gives a constant; 1 spans ~e-fold).

    Only the fields of the chosen kind matter; the others keep their defaults.
    """

    kind: str = "constant"
    value: float = 1.0
    low: float = 0.0
    high: float = 1.0
    mean: float = 1.0
    sigma: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown distribution kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        for f in fields(self)[1:]:
            v = getattr(self, f.name)
            if not isinstance(v, Real) or isinstance(v, bool) or math.isnan(v) or \
                    (math.isinf(v) and not (f.name == "value" and v > 0)):
                raise ValueError(f"distribution {f.name} must be a finite number, got {v!r}")
            # Config files give ints; store floats so equal specs compare and print alike.
            object.__setattr__(self, f.name, float(v))
        if self.low > self.high:
            raise ValueError(f"uniform low ({self.low}) must not exceed high ({self.high})")
        if self.sigma < 0:
            raise ValueError(f"lognormal sigma must be >= 0, got {self.sigma}")
        if self.mean <= 0:
            raise ValueError(f"distribution mean must be > 0, got {self.mean}")

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """`n` independent draws as float64 [n]."""
        if self.kind == "constant":
            return np.full(n, float(self.value))
        if self.kind == "uniform":
            return rng.uniform(self.low, self.high, n)
        if self.kind == "uniform_int":
            return self.quantile(rng.random(n))
        if self.kind == "lognormal":
            return rng.lognormal(math.log(self.mean), self.sigma, n)
        return rng.exponential(self.mean, n)

    def quantile(self, u: np.ndarray) -> np.ndarray:
        """Inverse CDF: maps uniforms in [0, 1) to draws (for counter-based, batch-independent
        randomness: the same uniform always gives the same draw)."""
        u = np.asarray(u, dtype=np.float64)
        if self.kind == "constant":
            return np.full(u.shape, float(self.value))
        if self.kind == "uniform":
            return self.low + (self.high - self.low) * u
        if self.kind == "uniform_int":
            lo, hi = math.ceil(self.low), math.floor(self.high)
            return np.minimum(lo + np.floor(u * (hi - lo + 1)), hi)
        if self.kind == "lognormal":
            z = math.sqrt(2.0) * _erfinv(2.0 * np.clip(u, 1e-300, 1 - 1e-16) - 1.0)
            return self.mean * np.exp(self.sigma * z)
        return -self.mean * np.log1p(-u)

    @property
    def lowest(self) -> float:
        """The smallest value a draw can take (lognormal and exponential: 0, never reached)."""
        if self.kind == "constant":
            return self.value
        if self.kind in ("uniform", "uniform_int"):
            return self.low
        return 0.0

    @property
    def typical(self) -> float:
        """A typical draw: the value, the middle of a uniform, a lognormal's median, an
        exponential's mean."""
        if self.kind == "constant":
            return self.value
        if self.kind in ("uniform", "uniform_int"):
            return (self.low + self.high) / 2
        return self.mean

    @property
    def expected(self) -> float:
        """The mean of the draws."""
        if self.kind == "constant":
            return self.value
        if self.kind == "uniform":
            return (self.low + self.high) / 2
        if self.kind == "uniform_int":
            return (math.ceil(self.low) + math.floor(self.high)) / 2
        if self.kind == "lognormal":
            return self.mean * math.exp(self.sigma ** 2 / 2)
        return self.mean

    @property
    def always_positive(self) -> bool:
        """Whether every possible draw is > 0."""
        if self.kind == "constant":
            return self.value > 0
        if self.kind in ("uniform", "uniform_int"):
            return self.low > 0
        return True

    @classmethod
    def from_spec(cls, spec) -> "Distribution":
        """Build from a number (a constant) or a mapping such as {"kind": "uniform", "low": 1, "high": 2}."""
        if isinstance(spec, Distribution):
            return spec
        if isinstance(spec, Real) and not isinstance(spec, bool):
            return cls(kind="constant", value=float(spec))
        if isinstance(spec, Mapping):
            valid = [f.name for f in fields(cls)]
            unknown = sorted(str(k) for k in spec if k not in valid)
            if unknown:
                raise ValueError(f"unknown distribution key(s) {', '.join(unknown)}; valid keys: {', '.join(valid)}")
            return cls(**{str(k): v for k, v in spec.items()})
        raise ValueError(
            f"distribution spec must be a number or a mapping with kind ({', '.join(KINDS)}), got {spec!r}"
        )


def compute_speeds(dist: Distribution, n_nodes: int, rng: np.random.Generator) -> np.ndarray:
    """Per-node compute speed in samples/second, float64 [n_nodes], all > 0."""
    if not dist.always_positive:
        raise ValueError(f"compute speeds must be > 0 but {dist} can give values <= 0; raise value/low above 0")
    speeds = dist.sample(n_nodes, rng)
    # An exponential draw can round to exactly 0; a zero-speed node would never finish.
    if np.any(speeds <= 0):
        raise ValueError(f"{dist} drew a compute speed <= 0; use a lognormal or a uniform with low > 0")
    return speeds
