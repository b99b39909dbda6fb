"""``python -m bench [NAME ...] [--rounds N]``: run benchmarks (default: ``all``, the ones
marked default: container and db, then the scheduler's; ``vm`` boots VMs under TCG,
``baremetal`` deploys onto the emulated bare-metal lab, ``warm`` claims warm instances
of all three compute types, ``backup`` backs up and restores a ~1 GB database and
``replication`` measures the write gaps of switchovers, moves and failovers, ``engines``
times create -> first query of every engine on every compute type against its raw start:
they run only when named; ``make bench`` runs them all).

``python -m bench scheduler [--hosts N --creates N ...]`` runs the placement benchmark
(:mod:`bench.scheduler`) alone, with options of its own; it needs no running platform.

One `onep up` with a temporary home serves every benchmark of the run, but those with an
``env`` of their own (``baremetal``: it enrolls the shared bare-metal lab, which the others
never touch), which each get their own. Each benchmark is a module with ``NAME`` (its results
go to ``bench/results/<NAME>.json``; also accepted on the command line), ``TIMEOUT_S``
(seconds per sample unless --timeout) and a function ``run(platform, rounds, timeout) ->
results``. Add one by writing it and listing it below. ``--rounds`` defaults to the
benchmark's own (``ROUNDS`` if it has one, else 5).
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

from bench import backup, baremetal, container, db, engines, replication, scheduler, vm, warm
from bench.common import BenchError, PlatformProcess, machine_info, running_platform, write_results

Benchmark = Callable[[PlatformProcess, int, float], dict[str, Any]]


@dataclass(frozen=True)
class Entry:
    run: Benchmark
    results: str  # bench/results/<results>.json; also accepted as its name
    timeout: float  # default seconds per sample
    rounds: int = 5  # default timed rounds
    default: bool = True  # part of `all` (what runs when no name is given)
    # Called before an `onep up` of the benchmark's own is started (it may wait for a shared
    # resource); returns ONEP_* variables for it. None: the run's shared `onep up`.
    env: Callable[[], dict[str, str]] | None = None


BENCHMARKS: dict[str, Entry] = {
    "container": Entry(container.run, container.NAME, container.TIMEOUT_S),
    "db": Entry(db.run, db.NAME, db.TIMEOUT_S),
    "vm": Entry(vm.run, vm.NAME, vm.TIMEOUT_S, rounds=vm.ROUNDS, default=False),
    "baremetal": Entry(
        baremetal.run,
        baremetal.NAME,
        baremetal.TIMEOUT_S,
        rounds=baremetal.ROUNDS,
        default=False,
        env=baremetal.platform_env,
    ),
    "warm": Entry(
        warm.run,
        warm.NAME,
        warm.TIMEOUT_S,
        rounds=warm.ROUNDS,
        default=False,
        env=baremetal.platform_env,  # all three compute types: the lab enrolled
    ),
    "backup": Entry(
        backup.run,
        backup.NAME,
        backup.TIMEOUT_S,
        rounds=backup.ROUNDS,
        default=False,
        env=backup.platform_env,  # a store of its own
    ),
    "engines": Entry(
        engines.run,
        engines.NAME,
        engines.TIMEOUT_S,
        rounds=engines.ROUNDS,
        default=False,
        env=engines.platform_env,  # all three compute types: the lab enrolled
    ),
    "replication": Entry(
        replication.run,
        replication.NAME,
        replication.TIMEOUT_S,
        rounds=replication.ROUNDS,
        default=False,
        env=replication.platform_env,  # all three compute types: the lab enrolled
    ),
}
ALIASES = {entry.results: name for name, entry in BENCHMARKS.items()}
ALL = [name for name, entry in BENCHMARKS.items() if entry.default]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmarks of OnePlatform against bare Podman and QEMU.",
    )
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"benchmarks to run: {', '.join(BENCHMARKS)}, or all "
        f"(= {' + '.join(ALL)}; the default, which then runs `scheduler` too)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="timed rounds (default: the benchmark's; "
        + ", ".join(f"{n} {e.rounds}" for n, e in BENCHMARKS.items())
        + ")",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds allowed per sample (default: the benchmark's; "
        + ", ".join(f"{n} {e.timeout:g}" for n, e in BENCHMARKS.items())
        + ")",
    )
    parser.add_argument(
        "--keep-home", action="store_true", help="keep the temporary ONEP_HOME (and its log)"
    )
    args = parser.parse_args(argv)
    args.names_given = bool(args.names)
    names = [ALIASES.get(n, n) for n in args.names or ["all"]]
    args.names = [m for n in names for m in (ALL if n == "all" else [n])]
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.timeout is not None and args.timeout <= 0:
        parser.error("--timeout must be positive")
    return args


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through every finally: containers, onep up


def platform_groups(names: list[str]) -> list[list[str]]:
    """The benchmarks of each `onep up`, in order: one shared by those without an ``env``
    (where the first of them comes), one for each of the others."""
    groups: list[list[str]] = []
    shared: list[str] | None = None
    for name in names:
        if BENCHMARKS[name].env is not None:
            groups.append([name])
        elif shared is None:
            shared = [name]
            groups.append(shared)
        else:
            shared.append(name)
    return groups


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["scheduler"]:
        return scheduler.main(argv[1:])
    args = parse_args(argv)
    names = list(dict.fromkeys(args.names))
    if shutil.which("podman") is None:
        print("bench: podman is not installed", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    try:
        for group in platform_groups(names):
            env = BENCHMARKS[group[0]].env
            extra_env = env() if env is not None else None
            with running_platform(keep_home=args.keep_home, extra_env=extra_env) as platform:
                for name in group:
                    started = dt.datetime.now(dt.UTC)
                    entry = BENCHMARKS[name]
                    timeout = entry.timeout if args.timeout is None else args.timeout
                    rounds = entry.rounds if args.rounds is None else args.rounds
                    results = entry.run(platform, rounds, timeout)
                    results.update(started_at=started.isoformat(), machine=machine_info())
                    print(f"wrote {write_results(entry.results, results)}", flush=True)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    if not args.names_given:
        return scheduler.main([])
    return 0


if __name__ == "__main__":
    sys.exit(main())
