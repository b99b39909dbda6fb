"""The program: read the bundle, start the engine's supervisor, serve the API until told
to stop; in VM mode, power the machine off afterwards.

It runs inside every datastore image on the image's own Python (Debian bookworm's 3.11),
as the container's PID 1: ``/usr/bin/python3 /usr/local/lib/oneplatform/agent.pyz`` (the
zipapp's ``__main__`` runs ``python3 -m oneplatform.guest``). Everything that touches the
machine starts in :func:`main`; importing this module does no I/O.

Without a bundle (the image run as a plain compute instance) the agent still listens but
refuses every call, and the engine starts with no password set, so nobody can log in
over the network.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from .bundle import Bundle, BundleError, load_bundle
from .contract import (
    ADOPTED_BUNDLE_PATH,
    BUNDLE_ENV,
    BUNDLE_GUEST_PATH,
    CLAIMED_BUNDLE_PATH,
    DATASTORE_ENV,
    DATASTORE_VERSION_ENV,
    DEFAULT_AGENT_PORT,
    DEFAULT_DATASTORE,
    DEFAULT_VERSION,
    POWEROFF_ENV,
)
from .engines import ENGINES
from .engines.base import Engine
from .http import AGENT_VERSION, Agent, AgentHTTPServer
from .machine import Machine, poweroff_on_exit, shut_down_machine, watch_power_button
from .processes import ChildProcesses
from .storage import DataStorage
from .supervisor import Supervisor

USAGE = f"""\
usage: python3 agent.pyz  (or: python3 -m oneplatform.guest)

The OnePlatform guest agent: applies the config bundle, runs the datastore engine and
answers signed calls on its port ({DEFAULT_AGENT_PORT} unless the bundle says otherwise).
It takes no arguments; the image's environment configures it:

  {BUNDLE_ENV:<25} the bundle's path (default {BUNDLE_GUEST_PATH})
  {DATASTORE_ENV:<25} the engine to run (default {DEFAULT_DATASTORE})
  {DATASTORE_VERSION_ENV:<25} its version (default {DEFAULT_VERSION})
  {POWEROFF_ENV + "=1":<25} VM mode, as PID 1: power the machine off when the agent stops
"""

log = logging.getLogger("onep-agent")


def build(
    bundle: Bundle | None,
    problem: str = "",
    warm: Bundle | None = None,
    claimed_path: Path | None = None,
    adopted_path: Path | None = None,
) -> tuple[Agent, ChildProcesses]:
    """The agent and its supervisor for a bundle (or none), without starting anything;
    ``warm``: the warm bundle the instance was made with (``bundle`` is its owner's once
    claimed), whose owner's bundle is kept at ``claimed_path``."""
    datastore = os.environ.get(DATASTORE_ENV, DEFAULT_DATASTORE)
    version = os.environ.get(DATASTORE_VERSION_ENV, DEFAULT_VERSION)
    children = ChildProcesses()
    fatal = ""
    engine: Engine | None = None
    if bundle is not None and (bundle.datastore, bundle.version) != (datastore, version):
        fatal = (
            f"the bundle is for {bundle.datastore} {bundle.version} but this image runs "
            f"{datastore} {version}"
        )
    elif datastore not in ENGINES:
        fatal = f"this agent has no engine for {datastore!r}"
    else:
        engine = ENGINES[datastore](bundle, children, version=version)
    supervisor = Supervisor(engine, fatal=fatal)
    agent = Agent(
        bundle,
        supervisor,
        problem=problem,
        datastore=datastore,
        version=version,
        warm=warm,
        claimed_path=claimed_path,
        adopted_path=adopted_path,
        storage=DataStorage(children),
    )
    return agent, children


def _setup_logging() -> None:
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="onep-agent: %(levelname)s %(message)s"
    )


def _read_bundle(
    claimed_path: Path, adopted_path: Path | None = None
) -> tuple[Bundle | None, str, Bundle | None]:
    """(the bundle to run with, why there is none, the warm bundle if it is a warm one):
    a warm instance already claimed runs with its owner's bundle, and a detached replica
    with its new database's, both kept on its data disk."""
    bundle_path = Path(os.environ.get(BUNDLE_ENV) or BUNDLE_GUEST_PATH)
    bundle, problem = load_bundle(bundle_path)
    warm = bundle if bundle is not None and bundle.warm else None
    if bundle is not None and warm is None and adopted_path is not None:
        bundle = adopted_bundle(bundle, adopted_path)
    if warm is not None and claimed_path.exists():
        claimed, why = load_bundle(claimed_path)
        if claimed is None:
            log.error("%s: staying warm", why)
        else:
            bundle = claimed
    if bundle is None:
        log.warning("%s: refusing every call; the engine starts with no passwords set", problem)
    else:
        log.info(
            "config bundle for instance %s (%s %s)%s",
            bundle.instance_id,
            bundle.datastore,
            bundle.version,
            ": warm, waiting for its owner" if bundle.warm else "",
        )
    return bundle, problem, warm


