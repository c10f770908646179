"""The typed scenario config: one schema, one source of defaults, three entry points.

The dataclasses below ARE the schema: their fields are the keys, their types are checked by
OmegaConf as values arrive, their defaults are the only defaults, and `__post_init__` checks
what a type cannot (ranges, choices). Hydra's ConfigStore holds them: `schema` (RunConfig) and
one option per choice of the groups protocol, topology, data and model. `config.yaml` only
picks the default group options and Hydra's own settings; experiment files hold what differs.

`resolve` turns any of `run({"nodes": 5})`, `run(overrides=["nodes=5"])` and the config that
`murmur nodes=5` composes into the same RunConfig. Every bad value, unknown key or unknown
choice becomes a ConfigError whose message is one line naming the key and what is allowed.

A group option may be an import path: `protocol=my_rules.MedianGossip` (a Protocol subclass)
or `model=my_nets.Net` (an nn.Module class) is imported and joins the group on the fly.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from omegaconf import MISSING, DictConfig, OmegaConf, open_dict

import protocols
from clients import availability
from clients.attacks import Attack
from clients.datasets import DATASETS
from clients.nodes import TrainConfig
from clients.partition import PARTITIONERS
from clients.profiles import Distribution
from protocols.registry import ProtocolError, import_object
from topologies import TOPOLOGIES
from topologies.dynamic import Dynamic

SCENARIOS = Path(__file__).resolve().parent  # config.yaml, experiment/, arm/
MODELS = ("logreg", "mlp", "cnn", "lenet")
GROUPS = ("protocol", "topology", "data", "model")  # chosen with group=option


class ConfigError(ValueError):
    """A bad configuration value (one line: the key, the value, what is allowed)."""


def first_line(err: BaseException) -> str:
    """An error's message cut to its first line (its type's name when it has none)."""
    text = str(err).strip()
    return text.splitlines()[0].strip() if text else type(err).__name__


def _choice(value, choices, key):
    if value not in choices:
        raise ValueError(f"unknown {key} {value!r}; choose one of: {', '.join(choices)}")


def _distribution(spec, key: str) -> Distribution:
    try:
        return Distribution.from_spec(spec)
    except ValueError as err:
        raise ValueError(f"{key}: {err}") from None


@dataclass
class TopologyConfig:
    name: str = "random_regular"
    degree: int = 8            # random_regular
    p: float = 0.1             # erdos_renyi, small_world
    k: int = 4                 # small_world
    m: int = 2                 # scale_free
    path: Optional[str] = None  # edgelist: a file of 'u v' lines
    allow_disconnected: bool = False
    latency: Any = 0.01        # seconds: a number or a distribution mapping
    bandwidth: Any = 1.0e6     # bytes/s: a number or a distribution mapping
    loss: float = 0.0          # chance that a message is lost (each message, on every link)
    failures: Any = None       # links that fail and recover: {on: <span>, off: <span>} (clients.availability)
    dynamic: Any = None        # the graph re-drawn: {every: <s>, kind | paths, ...} (topologies.dynamic)

    def __post_init__(self):
        _choice(self.name, TOPOLOGIES, "topology")
        if not 0 <= self.loss < 1:
            raise ValueError(f"topology.loss must be a probability in [0, 1), got {self.loss}")
        availability.check_failures(self.failures)
        Dynamic.from_spec(self.dynamic)
        latency = _distribution(self.latency, "topology.latency")
        if not 0 <= latency.lowest < math.inf:
            raise ValueError("topology.latency must be finite and >= 0 seconds on every link "
                             "(check its value or low)")
        if not _distribution(self.bandwidth, "topology.bandwidth").always_positive:
            raise ValueError("topology.bandwidth must be > 0 bytes/s on every link (check its value or low)")


@dataclass
class DataConfig:
    """What every dataset takes; each dataset's own options are the fields of its subclass (which
    may change a default here: the streams yeast and label_blocks arrive at 1 row/s per node)."""
    name: str = "digits"
    partition: str = "iid"        # iid | dirichlet | shards | quantity (multi-label: by each row's rarest label)
    alpha: float = 0.5            # dirichlet concentration (smaller = more label skew)
    classes_per_node: int = 2     # shards
    exponent: float = 1.5         # quantity: power-law exponent of node sizes
    validation: float = 0.0       # share of each node's rows held out as its fixed validation split
    stream_rate: Any = None       # rows per simulated second reaching each node (null: all at t=0)

    def __post_init__(self):
        _choice(self.partition, PARTITIONERS, "data.partition")
        for key in ("alpha", "exponent"):
            if not 0 < getattr(self, key) < math.inf:
                raise ValueError(f"data.{key} must be a finite number > 0, got {getattr(self, key)}")
        if self.classes_per_node < 1:
            raise ValueError(f"data.classes_per_node must be >= 1, got {self.classes_per_node}")
        if not 0 <= self.validation < 1:
            raise ValueError(f"data.validation must be in [0, 1), got {self.validation}")
        if self.stream_rate is not None:
            rate = _distribution(self.stream_rate, "data.stream_rate")
            if not rate.always_positive:
                raise ValueError("data.stream_rate must be > 0 rows/s for every node")

    def options(self) -> dict:
        """The loader's own options (the subclass's fields)."""
        base = {f.name for f in fields(DataConfig)}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in base}


@dataclass
class DigitsData(DataConfig):
    """scikit-learn's digits (8x8 images, 10 classes): 1,437 train / 360 test samples."""
    test_fraction: float = 0.2
    split: str = "stratified"  # stratified (shuffled by the seed) | ordered (first rows train: M2N2's paper)
    pixels: str = "unit"       # unit (scaled to [0, 1]) | raw (0..16)

    def __post_init__(self):
        super().__post_init__()
        _choice(self.split, ("stratified", "ordered"), "data.split")
        _choice(self.pixels, ("unit", "raw"), "data.pixels")


