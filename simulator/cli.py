"""`murmur`: the Hydra command line.

    murmur                                   # FedAvg, digits, 100 nodes
    murmur protocol=gossip topology=ring nodes=50 rounds=40
    murmur protocol=my_rules.MedianGossip protocol.trim=0.2   # a protocol in your own module
    murmur -m protocol=fedavg,gossip seed=0,1,2   # a sweep: one run per combination

A user mistake (unknown protocol, nodes=0, a misspelt key, a missing file) prints one line
naming the problem and what is allowed, and exits with code 2. Every run prints one last line
that starts with its status. Exit codes: 0 completed, 1 failed (an error inside the run; its
traceback is saved in the run directory), 2 a user mistake, 3 diverged, 130 SIGINT (Ctrl-C),
143 SIGTERM; the interrupted run has written its summary.json and curves.png first. In a
sweep (`-m`) a job that fails does so alone: the other jobs run, and the sweep ends with one
line naming the jobs that did not complete, and exit code 1.

A sweep runs its jobs side by side (Hydra's joblib launcher, `hydra/launcher=parallel`): one
job per usable core at most, and torch's threads divided among them (`hydra.launcher.n_jobs=K`
picks K; `hydra/launcher=basic` runs them one after another, in this process). Every job leaves
a small record in the sweep directory (`.murmur/job-N.json`: its overrides, exit code, whether
it was skipped, its torch threads); when the sweep ends, this process counts the jobs from
those records, whichever launcher ran them and wherever, and writes the sweep's report.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import traceback
import warnings
from dataclasses import asdict, dataclass, is_dataclass, replace
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from clients.datasets import DataError
from clients.partition import PartitionError
from protocols import ProtocolError
from scenarios import SCENARIOS, ConfigError, compose, resolve
from scenarios.schema import GROUPS, ensure_option, explain, group_choices, open_overrides, options
from simulator.checkpoint import NAME as CHECKPOINT
from simulator.checkpoint import Checkpoint
from simulator.metrics import strict, write_json
from simulator.run import Interrupted, RunWarning, interrupts, one_line, run, summary_line
from topologies import TopologyError

USER_ERRORS = (ConfigError, DataError, PartitionError, ProtocolError, TopologyError)
EXIT = {"completed": 0, "failed": 1, "user_error": 2, "diverged": 3}
# Hydra's flags that take a value (the value is not an override)
VALUE_FLAGS = {"-c", "--cfg", "-p", "--package", "-cp", "--config-path", "-cn", "--config-name",
               "-cd", "--config-dir", "--experimental-rerun", "--info", "-i"}


RECORDS = ".murmur"  # in a sweep directory: one record per job, job-N.json
THREADS_ENV = "MURMUR_SWEEP_THREADS"  # set by the sweep for its parallel jobs: torch threads each


class UsageError(Exception):
    """A bad command line, found before Hydra starts."""


@dataclass
class Job:
    number: int
    overrides: list[str]
    code: int
    skipped: bool = False  # a sweep job found already completed in its directory


JOBS: list[Job] = []  # the jobs this process ran (a sweep's, in order)
SWEEP: list[Job] | None = None  # a sweep's jobs, counted from their records when it ended
SIDE_BY_SIDE = False  # a sweep's jobs run in worker processes now (an interrupt kills them)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no sched_getaffinity (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def sweep_jobs(cfg: DictConfig) -> list[list[str]] | None:
    """The overrides of every job of a multirun, in job-number order, as Hydra's basic sweeper
    makes them (hydra.sweeper.params, then the command line); None for another sweeper or a sweep
    it cannot list (e.g. a glob, which needs the config repository)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hydra_cfg = cfg.hydra
    if not str(OmegaConf.select(hydra_cfg, "sweeper._target_", default="")).endswith("BasicSweeper"):
        return None
    try:
        params = OmegaConf.select(hydra_cfg, "sweeper.params", default=None) or {}
        arguments = [f"{k}={v}" for k, v in params.items()]
        arguments += list(OmegaConf.to_container(hydra_cfg.overrides.task, resolve=False))
        overrides = OverridesParser.create().parse_overrides(arguments)
        return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]
    except Exception:
        return None


def _n_jobs(*, _root_: DictConfig) -> int:
    """`hydra.launcher.n_jobs`'s default: the usable cores, at most one per job of the sweep."""
    jobs = sweep_jobs(_root_) if "hydra" in _root_ else None
    return min(usable_cores(), len(jobs)) if jobs else usable_cores()


OmegaConf.register_new_resolver("murmur_n_jobs", _n_jobs, replace=True)


