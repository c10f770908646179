"""`murmur`: the Hydra command line.

    murmur                                   # FedAvg, digits, 100 nodes
    murmur protocol=gossip topology=ring nodes=50 rounds=40
    murmur protocol=my_rules.MedianGossip protocol.trim=0.2   # a protocol in your own module
    murmur -m protocol=fedavg,gossip seed=0,1,2   # a sweep: one run per combination

A user mistake (unknown protocol, nodes=0, a misspelt key, a missing file) prints one line
naming the problem and what is allowed, and exits with code 2.
"""
from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from clients.datasets import DataError
from clients.partition import PartitionError
from protocols import ProtocolError
from scenarios import SCENARIOS, ConfigError, compose, resolve
from scenarios.schema import ensure_option, group_choices
from simulator.run import run, summary_line
from topologies import TopologyError

USER_ERRORS = (ConfigError, DataError, PartitionError, ProtocolError, TopologyError)


def _fail(message: str) -> None:
    print(f"murmur: error: {message}", file=sys.stderr)
    sys.exit(2)


def check_overrides(args: list[str]) -> None:
    """Catch a bad choice, key or value before Hydra prints a multi-line error: every group
    choice of a sweep is checked (user modules are imported and join their group), and the
    first job is composed and typed."""
    overrides = [a for a in args if not a.startswith("-") and "=" in a]
    try:
        for group, option in group_choices(overrides):  # every option of a sweep
            ensure_option(group, option)
        resolve(compose(first_job(overrides)))
    except USER_ERRORS as err:
        _fail(str(err))


def first_job(overrides: list[str]) -> list[str]:
    """The overrides of a sweep's first job (Hydra's own keys left out)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [f"{o.key_or_group}={next(iter(o.sweep_string_iterator()))}" if o.is_sweep_override()
            else o.input_line for o in parsed if not o.key_or_group.lstrip("+~").startswith("hydra")]


@hydra.main(config_path=str(SCENARIOS), config_name="config", version_base=None)
def _app(cfg: DictConfig) -> None:
    out_dir = HydraConfig.get().runtime.output_dir
    try:
        result = run(resolve(cfg), out_dir=out_dir)
    except USER_ERRORS as err:
        _fail(str(err))
    print(summary_line(result.summary))


def main() -> None:
    check_overrides(sys.argv[1:])
    _app()


if __name__ == "__main__":
    main()
