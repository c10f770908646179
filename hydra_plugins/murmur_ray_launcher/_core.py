"""A sweep on Ray: every job is one Ray task that composes its config and calls Hydra's
`run_job`, as the basic launcher does in-process; the JobReturns come back to the driver."""
import logging
import os
import signal
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

# every job's last line reaches the driver: Ray folds lines that differ only in their numbers
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
import ray  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.core.singleton import Singleton  # noqa: E402
from hydra.core.utils import (JobReturn, JobStatus, configure_log, filter_overrides,  # noqa: E402
                              run_job, setup_globals)
from omegaconf import open_dict  # noqa: E402

log = logging.getLogger(__name__)

POLL_S = 1.0
CANCEL_GRACE_S = 30.0  # after an interrupt: how long cancelled jobs get to write what they measured


def threads_for(num_cpus: Any) -> int:
    """Torch threads for a task holding num_cpus CPUs (at least one; 0.5 CPU -> 1 thread)."""
    try:
        return max(1, int(float(num_cpus)))
    except (TypeError, ValueError):
        return 1


def execute_job(idx: int, overrides: Sequence[str], shared: Tuple[Any, Any, Any, Dict[Any, Any]],
                cwd: str, threads: int) -> Tuple[JobReturn, str, str]:
    """One job, inside a Ray worker: (its JobReturn, the Ray node id, the host name)."""
    hydra_context, config, task_function, singleton_state = shared
    setup_globals()
    Singleton.set_state(singleton_state)  # the ConfigStore with the user's protocols and models
    if os.path.isdir(cwd):  # a filesystem shared with the driver: relative paths mean the same
        os.chdir(cwd)
    try:
        import torch

        torch.set_num_threads(threads)  # never more threads than the CPUs this task holds
    except ImportError:
        pass
    sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = ray.get_runtime_context().get_task_id()
        sweep_config.hydra.job.num = idx
    HydraConfig.instance().set_config(sweep_config)
    ret = run_job(hydra_context=hydra_context, config=sweep_config, task_function=task_function,
                  job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    return ret, ray.get_runtime_context().get_node_id(), socket.gethostname()


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> List[JobReturn]:
    setup_globals()
    assert launcher.config is not None and launcher.task_function is not None
    assert launcher.hydra_context is not None
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)

    started = not ray.is_initialized()  # in-process callers may have connected already
    if started:
        main = threading.current_thread() is threading.main_thread()
        on_sigterm = signal.getsignal(signal.SIGTERM) if main else None
        with warnings.catch_warnings():  # a tip about a future default, on every start
            warnings.filterwarnings("ignore", message="Tip: In future versions of Ray")
            ray.init(**launcher.init_kwargs)
        if on_sigterm is not None:  # ray.init's own handler exits at once: keep the caller's
            signal.signal(signal.SIGTERM, on_sigterm)
    try:
        return _run(launcher, job_overrides, initial_job_idx, sweep_dir)
    finally:
        if started:
            ray.shutdown()


def _run(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int,
         sweep_dir: Path) -> List[JobReturn]:
    options = dict(launcher.remote_options)
    threads = threads_for(options.get("num_cpus", 1))
    cpus = ray.cluster_resources().get("CPU", 0)
    log.info(f"Ray launcher: {len(job_overrides)} jobs on a Ray cluster of {cpus:g} CPUs "
             f"({', '.join(f'{k}={v}' for k, v in options.items())} per job); "
             f"sweep output dir: {sweep_dir}")
    shared = ray.put((launcher.hydra_context, launcher.config, launcher.task_function,
                      Singleton.get_state()))
    remote = ray.remote(execute_job)
    cwd = os.getcwd()
    refs: List[Any] = []
    jobs: Dict[Any, Tuple[int, List[str]]] = {}  # ref -> (job number, overrides)
    results: Dict[int, JobReturn] = {}
    try:
        for i, overrides in enumerate(job_overrides):
            idx = initial_job_idx + i
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            ref = remote.options(name=f"job #{idx}", **options).remote(idx, list(overrides), shared,
                                                                        cwd, threads)
            refs.append(ref)
            jobs[ref] = (idx, list(overrides))
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=len(pending), timeout=0)
            if not ready:  # wait here, not inside Ray: a signal to this process is handled
                time.sleep(POLL_S)
            for ref in ready:
                idx, overrides = jobs[ref]
                try:
                    ret, node, host = ray.get(ref)
                except ray.exceptions.RayError as err:  # its worker or node died (retries spent)
                    # said here; not raised: Hydra would end the sweep with it, and murmur's last
                    # line already names each job that left no result in the sweep directory
                    log.error(f"\t#{idx} did not finish on Ray: {err}")
                    ret = JobReturn(overrides=overrides, status=JobStatus.COMPLETED)
                else:
                    log.info(f"\t#{idx} ran on {host} (Ray node {node})")
                results[idx] = ret
    except BaseException as err:  # Ctrl-C or SIGTERM here: interrupt the jobs still running;
        running = [ref for ref in refs if jobs[ref][0] not in results]  # each writes what it has
        for ref in running:
            ray.cancel(ref)
        if running:
            ray.wait(running, num_returns=len(running), timeout=CANCEL_GRACE_S)
        if isinstance(err, SystemError) and err.__cause__ is not None:
            raise err.__cause__  # a signal handler's exception, raised inside one of Ray's calls
        raise
    return [results[idx] for idx in sorted(results)]
