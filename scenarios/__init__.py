"""Scenarios: the Hydra configs and the ONE assembly both engines use.

    config.yaml, experiment/, arm/   Hydra's files (defaults live in the schema, not here)
    schema                           the typed config: resolve(...) -> RunConfig
    world                            assemble(RunConfig) -> World (data, owners, graph + links,
                                     speeds, model template, task)
"""
from scenarios.schema import SCENARIOS, ConfigError, RunConfig, compose, resolve
from scenarios.world import World, assemble, build_model

__all__ = ["SCENARIOS", "ConfigError", "RunConfig", "World", "assemble", "build_model", "compose", "resolve"]