def threads_per_job(cfg: DictConfig) -> int | None:
    """Torch threads for each job of a sweep run side by side by the joblib launcher (None for
    another launcher): the usable cores divided among the jobs that run at once, at least 1,
    at most OMP_NUM_THREADS when that is set."""
    launcher = cfg.hydra.launcher
    if not str(OmegaConf.select(launcher, "_target_", default="")).endswith("JoblibLauncher"):
        return None
    from joblib import cpu_count

    n = int(launcher.n_jobs)
    if n < 0:  # joblib's convention: -1 all CPUs, -2 all but one, ...
        n = max(1, cpu_count() + 1 + n)
    jobs = sweep_jobs(cfg)
    at_once = max(1, min(n, len(jobs)) if jobs else n)
    threads = max(1, usable_cores() // at_once)
    try:
        threads = min(threads, max(1, int(os.environ["OMP_NUM_THREADS"])))
    except (KeyError, ValueError):
        pass
    return threads


class SweepEnd(Callback):
    """Hydra callback (scenarios/config.yaml) run in the process that started the sweep: at its
    start, divides torch's threads among the jobs that will run side by side and clears the
    records of an earlier sweep into the same directory; at its end, counts the jobs from the
    records they left (SWEEP; `main` prints the last line) and writes the sweep's report."""

    def __init__(self) -> None:
        self.env: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        global SIDE_BY_SIDE
        shutil.rmtree(Path(config.hydra.sweep.dir) / RECORDS, ignore_errors=True)
        self.env = os.environ.get(THREADS_ENV)
        threads = threads_per_job(config)
        SIDE_BY_SIDE = threads is not None and int(config.hydra.launcher.n_jobs) != 1  # 1: in this process
        if threads is None:
            os.environ.pop(THREADS_ENV, None)
        else:  # the joblib launcher's worker processes start from this environment
            os.environ[THREADS_ENV] = str(threads)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        global SWEEP, SIDE_BY_SIDE
        SIDE_BY_SIDE = False
        if self.env is None:
            os.environ.pop(THREADS_ENV, None)
        else:
            os.environ[THREADS_ENV] = self.env
        stop_idle_workers()
        sweep_dir = Path(config.hydra.sweep.dir)
        SWEEP = counted_jobs(sweep_dir, sweep_jobs(config))
        if any(str(c.get("_target_", "")).endswith("report.SweepReport")
               for c in (OmegaConf.select(config, "hydra.callbacks") or {}).values()):
            return  # the experiment's own report callback writes it, with its settings
        try:
            from simulator.report import write_report

            written = write_report(sweep_dir)
        except Exception as err:  # the sweep's count matters more than its report
            print(f"murmur: report not written: {one_line(err)}", file=sys.stderr, flush=True)
            return
        if written:
            print(f"murmur: report written to {sweep_dir / 'report.md'} "
                  f"({', '.join(Path(w).name for w in written[1:])})", flush=True)


def stop_idle_workers() -> None:
    """End the joblib launcher's worker processes once the sweep is over: joblib keeps them for
    another sweep this process will never start, and the interpreter would wait seconds at exit
    for each to tear torch down."""
    try:
        from joblib.externals.loky import reusable_executor

        executor = getattr(reusable_executor, "_executor", None)
        if executor is not None:
            executor.shutdown(wait=True, kill_workers=True)
    except Exception:  # another joblib: its workers end at exit, only later
        pass


def counted_jobs(sweep_dir: Path, expected: list[list[str]] | None) -> list[Job]:
    """Every job of a sweep from the records in its directory. With the expected jobs' overrides,
    a job without a record (or with one of other overrides) counts as not completed (code -1)."""
    records = {}
    for path in (sweep_dir / RECORDS).glob("job-*.json"):
        try:
            r = json.loads(path.read_text())
            records[int(r["number"])] = Job(int(r["number"]), list(r["overrides"]), int(r["code"]),
                                            bool(r.get("skipped", False)))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    if expected is None:
        return [records[n] for n in sorted(records)]
    return [records[n] if n in records and records[n].overrides == list(o) else Job(n, list(o), -1)
            for n, o in enumerate(expected)]


def overrides_of(args: list[str]) -> list[str]:
    """The overrides among the command-line words; a bare word (no '=') is a UsageError."""
    out, after_flag = [], False
    for a in args:
        if after_flag:
            after_flag = False
        elif a.startswith("-"):
            after_flag = a in VALUE_FLAGS
        elif "=" in a or a.startswith("~"):
            out.append(a)
        else:
            raise UsageError(f"cannot read {a!r}: write each setting as key=value (e.g. {a}=...); "
                             "`murmur --help` lists the keys")
    return out


def check_overrides(args: list[str]) -> None:
    """Catch a bad command line before Hydra prints a multi-line error. One run: the job is
    composed and typed. A sweep: every group choice is checked (user modules are imported and
    join their group) and every swept value is typed against its key; a value that only fails
    its range check fails its own job, alone."""
    overrides = overrides_of(args)
    for group, option in group_choices(overrides):  # every option of a sweep
        ensure_option(group, option)
    first = compose(first_job(overrides))
    if not is_multirun(args):
        resolve(first)
        return
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for o in OverridesParser.create().parse_overrides(overrides):
        key = o.key_or_group.lstrip("+~")
        if not o.is_sweep_override() or key.startswith("hydra") or key in ("experiment", "arm", *GROUPS):
            continue
        for value in o.sweep_iterator():
            trial = first.copy()
            try:
                OmegaConf.update(trial, key, value, merge=True)
            except Exception as err:
                raise ConfigError(f"{explain(err)} (in the sweep {o.input_line!r})") from None


def is_multirun(args: list[str]) -> bool:
    return "-m" in args or "--multirun" in args


def first_job(overrides: list[str]) -> list[str]:
    """The overrides of a sweep's first job (Hydra's own keys left out)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [f"{o.key_or_group}={next(iter(o.sweep_string_iterator()))}" if o.is_sweep_override()
            else o.input_line for o in parsed if not o.key_or_group.lstrip("+~").startswith("hydra")]


def completed_before(cfg, out_dir: Path) -> bool:
    """Does out_dir hold a completed run of this very config (its summary.json says so)?"""
    try:
        summary = json.loads((out_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    return summary.get("status") == "completed" and same_config(summary.get("config"), cfg)


def same_config(saved, cfg) -> bool:
    """Is a summary's (or a checkpoint's) config this run's? (`resume` aside: a resumed run
    is the same run)."""
    mine = strict(asdict(cfg))
    theirs = strict(asdict(saved)) if is_dataclass(saved) else saved
    return isinstance(theirs, dict) and {**theirs, "resume": None} == {**mine, "resume": None}


def checkpoint_of(cfg, out_dir: Path) -> Path | None:
    """The checkpoint an unfinished run of this very config left in out_dir (None: none)."""
    path = out_dir / CHECKPOINT
    if not path.exists():
        return None
    try:
        return path if same_config(Checkpoint(path).config, cfg) else None
    except ConfigError:  # not whole (a checkpoint is renamed into place: never half written)
        return None


def run_job(cfg: DictConfig, out_dir: Path, skip_completed: bool = False,
            progress: bool | None = None) -> tuple[int, str, bool]:
    """One job: (exit code, its last line, skipped). A user mistake or an error inside the run
    ends this job alone, with a summary.json that says so; interrupts are raised again. With
    `skip_completed` (a sweep), a job whose directory already holds a completed run of the
    same resolved config is not run again, and one that left a checkpoint of it continues from
    there. `progress=False` hides the progress bar whatever sim.progress says (jobs side by side
    would draw theirs over each other)."""
    try:
        resolved = resolve(cfg)
        if skip_completed and completed_before(resolved, out_dir):
            return 0, f"murmur: skipped: already completed in {out_dir}", True
        if skip_completed and resolved.resume is None and (found := checkpoint_of(resolved, out_dir)):
            print(f"murmur: resuming from {found}", flush=True)
            resolved = replace(resolved, resume=str(found))
        result = run(resolved, out_dir=out_dir, progress=progress)
    except USER_ERRORS as err:
        write_json(out_dir / "summary.json", {"status": "failed", "status_detail": str(err),
                                              "user_error": True})
        return EXIT["user_error"], f"murmur: error: {err}", False
    except Exception as err:
        trace = out_dir / "traceback.txt"
        trace.write_text(traceback.format_exc())
        if not (out_dir / "summary.json").exists():  # the run writes its own once it started
            write_json(out_dir / "summary.json", {"status": "failed", "status_detail": str(err)})
        return EXIT["failed"], f"murmur: error: the run failed: {one_line(err)} (traceback in {trace})", False
    return EXIT[result.status], summary_line(result.summary), False


def task(cfg: DictConfig) -> int:
    """One job, in whichever process the launcher runs it: runs it, prints its last line and, in
    a sweep, leaves its record in the sweep directory. Returns the job's exit code."""
    hc = HydraConfig.get()
    sweep = hc.mode == RunMode.MULTIRUN
    threads = os.environ.get(THREADS_ENV) if sweep else None
    if threads:  # jobs side by side: their share of the cores, never more
        import torch

        torch.set_num_threads(int(threads))
    code, line, skipped = run_job(cfg, Path(hc.runtime.output_dir), skip_completed=sweep,
                                  progress=False if threads else None)
    job = Job(OmegaConf.select(hc, "job.num", default=0) or 0, list(hc.overrides.task), code, skipped)
    JOBS.append(job)
    if sweep:
        import torch

        records = Path(hc.sweep.dir) / RECORDS
        records.mkdir(parents=True, exist_ok=True)
        write_json(records / f"job-{job.number}.json", {**asdict(job), "dir": hc.runtime.output_dir,
                                                         "threads": torch.get_num_threads()})
    print(line, file=sys.stdout if code == 0 else sys.stderr, flush=True)
    return code


