"""`murmur`: the Hydra command line.

    murmur                                   # FedAvg, digits, 100 nodes
    murmur protocol=gossip topology=ring nodes=50 rounds=40
    murmur -m protocol=fedavg,gossip seed=0,1,2   # a sweep: one run per combination

A user mistake (unknown protocol, nodes=0, a missing file) prints one line naming the problem
and the valid choices, and exits with code 2.
"""
from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from clients.datasets import DataError
from clients.partition import PartitionError
from simulator.config import ConfigError
from simulator.run import SCENARIOS, compose, run, summary_line
from topologies import TopologyError

USER_ERRORS = (ConfigError, DataError, PartitionError, TopologyError)
GROUPS = tuple(sorted(p.name for p in SCENARIOS.iterdir() if p.is_dir()))  # protocol, topology, ...


def _fail(message: str) -> None:
    print(f"murmur: error: {message}", file=sys.stderr)
    sys.exit(2)


def check_overrides(args: list[str]) -> None:
    """Catch a bad group choice or unknown key before Hydra prints a multi-line error."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [a for a in args if not a.startswith("-") and "=" in a]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as err:  # Hydra's parser error text is one clear sentence
        _fail(str(err).splitlines()[0])
    base = OmegaConf.load(SCENARIOS / "config.yaml")
    for o in parsed:
        key = o.key_or_group
        if o.package is not None or key.startswith("hydra") or key.startswith("+") or o.is_add():
            continue
        if key in GROUPS:
            choices = sorted(p.stem for p in (SCENARIOS / key).glob("*.yaml") if not p.stem.startswith("_"))
            values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
            for v in values:
                if v not in choices:
                    _fail(f"unknown {key} {v!r}; choose one of: {', '.join(choices)}")
        elif key.split(".")[0] not in base and key.split(".")[0] not in GROUPS:
            valid = sorted([k for k in base if k not in ("defaults", "hydra")] + list(GROUPS))
            _fail(f"unknown key {key!r}; valid keys: {', '.join(valid)}")
    # compose the first job of a sweep, so any other override error is caught here, in one line
    probe = [f"{o.key_or_group}={next(iter(o.sweep_string_iterator()))}" if o.is_sweep_override()
             else o.input_line for o in parsed if not o.key_or_group.startswith("hydra")]
    try:
        compose(probe)
    except Exception as err:  # Hydra's composition errors: keep their words, drop the hints
        text = f"{err}\n{err.__cause__ or ''}"
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()
                 and not ln.strip().startswith(("full_key", "object_type", "Set the environment"))]
        _fail(" ".join(lines))


@hydra.main(config_path=str(SCENARIOS), config_name="config", version_base=None)
def _app(cfg: DictConfig) -> None:
    raw = OmegaConf.to_container(cfg, resolve=True)
    out_dir = HydraConfig.get().runtime.output_dir
    try:
        result = run(raw, out_dir=out_dir)
    except USER_ERRORS as err:
        _fail(str(err))
    print(summary_line(result.summary))


def main() -> None:
    check_overrides(sys.argv[1:])
    _app()


if __name__ == "__main__":
    main()