@dataclass
class SyntheticData(DataConfig):
    """make_classification-style data, sizes configurable (up to 10^6 samples)."""
    n_samples: int = 10_000
    n_features: int = 64
    n_classes: int = 10
    n_informative: Optional[int] = None
    test_fraction: float = 0.2
    class_sep: float = 1.0


@dataclass
class SyntheticMultilabelData(DataConfig):
    """make_multilabel_classification: a small multi-label dataset (task multilabel)."""
    n_samples: int = 2000
    n_features: int = 32
    n_labels: int = 8
    mean_labels: int = 2
    test_fraction: float = 0.2


@dataclass
class YeastData(DataConfig):
    """Yeast from river (2,417 rows, 103 features, 14 labels) in river's (stream) order: the last
    round(test_fraction * 2417) rows test, so the seed shuffles nothing."""
    test_fraction: float = 0.2
    stream_rate: Any = 1.0        # a stream by nature: rows per simulated second per node


@dataclass
class LabelBlocksData(DataConfig):
    """A multi-label stream with planted label blocks (the ground truth: datasets.planted_blocks)
    and an optional regrouping mid-stream; the test rows are extra rows of the final concept."""
    n_samples: int = 20000            # training rows (the stream)
    n_features: int = 32
    n_labels: int = 50
    block_size: int = 5               # labels per block (the last block may be smaller)
    blocks_per_sample: int = 2        # blocks switched on in each row
    noise: float = 0.02               # chance of flipping each label bit, in [0, 0.5)
    swap_at: Optional[float] = None   # fraction of the stream after which the blocks regroup (null: never)
    test_fraction: float = 0.2
    stream_rate: Any = 1.0


@dataclass
class NpzData(DataConfig):
    """A user file with arrays X_train, y_train, X_test, y_test."""
    path: str = MISSING


DATA = {"digits": DigitsData, "synthetic": SyntheticData, "synthetic_multilabel": SyntheticMultilabelData,
        "yeast": YeastData, "label_blocks": LabelBlocksData, "npz": NpzData}
assert tuple(DATA) == DATASETS, "every dataset needs its config dataclass"


@dataclass
class ModelConfig:
    name: str = "mlp"        # logreg | mlp | cnn | lenet | an import path module.Class
    hidden: List[int] = field(default_factory=lambda: [32])    # mlp widths
    channels: List[int] = field(default_factory=lambda: [8, 16])  # cnn
    kwargs: Dict[str, Any] = field(default_factory=dict)      # a user class's constructor arguments

    def __post_init__(self):
        if self.name not in MODELS and "." not in self.name:
            raise ValueError(f"unknown model {self.name!r}; choose one of: {', '.join(MODELS)} "
                             "(or module.Class for a torch module of your own)")
        if any(w < 1 for w in [*self.hidden, *self.channels]):
            raise ValueError("model widths (model.hidden, model.channels) must be >= 1")


@dataclass
class TaskConfig:
    """The task itself (multiclass or multilabel) follows from the data's labels."""
    prequential: bool = False  # test-then-train: each row is first predicted when it reaches its node


