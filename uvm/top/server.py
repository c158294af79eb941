"""The socket `uvm run` serves its timeline on, for `uvm top` to attach to.

Where: a Unix domain socket (nothing listens on a network) in a private directory,
$XDG_RUNTIME_DIR/uvm (the login session's runtime dir) or else /tmp/uvm-$UID, created 0700
and refused if another user owns it or others may enter it; the socket itself is 0600 and
named after the run's pid (run-PID.sock), removed when the run ends.

What: the same JSON lines as `uvm run --json` (uvm/timeline.py): a client that connects
gets the header and the latest sample at once, then every line as it is written, up to the
end line. A client that does not keep up (its socket buffer full for a second) is dropped,
so no reader can slow the run down by more than that."""

from __future__ import annotations

import errno
import os
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from uvm.timeline import EndLine, HeaderLine, SampleLine

SEND_TIMEOUT = 1.0          # seconds a client may block a send before it is dropped
PREFIX, SUFFIX = "run-", ".sock"


def runtime_dir() -> Path:
    """The private directory of uvm's sockets: $XDG_RUNTIME_DIR/uvm or /tmp/uvm-$UID."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return Path(xdg) / "uvm"
    return Path("/tmp") / f"uvm-{os.getuid()}"


def private_dir(create: bool) -> Path:
    """runtime_dir(), created 0700 if asked; ValueError if it is not a directory of this
    user's that only this user may enter."""
    d = runtime_dir()
    if create:
        try:
            d.mkdir(mode=0o700, exist_ok=True)
        except OSError as e:
            raise ValueError(f"socket directory {str(d)!r}: cannot create it: {e.strerror}") from e
    try:
        st = os.lstat(d)
    except FileNotFoundError:
        return d
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise ValueError(f"socket directory {str(d)!r}: must be a directory owned by you and "
                         f"closed to others (mode 0700); remove it or fix its mode")
    return d


def socket_path(pid: int) -> Path:
    """Where run `pid` serves its timeline."""
    return runtime_dir() / f"{PREFIX}{pid}{SUFFIX}"


def pid_of(path: Path) -> int | None:
    """The pid a socket is named after (None: not one of ours)."""
    name = path.name
    if not (name.startswith(PREFIX) and name.endswith(SUFFIX)):
        return None
    digits = name[len(PREFIX):-len(SUFFIX)]
    return int(digits) if digits.isdigit() else None


def alive(pid: int | None) -> bool:
    """Whether process pid exists (one of another user's counts)."""
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except OSError as e:
        return e.errno == errno.EPERM
    return True


def is_socket(path: Path) -> bool:
    """Whether path is a Unix socket (False for a path that is not there or not visible)."""
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def sockets() -> list[Path]:
    """The run sockets in this user's directory, of live runs and of killed ones."""
    d = private_dir(create=False)
    if not d.is_dir():
        return []
    return [p for p in sorted(d.glob(f"{PREFIX}*{SUFFIX}")) if is_socket(p)]


def remove_stale() -> None:
    """Removes the sockets of runs that were killed (SIGKILL leaves no chance to): sockets in
    this user's private directory named after a pid that no longer exists."""
    for path in sockets():
        if not alive(pid_of(path)):
            path.unlink(missing_ok=True)


class TimelineServer:
    """Serves timeline lines to `uvm top` clients on a thread of its own. `send(line)`
    is called by the run for every line it writes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._clients: list[socket.socket] = []
        self._header: bytes | None = None
        self._latest: bytes | None = None
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if path.exists() or path.is_symlink():
            path.unlink()            # our own pid's name: left by a dead run with our pid
        old = os.umask(0o177)        # created 0600: no window in which others may connect
        try:
            self._sock.bind(str(path))
        except OSError as e:
            self._sock.close()
            raise ValueError(f"socket {str(path)!r}: cannot listen: {e.strerror}") from e
        finally:
            os.umask(old)
        self._sock.listen(8)
        self._thread = threading.Thread(target=self._accept, name="uvm-top-server", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        try:
            while True:
                try:
                    client, _ = self._sock.accept()
                except OSError:
                    return                  # closed by close()
                client.settimeout(SEND_TIMEOUT)
                with self._lock:
                    backlog = [b for b in (self._header, self._latest) if b is not None]
                    if self._send(client, b"".join(backlog)):
                        self._clients.append(client)
        except BaseException as e:          # re-raised by close()
            self.error = e

    @staticmethod
    def _send(client: socket.socket, data: bytes) -> bool:
        """Sends data; closes the client and returns False if it is gone or too slow."""
        try:
            client.sendall(data)
            return True
        except OSError:
            client.close()
            return False

    def send(self, line: HeaderLine | SampleLine | EndLine) -> None:
        """Sends a timeline line to every client (and keeps the header and the latest
        sample for clients yet to come)."""
        data = (line.model_dump_json() + "\n").encode()
        with self._lock:
            if line.type == "header":
                self._header = data
            elif line.type == "sample":
                self._latest = data
            self._clients = [c for c in self._clients if self._send(c, data)]

    def close(self) -> None:
        """Stops listening, closes every client (they see the end) and removes the socket."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)   # wakes accept(); close() alone does not
        except OSError:
            pass
        self._sock.close()
        self._thread.join(timeout=5.0)
        with self._lock:
            for c in self._clients:
                c.close()
            self._clients = []
        self.path.unlink(missing_ok=True)
        if self.error is not None:
            raise self.error


@contextmanager
def serving(warn: Callable[[str], None]) -> Iterator[TimelineServer | None]:
    """Serves this process's run on socket_path(os.getpid()) while the block runs. If the
    socket cannot be made, says why through `warn` and yields None: the run goes on."""
    try:
        private_dir(create=True)
        remove_stale()
        server = TimelineServer(socket_path(os.getpid()))
    except ValueError as e:
        warn(f"not serving uvm top: {e}")
        yield None
        return
    try:
        yield server
    finally:
        server.close()