_app = hydra.main(config_path=str(SCENARIOS), config_name="config", version_base=None)(task)


def main() -> None:
    global SWEEP, SIDE_BY_SIDE
    JOBS.clear()
    SWEEP, SIDE_BY_SIDE = None, False
    full_error = os.environ.get("HYDRA_FULL_ERROR")
    threads_env = os.environ.get(THREADS_ENV)
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra's errors reach us whole; we print one line
    try:
        with interrupts(), warnings.catch_warnings():
            warnings.simplefilter("ignore", RunWarning)  # the last line already says it
            _main(sys.argv[1:])
    finally:
        for key, value in (("HYDRA_FULL_ERROR", full_error), (THREADS_ENV, threads_env)):
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


HELP = """murmur: simulate federated and decentralized learning (see the README for every key).

    murmur [group=option ...] [key=value ...]      one run
    murmur -m key=a,b,c ...                       a sweep: one run per combination

== Configuration groups ==
Compose your configuration from those groups (group=option)

{groups}

== Config ==
Override anything in the config (foo.bar=value)

{config}
Use --hydra-help to view Hydra specific help
"""


def print_help(args: list[str]) -> None:
    """`murmur --help`: the groups and the composed config (of these overrides). Hydra's own
    help copies its whole config repository once per group option, seconds on this config."""
    cfg = compose(first_job(overrides_of([a for a in args if a not in ("--help", "-h")])))
    groups = {g: sorted(options(g)) for g in GROUPS}
    for folder in ("arm", "experiment"):
        groups[folder] = sorted(p.stem for p in (SCENARIOS / folder).glob("*.yaml"))
    lines = "\n".join(f"{g}: {', '.join(v)}" for g, v in sorted(groups.items()))
    print(HELP.format(groups=lines, config=OmegaConf.to_yaml(cfg)), end="")