@dataclass
class EvalConfig:
    every: int = 1            # evaluate every k rounds (and always after the last)
    max_nodes: int = 1000     # evaluate a fixed seeded sample of this many nodes when N is larger
    max_test: int = 2000      # use the first max_test test samples (the test split is shuffled)
    diverged_loss: Optional[float] = 1000.0  # a model whose test loss exceeds this multiple of
    # the initial models' mean test loss (or of 1, if larger) has diverged, as has one with
    # NaN/inf parameters (null: only those)

    def __post_init__(self):
        for k in ("every", "max_nodes", "max_test"):
            if getattr(self, k) < 1:
                raise ValueError(f"eval.{k} must be >= 1, got {getattr(self, k)}")
        if self.diverged_loss is not None and not 1 < self.diverged_loss < math.inf:
            raise ValueError(f"eval.diverged_loss must be a finite number > 1 or null, got {self.diverged_loss}")


# sim.storage: the torch dtype node stacks are kept in; every computation upcasts to float32
STORAGE = ("float32", "bfloat16", "float16")


@dataclass
class SimConfig:
    batching: bool = True     # all events of one kind at one instant -> one kernel call
    resolution: float = 0.0   # > 0: round event times up to multiples of this (a tick clock)
    progress: bool = True
    record_events: bool = False
    storage: str = "float32"  # float32 | bfloat16 | float16: the dtype node stacks are kept in (gossip)
    checkpoint_every: int = 0  # > 0: write checkpoint.pt every k rounds (and on SIGINT/SIGTERM); see `resume`

    def __post_init__(self):
        if not 0 <= self.checkpoint_every <= MAX_INT:
            raise ValueError(f"sim.checkpoint_every must be an integer >= 0 (0: only on SIGINT/SIGTERM), "
                             f"got {self.checkpoint_every}")
        if not 0 <= self.resolution < math.inf:
            raise ValueError(f"sim.resolution must be a finite number >= 0, got {self.resolution}")
        if self.storage not in STORAGE:
            raise ValueError(f"sim.storage must be one of {', '.join(STORAGE)}; got {self.storage!r}")


@dataclass
class LogConfig:
    tensorboard: bool = False  # also log every evaluation to TensorBoard (tensorboard/ in the run dir)
    graph: bool = True         # graph runs draw graph.png: the topology coloured by final accuracy


@dataclass
class RunConfig:
    protocol: Any = MISSING    # the protocol's own config dataclass (a ProtocolConfig)
    topology: Any = MISSING    # TopologyConfig
    data: Any = MISSING        # a DataConfig subclass
    model: Any = MISSING       # ModelConfig
    nodes: int = 100
    rounds: int = 30
    seed: int = 0
    device: str = "cpu"        # cpu | cuda (cuda:K)
    speed: Any = 1000.0        # samples/s per node: a number (.inf: no time) or a distribution
    label: str = ""            # a name for the run (an experiment's arm); shown in outputs
    attack: Any = None         # Byzantine clients: {kind, fraction | nodes, scale, std} (clients.attacks)
    availability: Any = None   # nodes online and offline: {kind: sessions | diurnal | trace, ...} (clients.availability)
    train: TrainConfig = field(default_factory=TrainConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    log: LogConfig = field(default_factory=LogConfig)
    resume: Optional[str] = None  # a checkpoint.pt to continue from (simulator.checkpoint)

    def __post_init__(self):
        check_numbers(self)
        for key, low, high in (("nodes", 1, 10**9), ("rounds", 1, 10**9), ("seed", 0, 2**32 - 1)):
            if not low <= getattr(self, key) <= high:
                raise ValueError(f"{key} must be an integer from {low} to {high}, got {getattr(self, key)}")
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise ValueError(f"unknown device {self.device!r}; choose cpu or cuda")
        Attack.from_spec(self.attack)
        availability.check_spec(self.availability)
        if not _distribution(self.speed, "speed").always_positive:
            raise ValueError("speed must be > 0 samples/s for every node (check speed.value or speed.low)")


MAX_INT = 10**12  # no count in a scenario is larger; beyond it int64 arithmetic can overflow


def check_numbers(obj, prefix: str = "") -> None:
    """Over every field of a config (nested): no integer beyond +-MAX_INT and no NaN, whatever
    the key (the fields' own checks then say what else is allowed)."""
    for f in fields(obj):
        value, key = getattr(obj, f.name), f"{prefix}{f.name}"
        if hasattr(value, "__dataclass_fields__"):
            check_numbers(value, key + ".")
            continue
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_INT:
                raise ValueError(f"{key} must be at most 10^12 in size, got {v}")
            if isinstance(v, float) and math.isnan(v):
                raise ValueError(f"{key} must be a number, got nan")


# the ConfigStore: the schema and every group option
def _store():
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="schema", node=RunConfig)
    for name in TOPOLOGIES:
        cs.store(group="topology", name=name, node=TopologyConfig(name=name))
    for name, cls in DATA.items():
        cs.store(group="data", name=name, node=cls(name=name))
    for name in MODELS:
        cs.store(group="model", name=name, node=ModelConfig(name=name))
    return cs


