"""The engine and the run loop; `simulator.run` is the Python API (see simulator/run.py)."""
from scenarios import ConfigError, RunConfig, compose, resolve
from simulator.engine import Engine
from simulator.run import RunResult, run

__all__ = ["ConfigError", "Engine", "RunConfig", "RunResult", "compose", "resolve", "run"]
