"""The Launcher Hydra instantiates; the Ray work is in `_core` (imported only when a sweep runs,
so Hydra's plugin scan never imports Ray)."""
from typing import Any, Optional, Sequence

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf


class RayLauncher(Launcher):
    def __init__(self, ray: Any = None) -> None:
        ray = OmegaConf.to_container(ray, resolve=True) if OmegaConf.is_config(ray) else dict(ray or {})
        # null means Ray's own default: not passed
        self.init_kwargs = {k: v for k, v in (ray.get("init") or {}).items() if v is not None}
        self.remote_options = {k: v for k, v in (ray.get("remote") or {}).items() if v is not None}
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config = config
        self.task_function = task_function
        self.hydra_context = hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from . import _core

        return _core.launch(self, job_overrides, initial_job_idx)