def adopted_bundle(bundle: Bundle, path: Path) -> Bundle:
    """The bundle a detached replica adopted instead of ``bundle`` (its compute type's),
    while that one is still the bundle it replaced."""
    try:
        kept = json.loads(path.read_bytes())
        if kept.get("replaces") != bundle.instance_id:
            return bundle
        adopted = Bundle.from_dict(kept["bundle"])
    except FileNotFoundError:
        return bundle
    except (OSError, ValueError, KeyError, TypeError, AttributeError, BundleError) as exc:
        log.error("the adopted bundle at %s is not valid (%s): ignored", path, exc)
        return bundle
    log.info("running with the bundle adopted at a detach (instance %s)", adopted.instance_id)
    return adopted


def _stop_on_signals(stop: threading.Event, received: list[str]) -> None:
    def on_signal(signum: int, _frame: object) -> None:
        received.append(signal.Signals(signum).name)  # no logging: it may interrupt a log call
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def _stop_on_machine_events(machine: Machine, stop: threading.Event, received: list[str]) -> None:
    """VM mode: Ctrl-Alt-Del (as SIGINT) and the ACPI power button stop the agent too."""
    try:
        machine.disable_cad()  # Ctrl-Alt-Del now sends us SIGINT
    except OSError as exc:
        log.warning("cannot route Ctrl-Alt-Del to the agent: %s", exc.strerror)

    def on_power_button() -> None:
        received.append("the power button")
        stop.set()

    buttons = watch_power_button(on_power_button)
    log.info(
        "VM mode: SIGTERM, Ctrl-Alt-Del%s stop the engine and power off",
        " or the power button" if buttons else "",
    )


def main(machine: Machine | None = None) -> int:
    """Serve until SIGTERM or SIGINT; with ``machine`` (VM mode) also until Ctrl-Alt-Del or
    the power button. Returns the exit code; :func:`run` powers a VM off afterwards."""
    _setup_logging()
    claimed_path, adopted_path = Path(CLAIMED_BUNDLE_PATH), Path(ADOPTED_BUNDLE_PATH)
    bundle, problem, warm = _read_bundle(claimed_path, adopted_path)
    agent, children = build(bundle, problem, warm, claimed_path, adopted_path)
    port = bundle.agent.port if bundle else DEFAULT_AGENT_PORT
    stop = threading.Event()
    received: list[str] = []
    _stop_on_signals(stop, received)
    if machine is not None:
        _stop_on_machine_events(machine, stop, received)
    try:
        server = AgentHTTPServer(("0.0.0.0", port), agent)
    except OSError as exc:
        log.error("cannot listen on port %d: %s", port, exc)
        return 1
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    log.info("listening on port %d (agent version %s)", port, AGENT_VERSION)
    agent.supervisor.start()
    while not stop.wait(0.5):
        children.reap_orphans()
    log.info("received %s: shutting down", received[0] if received else "a stop request")
    agent.supervisor.stop()
    server.shutdown()
    server.server_close()
    log.info("stopped")
    return 0


def run(
    environ: Mapping[str, str] | None = None,
    pid: int | None = None,
    machine_factory: Callable[[], Machine] = Machine,
    main_fn: Callable[[Machine | None], int] = main,
) -> int:
    """The program. In VM mode (:func:`poweroff_on_exit`) it never returns: however
    ``main_fn`` ends, the engine has stopped (main stops it) and the machine powers off."""
    if not poweroff_on_exit(environ, pid):
        return main_fn(None)
    machine = machine_factory()
    try:
        code = main_fn(machine)
        log.info("the agent stopped (exit code %s)", code)
    except Exception:
        _setup_logging()
        log.exception("the agent failed")
    except BaseException as exc:  # SystemExit, KeyboardInterrupt: PID 1 must not just exit
        _setup_logging()
        log.error("the agent stopped: %r", exc)
    shut_down_machine(machine)
    return 1  # only if the machine did not power off (a fake one)


def cli(argv: Sequence[str]) -> int:
    """The command line: ``-h``/``--help`` prints :data:`USAGE`; otherwise :func:`run`
    (other arguments are ignored, as they always were)."""
    if "-h" in argv or "--help" in argv:
        sys.stdout.write(USAGE)
        return 0
    return run()
