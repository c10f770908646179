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
"""
from __future__ import annotations

import json
import os
import sys
import traceback
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from clients.datasets import DataError
from clients.partition import PartitionError
from protocols import ProtocolError
from scenarios import SCENARIOS, ConfigError, compose, resolve
from scenarios.schema import GROUPS, ensure_option, explain, group_choices, open_overrides, options
from simulator.metrics import strict, write_json
from simulator.run import Interrupted, RunWarning, one_line, run, sigterm_raises, summary_line
from topologies import TopologyError

USER_ERRORS = (ConfigError, DataError, PartitionError, ProtocolError, TopologyError)
EXIT = {"completed": 0, "failed": 1, "user_error": 2, "diverged": 3}
# Hydra's flags that take a value (the value is not an override)
VALUE_FLAGS = {"-c", "--cfg", "-p", "--package", "-cp", "--config-path", "-cn", "--config-name",
               "-cd", "--config-dir", "--experimental-rerun", "--info", "-i"}


class UsageError(Exception):
    """A bad command line, found before Hydra starts."""


@dataclass
class Job:
    number: int
    overrides: list[str]
    code: int
    skipped: bool = False  # a sweep job found already completed in its directory


JOBS: list[Job] = []  # the jobs this process ran (a sweep's, in order)


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
    return summary.get("status") == "completed" and summary.get("config") == strict(asdict(cfg))


def run_job(cfg: DictConfig, out_dir: Path, skip_completed: bool = False) -> tuple[int, str, bool]:
    """One job: (exit code, its last line, skipped). A user mistake or an error inside the run
    ends this job alone, with a summary.json that says so; interrupts are raised again. With
    `skip_completed` (a sweep), a job whose directory already holds a completed run of the
    same resolved config is not run again."""
    try:
        resolved = resolve(cfg)
        if skip_completed and completed_before(resolved, out_dir):
            return 0, f"murmur: skipped: already completed in {out_dir}", True
        result = run(resolved, out_dir=out_dir)
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


@hydra.main(config_path=str(SCENARIOS), config_name="config", version_base=None)
def _app(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    sweep = hc.mode == RunMode.MULTIRUN
    code, line, skipped = run_job(cfg, Path(hc.runtime.output_dir), skip_completed=sweep)
    JOBS.append(Job(OmegaConf.select(hc, "job.num", default=0) or 0, list(hc.overrides.task), code, skipped))
    print(line, file=sys.stdout if code == 0 else sys.stderr, flush=True)


def main() -> None:
    JOBS.clear()
    full_error = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra's errors reach us whole; we print one line
    try:
        with sigterm_raises(), warnings.catch_warnings():
            warnings.simplefilter("ignore", RunWarning)  # the last line already says it
            _main(sys.argv[1:])
    finally:
        if full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = full_error


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
    except KeyboardInterrupt:
        _exit(130, "murmur: interrupted (SIGINT); what the run measured is in its directory")
    except Interrupted:
        _exit(143, "murmur: interrupted (SIGTERM); what the run measured is in its directory")
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
    if len(JOBS) > 1 or is_multirun(args):
        bad = [j for j in JOBS if j.code != 0]
        skipped = sum(j.skipped for j in JOBS)
        note = f" ({skipped} skipped: completed before)" if skipped else ""
        if bad:
            names = "; ".join(f"#{j.number} ({' '.join(j.overrides)}): exit {j.code}" for j in bad)
            _exit(1, f"murmur: sweep: {len(JOBS) - len(bad)} of {len(JOBS)} jobs completed{note}; "
                     f"not completed: {names}")
        print(f"murmur: sweep: all {len(JOBS)} jobs completed{note}")
        return
    if JOBS:
        sys.exit(JOBS[0].code)


def _exit(code: int, line: str) -> None:
    print(line, file=sys.stderr, flush=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
