"""The typed, validated run configuration.

Hydra composes plain mappings from `scenarios/`; `RunConfig.from_mapping` turns one into
dataclasses, and every bad value becomes a `ConfigError` whose message is one line naming the
key, the value and the valid choices (the CLI prints it and exits with code 2).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from clients.datasets import DATASETS
from clients.fleet import TrainConfig
from clients.partition import PARTITIONERS
from clients.profiles import Distribution
from protocols import PROTOCOLS
from topologies import TOPOLOGIES

MODELS = ("logreg", "mlp", "cnn", "lenet")


class ConfigError(ValueError):
    """A bad configuration value (one line: the key, the value, the valid choices)."""


def build(cls, values: Mapping[str, Any] | None, where: str):
    """cls(**values), with unknown keys and failed validation turned into ConfigError."""
    values = dict(values or {})
    valid = [f.name for f in fields(cls)]
    unknown = sorted(k for k in values if k not in valid)
    if unknown:
        raise ConfigError(f"{where} has no option {unknown[0]!r}; valid options: {', '.join(valid)}")
    try:
        return cls(**values)
    except (ValueError, TypeError) as err:
        raise ConfigError(str(err).replace("protocol.", f"{where}.") if where != "protocol" else str(err)) from None


def _missing(values: Mapping, prefix: str = "") -> str | None:
    """The first key left as Hydra's mandatory marker '???'."""
    for k, v in values.items():
        if v == "???":
            return prefix + str(k)
        if isinstance(v, Mapping) and (hit := _missing(v, f"{prefix}{k}.")):
            return hit
    return None


def _choice(value, choices, key):
    if value not in choices:
        raise ConfigError(f"unknown {key} {value!r}; choose one of: {', '.join(choices)}")
    return value


@dataclass(frozen=True)
class TopologyConfig:
    name: str = "random_regular"
    degree: int = 8
    p: float = 0.1
    k: int = 4
    m: int = 2
    path: str | None = None
    allow_disconnected: bool = False
    latency: Any = 0.01        # seconds: a number or a distribution mapping
    bandwidth: Any = 1.0e6     # bytes/s: a number or a distribution mapping

    def __post_init__(self):
        _choice(self.name, TOPOLOGIES, "topology")
        object.__setattr__(self, "latency", Distribution.from_spec(self.latency))
        object.__setattr__(self, "bandwidth", Distribution.from_spec(self.bandwidth))


@dataclass(frozen=True)
class DataConfig:
    name: str = "digits"
    partition: str = "iid"
    alpha: float = 0.5
    classes_per_node: int = 2
    exponent: float = 1.5
    options: dict = field(default_factory=dict)  # passed to the loader (n_samples, path, ...)

    def __post_init__(self):
        _choice(self.name, DATASETS, "data")
        _choice(self.partition, PARTITIONERS, "data.partition")


@dataclass(frozen=True)
class ModelConfig:
    name: str = "mlp"
    hidden: tuple = (32,)           # mlp widths
    channels: tuple = (8, 16)       # cnn

    def __post_init__(self):
        _choice(self.name, MODELS, "model")
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if any(h < 1 for h in self.hidden + self.channels):
            raise ValueError("model widths must be >= 1")


@dataclass(frozen=True)
class EvalConfig:
    every: int = 1            # evaluate every k rounds (and always after the last)
    max_nodes: int = 1000     # evaluate a fixed seeded sample of this many nodes when N is larger
    max_test: int = 2000      # use the first max_test test samples (the test split is shuffled)

    def __post_init__(self):
        for k in ("every", "max_nodes", "max_test"):
            if getattr(self, k) < 1:
                raise ValueError(f"eval.{k} must be >= 1, got {getattr(self, k)}")


@dataclass(frozen=True)
class SimConfig:
    batching: bool = True     # all events of one kind at one instant -> one kernel call
    resolution: float = 0.0   # > 0: round event times up to multiples of this (a tick clock)
    progress: bool = True
    record_events: bool = False

    def __post_init__(self):
        if self.resolution < 0:
            raise ValueError(f"sim.resolution must be >= 0, got {self.resolution}")


@dataclass(frozen=True)
class RunConfig:
    nodes: int
    rounds: int
    seed: int
    device: str
    protocol_name: str
    protocol: Any
    topology: TopologyConfig
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    speed: Distribution
    eval: EvalConfig
    sim: SimConfig
    label: str = ""  # a name for the run (an experiment's arm); shown in outputs

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> "RunConfig":
        cfg = {k: v for k, v in dict(cfg).items() if k != "hydra"}
        missing = _missing(cfg)
        if missing:
            raise ConfigError(f"{missing} is required: set it on the command line, e.g. {missing}=...")
        top = {"nodes", "rounds", "seed", "device", "protocol", "topology", "data", "model",
               "train", "speed", "eval", "sim", "label"}
        unknown = sorted(set(cfg) - top - {"hydra"})
        if unknown:
            raise ConfigError(f"unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(top))}")
        nodes, rounds, seed = cfg.get("nodes", 100), cfg.get("rounds", 20), cfg.get("seed", 0)
        for key, v, low in (("nodes", nodes, 1), ("rounds", rounds, 1), ("seed", seed, 0)):
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ConfigError(f"{key} must be an integer >= {low}, got {v!r}")
        device = str(cfg.get("device", "cpu"))
        if device != "cpu" and not device.startswith("cuda"):
            raise ConfigError(f"unknown device {device!r}; choose cpu or cuda")
        proto = dict(cfg.get("protocol") or {"name": "fedavg"})
        pname = _choice(proto.pop("name", None), tuple(PROTOCOLS), "protocol")
        data = dict(cfg.get("data") or {})
        known = {f.name for f in fields(DataConfig)} - {"options"}
        data_cfg = build(DataConfig, {**{k: v for k, v in data.items() if k in known},
                                      "options": {k: v for k, v in data.items() if k not in known}}, "data")
        try:
            speed = Distribution.from_spec(cfg.get("speed", 1000.0))
        except ValueError as err:
            raise ConfigError(f"speed: {err}") from None
        if not speed.always_positive:
            raise ConfigError("speed must be > 0 samples/s for every node (check speed.value or speed.low)")
        return cls(
            nodes=nodes, rounds=rounds, seed=seed, device=device, protocol_name=pname,
            protocol=build(PROTOCOLS[pname][1], proto, "protocol"),
            topology=build(TopologyConfig, cfg.get("topology"), "topology"),
            data=data_cfg,
            model=build(ModelConfig, cfg.get("model"), "model"),
            train=build(TrainConfig, cfg.get("train"), "train"),
            speed=speed,
            eval=build(EvalConfig, cfg.get("eval"), "eval"),
            sim=build(SimConfig, cfg.get("sim"), "sim"),
            label=str(cfg.get("label") or ""),
        )