def _main(args: list[str]) -> None:
    try:
        if "--help" in args or "-h" in args:
            print_help(args)
            return
        check_overrides(args)
        sys.argv[1:] = open_overrides(args)  # what Hydra's own composition reads
        _app()
    except KeyboardInterrupt as err:
        _exit(130, f"murmur: interrupted (SIGINT); {measured(err)}")
    except Interrupted as err:
        _exit(143, f"murmur: interrupted (SIGTERM); {measured(err)}")
    except (UsageError, *USER_ERRORS) as err:
        _exit(2, f"murmur: error: {err}")
    except BrokenPipeError:  # `murmur --info | head`: the reader left; nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except OSError as err:  # e.g. Hydra cannot create the output directory
        _exit(2, f"murmur: error: {err.strerror or err}: {err.filename or ''}".rstrip(": "))
    except (HydraException, OmegaConfBaseException) as err:  # e.g. a sweep job that cannot compose
        _exit(2, f"murmur: error: {explain(err)}")
    except Exception as err:
        if os.environ.get("MURMUR_TRACEBACK"):
            raise
        _exit(1, f"murmur: error: internal error: {one_line(err)} (MURMUR_TRACEBACK=1 shows where)")
    jobs = SWEEP if SWEEP is not None else JOBS
    if SWEEP is not None or len(JOBS) > 1 or is_multirun(args):
        bad = [j for j in jobs if j.code != 0]
        skipped = sum(j.skipped for j in jobs)
        note = f" ({skipped} skipped: completed before)" if skipped else ""
        if bad:
            names = "; ".join(f"#{j.number} ({' '.join(j.overrides)}): "
                              + (f"exit {j.code}" if j.code >= 0 else "left no result") for j in bad)
            _exit(1, f"murmur: sweep: {len(jobs) - len(bad)} of {len(jobs)} jobs completed{note}; "
                     f"not completed: {names}")
        print(f"murmur: sweep: all {len(jobs)} jobs completed{note}")
        return
    if JOBS:
        sys.exit(JOBS[0].code)


def measured(err: BaseException) -> str:
    """Where an interrupted run or sweep left what it measured."""
    if SIDE_BY_SIDE:  # joblib killed its worker processes: their runs wrote nothing more
        return ("the sweep's running jobs were stopped; run the same command again to run every "
                "job that did not complete")
    return f"what the run measured is in its directory{resume_hint(err)}"


def resume_hint(err: BaseException) -> str:
    """How to continue an interrupted run, when it wrote a checkpoint."""
    path = getattr(err, "checkpoint", None)
    return f"; continue it with resume={path}" if path else ""


def _exit(code: int, line: str) -> None:
    print(line, file=sys.stderr, flush=True)
    sys.exit(code)


if __name__ == "__main__":  # `python -m simulator.cli`: the module Hydra's callback imports, once
    from simulator.cli import main as _main_of_the_module

    _main_of_the_module()
