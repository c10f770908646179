"""The launcher's config, `hydra.launcher` once `hydra/launcher=ray` is chosen. Keys left null
are not passed to Ray (its own defaults hold); other keyword arguments join with `+`, e.g.
`+hydra.launcher.ray.init.runtime_env={env_vars: {A: b}}` (an environment for every job)."""
from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore


@dataclass
class RayInitConf:
    """Keyword arguments of ray.init()."""

    # null: start a local Ray instance (or join the one RAY_ADDRESS names); auto: join the
    # cluster this machine belongs to (started with `ray start`); HOST:PORT: that head node
    address: Optional[str] = None
    num_cpus: Optional[int] = None  # a local instance's CPUs (null: all of them)
    num_gpus: Optional[int] = None
    namespace: Optional[str] = None
    include_dashboard: Optional[bool] = None
    log_to_driver: bool = True  # each job's output (its last line) printed here


@dataclass
class RayRemoteConf:
    """Options of every job's Ray task (ray.remote): the resources one job holds while it runs.
    A job's torch uses num_cpus threads (at least 1), so a node runs at most (its CPUs / num_cpus)
    jobs side by side and is never oversubscribed. Custom resources join with `+`:
    `+hydra.launcher.ray.remote.resources={big_node: 1}`."""

    num_cpus: float = 1
    num_gpus: float = 0
    memory: Optional[int] = None  # bytes reserved per job (a scheduling hint, not a limit)
    max_retries: Optional[int] = None  # reruns when a job's worker or node dies (Ray's default: 3)


@dataclass
class RayConf:
    init: RayInitConf = field(default_factory=RayInitConf)
    remote: RayRemoteConf = field(default_factory=RayRemoteConf)


@dataclass
class RayLauncherConf:
    _target_: str = "hydra_plugins.murmur_ray_launcher.ray_launcher.RayLauncher"
    ray: RayConf = field(default_factory=RayConf)


ConfigStore.instance().store(group="hydra/launcher", name="ray", node=RayLauncherConf,
                             provider="murmuration")