_CS = _store()
_STORED: dict[str, dict] = {"protocol": {}, "model": dict.fromkeys(MODELS)}  # option -> its config class


def options(group: str) -> list[str]:
    """The named options of a group (import paths may be added on the fly)."""
    if group == "protocol":
        return protocols.names()
    return {"topology": list(TOPOLOGIES), "data": list(DATA), "model": list(MODELS)}[group]


def ensure_option(group: str, value: str) -> None:
    """Make `group=value` composable: a registered protocol, or an import path (a Protocol or
    an nn.Module class) imported now and stored as an option. Raises ConfigError."""
    if group not in _STORED:
        if value not in options(group):
            raise ConfigError(f"unknown {group} {value!r}; choose one of: {', '.join(options(group))}")
        return
    if value in _STORED[group] and (group == "model" or _STORED[group][value] is _protocol_config(value)):
        return  # stored, and not redefined since (a reloaded module)
    try:
        if group == "protocol":
            node = protocols.get(value).config(name=value)
        else:
            from torch import nn
            if "." not in value:
                raise ProtocolError(f"unknown model {value!r}; choose one of: {', '.join(MODELS)} "
                                    "(or module.Class for a torch module of your own)")
            cls = import_object(value, "model")
            if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
                raise ProtocolError(f"model {value!r} is not a torch.nn.Module class")
            node = ModelConfig(name=value)
    except (ProtocolError, ValueError, TypeError) as err:
        raise ConfigError(str(err)) from None
    _CS.store(group=group, name=value, node=node)
    _STORED[group][value] = type(node)


def _protocol_config(name: str):
    try:
        return protocols.get(name).config
    except ProtocolError:
        return None


def group_choices(overrides: Sequence[str]) -> list[tuple[str, str]]:
    """(group, option) for every group choice in the overrides, sweep values included."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    parsed = []
    for o in overrides:
        try:
            parsed += parser.parse_overrides([o])
        except Exception as err:  # Hydra's grammar error: its first line says what is wrong
            raise ConfigError(f"cannot read the override {o!r}: {str(err).splitlines()[0]}") from None
    out = []
    for o in parsed:
        group = o.key_or_group.lstrip("+~/")
        if group in GROUPS and o.package is None and not o.is_delete():
            values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
            out += [(group, v) for v in values]
    return out


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The scenario config with Hydra overrides applied (struct mode: unknown keys fail)."""
    overrides = list(overrides)
    for group, value in group_choices(overrides):
        ensure_option(group, value)
    for name in protocols.names():  # protocols registered since the last compose
        ensure_option("protocol", name)
    try:
        return _compose(overrides)
    except ConfigError:
        raise
    except Exception as err:
        message = explain(err, overrides)
    if not any(o.split("=", 1)[0].lstrip("+~") in message for o in overrides):
        for o in overrides:  # the message names no key: find the override that fails alone
            try:
                _compose([o])
            except Exception:
                raise ConfigError(f"cannot apply {o!r}: {message}") from None
    raise ConfigError(message)


OPEN_KEYS = ("model.kwargs",)  # free-form mappings: any key may be set or added


def open_overrides(overrides: Sequence[str]) -> list[str]:
    """`model.kwargs.depth=3` and `model.kwargs={depth: 3}` as Hydra takes them (`++`: set or add)."""
    out = []
    for o in overrides:
        key = o.split("=", 1)[0]
        if "=" in o and key[:1] not in "+~" and any(key == k or key.startswith(k + ".") for k in OPEN_KEYS):
            o = "++" + o
        out.append(o)
    return out


def _compose(overrides: Sequence[str]) -> DictConfig:
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    # inside a running Hydra app (a murmur job, or a user's own) Hydra is initialised already:
    # set it aside while composing, then put it back
    outer = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(SCENARIOS), version_base=None):
            return hydra_compose(config_name="config", overrides=open_overrides(overrides))
    finally:
        if outer is not None:
            GlobalHydra.instance().clear()
            GlobalHydra.instance().initialize(outer)


