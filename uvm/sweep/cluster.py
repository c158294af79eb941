"""Running trials on a Ray cluster (`uvm sweep GRID.toml --ray ADDRESS`; `pip install
'uvm[ray]'` on every node, uvm included).

One Ray task per trial. Each task asks for the trial's footprint as Ray's `memory`
resource (and one CPU), so Ray never places more machines on a node than its memory holds.
The task runs its trial in a fresh process of its own (local.run_isolated: a machine's
memory and userfaultfd go with it), which costs a Python start rather than a new Ray worker
(max_calls=1 would start one per trial, seconds each). `max_retries` runs a trial again
when its node or worker is lost. Rows come back as trials finish (ray.wait), so the table
grows, and --resume works, as on one host.
"""

from __future__ import annotations

import importlib
import ipaddress
import logging
import os
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from uvm.experiments.base import MissingExtra
from uvm.sweep import local
from uvm.sweep import trial as trials

CONNECT_TIMEOUT = 10.0  # seconds to reach the head's port before giving up
MAX_RETRIES = 3         # a trial whose node or worker dies runs again, up to this many times
SINGLE_HOST_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"   # "0": Ray's nodes are this host


def execute(todo: list[trials.Trial], address: str,
            log: Callable[[str], None]) -> Iterator[dict[str, Any]]:
    """Runs the trials on the cluster at `address`; yields each row as its trial finishes."""
    if _loopback(address):
        # Ray's client replaces a loopback address by the host's own (to reach a cluster
        # of several machines) unless told the cluster is this host alone; a head bound
        # to 127.0.0.1, as docs/harness.md starts it, is then never reached and ray.init
        # retries for ever. Ray reads this when it is first imported.
        os.environ.setdefault(SINGLE_HOST_ENV, "0")
    try:
        ray: Any = importlib.import_module("ray")     # untyped in parts: used as Any
    except ImportError as e:
        raise MissingExtra("--ray needs Ray: pip install 'uvm[ray]'") from e
    if not todo:
        return
    _check_reachable(address)
    try:
        with _empty_cwd():
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ValueError(f"--ray: cannot connect to a Ray cluster at {address!r}: {e}") from e
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        log(f"sweep: Ray cluster at {address}: {len(nodes)} node(s), "
            f"{ray.cluster_resources().get('memory', 0) / (1 << 30):.1f} GiB of memory resource")
        task = ray.remote(max_retries=MAX_RETRIES, num_cpus=1)(local.run_isolated)
        pending = {task.options(memory=t.memory, name=f"uvm-trial-{i}").remote(t): t
                   for i, t in enumerate(todo)}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                t = pending.pop(ref)
                yield _row(ray, ref, t)
    finally:
        ray.shutdown()


@contextmanager
def _empty_cwd() -> Iterator[None]:
    """Runs the block in an empty directory of its own. ray.init puts the driver's working
    directory on every worker's sys.path, ahead of the installed packages: a sweep started
    from a checkout of uvm would have its workers import that checkout's source tree (no
    built C core) instead of the installed uvm."""
    back = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="uvm-ray-") as empty:
        os.chdir(empty)
        try:
            yield
        finally:
            os.chdir(back)


def _loopback(address: str) -> bool:
    """True if `address` (HOST:PORT) names this host by a loopback address."""
    host = address.rpartition(":")[0].strip("[]")
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_reachable(address: str) -> None:
    """ValueError at once when nothing answers at host:port (Ray itself retries for minutes)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--ray: expected HOST:PORT (the head's GCS address), got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as e:
        raise ValueError(f"--ray: cannot connect to a Ray cluster at {address!r}: "
                         f"{e.strerror or e}") from e


def _row(ray: Any, ref: Any, t: trials.Trial) -> dict[str, Any]:
    """The trial's row; a task Ray gave up on (node lost past the retries) is an error row."""
    try:
        row: dict[str, Any] = ray.get(ref)
        return row
    except ray.exceptions.RayError as e:
        return trials.row(t, None, f"error: Ray: {type(e).__name__}: {str(e).splitlines()[0]}")
