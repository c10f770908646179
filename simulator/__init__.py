"""The engine and the run loop; `simulator.run` is the Python API (see simulator/run.py)."""
from simulator.config import ConfigError, RunConfig
from simulator.engine import Engine
from simulator.run import RunResult, compose, run

__all__ = ["ConfigError", "Engine", "RunConfig", "RunResult", "compose", "run"]