def explain(err: BaseException, overrides: Sequence[str] = ()) -> str:
    """One line from Hydra's or OmegaConf's (multi-line) error: the key and what is allowed."""
    from omegaconf.errors import (ConfigAttributeError, ConfigKeyError, MissingMandatoryValue,
                                  OmegaConfBaseException)

    cause = err.__cause__ if isinstance(err.__cause__, OmegaConfBaseException) else err
    key = getattr(cause, "full_key", None)
    if isinstance(cause, MissingMandatoryValue) and key:
        return f"{key} is required: set it on the command line, e.g. {key}=..."
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and key:
        parent, _, _ = str(key).rpartition(".")
        valid = _valid_keys(parent, [o for o in overrides if not _related(o.split("=", 1)[0].lstrip("+~"), str(key))])
        where = f" of {parent}" if parent else ""
        return f"unknown key {key!r}; valid keys{where}: {', '.join(valid)}"
    text = first_line(cause)
    if "Could not find" in text and "/" in text:  # an unknown group option
        group, _, value = text.split("'")[1].partition("/")
        if group in GROUPS:
            return f"unknown {group} {value!r}; choose one of: {', '.join(options(group))}"
    typed = re.match(r"Value '(.*)' (?:of type '\w+' could not be converted to|is not a valid) (\w+)", text)
    if typed and key:  # OmegaConf's type error, said the way the rest of our errors are
        kind = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false", "bool": "true or false",
                "String": "a string"}.get(typed.group(2), typed.group(2))
        return f"{key} must be {kind}, got {typed.group(1)!r}"
    if key and ("is not a ListConfig" in text or "Cannot merge DictConfig with ListConfig" in text):
        return f"{key} must be a list, e.g. {key}=[32,16]"
    return f"{key}: {text}" if key else text


def _related(a: str, b: str) -> bool:
    """One key path is the other or lies under it (a group choice is no key path)."""
    return a == b or a.startswith(b + ".") or (b.startswith(a + ".") and a not in GROUPS)


def _valid_keys(parent: str, overrides: Sequence[str]) -> list[str]:
    try:
        cfg = _compose(overrides)  # not compose(): an error here must not be explained again
        node = OmegaConf.select(cfg, parent) if parent else cfg
        return sorted(str(k) for k in node.keys() if k != "name" or not parent)
    except Exception:
        return []


def _to_object(cfg: DictConfig) -> RunConfig:
    from omegaconf.errors import OmegaConfBaseException

    try:
        out = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(explain(err)) from None
    except (ValueError, TypeError) as err:  # a __post_init__ check: its message names the key
        raise ConfigError(str(err).splitlines()[0]) from None
    if not isinstance(out, RunConfig):
        raise ConfigError("the config is not a murmuration scenario")
    return out


def resolve(config: Mapping[str, Any] | DictConfig | RunConfig | None = None,
            overrides: Sequence[str] = ()) -> RunConfig:
    """The typed RunConfig for Hydra overrides and/or a mapping merged on top of them (any part
    of a config: what it leaves out keeps its default; a group given by name,
    {"protocol": "gossip"}, or by its `name` key); or an already composed DictConfig (what
    `murmur` passes)."""
    if isinstance(config, RunConfig):
        return config
    if isinstance(config, DictConfig) and not overrides:
        cfg = config.copy()
        with open_dict(cfg):
            cfg.pop("hydra", None)
        return _to_object(cfg)
    mapping: dict = {}
    choices: list[str] = []
    if config is not None and not isinstance(config, (Mapping, DictConfig)):
        raise ConfigError(f"config must be a mapping such as {{'nodes': 8}} (or a RunConfig), "
                          f"got {type(config).__name__}")
    if isinstance(overrides, str) or not all(isinstance(o, str) for o in overrides):
        raise ConfigError("overrides must be a list of strings such as ['nodes=8', 'rounds=2']")
    if config is not None:
        mapping = {k: v for k, v in (OmegaConf.to_container(config) if isinstance(config, DictConfig)
                                     else dict(config)).items() if k != "hydra"}
        for group in GROUPS:
            value = mapping.get(group)
            if isinstance(value, str):
                choices.append(f"{group}={mapping.pop(group)}")
            elif isinstance(value, Mapping) and value.get("name"):
                choices.append(f"{group}={value['name']}")
    cfg = compose(choices + list(overrides))
    if mapping:
        for key in OPEN_KEYS:
            OmegaConf.set_struct(OmegaConf.select(cfg, key), False)
        try:
            cfg = OmegaConf.merge(cfg, mapping)
        except Exception as err:
            raise ConfigError(explain(err, choices)) from None
    return _to_object(cfg)
