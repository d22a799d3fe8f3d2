"""How many client sockets one process may hold, and what happened at that limit.

Every process may hold at most its open-file limit (``RLIMIT_NOFILE``) of files, sockets
included. A process that runs out cannot accept: the kernel refuses the accept with EMFILE
and the client's connection is lost without a word. So each process stops short of it: its
*ceiling* is the limit less what the process needs for itself (``Headroom``) — its
listening sockets, the proxy's and the backend client's upstream connections, Redis, its own
files — and less a reserve of sockets it can still accept past the ceiling, to answer a
health probe, a scrape or a refusal. Past the ceiling a WebSocket handshake is answered 503
with ``Retry-After`` before any upgrade (``adapters/server/http_protocol.py``); should the
limit be reached even so, the accept that fails is logged and counted and its client still
gets a 503 (``adapters/server/acceptor.py``).

``SocketCapacity`` is the one object the server adapter reports to and the metrics and
``/stats`` read: the ceiling, the client sockets open now (HTTP and WebSocket, as the server
counts them), the handshakes refused and the accepts that failed. Bursts are logged once:
the first refusal (or failed accept) of a burst is a warning, the first admission after it
says how many were refused meanwhile.
"""

from __future__ import annotations

import logging
import os
import resource
from collections.abc import Callable
from typing import Final, NamedTuple

log = logging.getLogger(__name__)

# Files a serving process holds besides its sockets: the event loop's epoll and eventfd,
# pipes, /dev/null, log files, the shared metrics files, an exporter's connection.
OWN_FILES: Final = 64
# Sockets that may be accepted past the ceiling: health probes, scrapes, /api requests and the
# refusals being answered (each held until its client has read the 503 and closed).
PAST_CEILING: Final = 256
# A burst of refusals is over (logged ws_ceiling_cleared) once the client sockets are at
# most this share of the ceiling.
CLEAR_BELOW: Final = 0.95
# What a refused handshake is told to wait before it tries again (seconds).
RETRY_AFTER_SECONDS: Final = 5


class Headroom(NamedTuple):
    """What a process keeps of its open-file limit for itself (``total``)."""

    listeners: int
    upstream: int  # the /api proxy's pool and the sockets it is retiring, the backend client's
    redis: int
    own_files: int = OWN_FILES
    past_ceiling: int = PAST_CEILING

    @property
    def total(self) -> int:
        return sum(self)


class Ceiling(NamedTuple):
    """A process's ceiling and where it comes from."""

    client_sockets: int
    open_files_limit: int
    headroom: Headroom | None  # None: set by MAX_CLIENT_SOCKETS, not computed


def connection_ceiling(open_files_limit: int, headroom: Headroom, setting: int = 0) -> Ceiling:
    """The ceiling: ``setting`` when non-zero, else the open-file limit less the headroom
    (never below 1: a process with too low a limit still serves, one socket at a time)."""
    if setting:
        return Ceiling(setting, open_files_limit, None)
    return Ceiling(max(1, open_files_limit - headroom.total), open_files_limit, headroom)


def open_files_limit() -> int:
    """This process's open-file limit in force (its soft limit; "unlimited" as 2**20)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def raise_open_files_limit() -> int:
    """Raise this process's soft open-file limit to its hard limit (what the kernel allows
    without privileges) and return the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # a hard limit above the kernel's nr_open
            pass
    return open_files_limit()


class SocketCapacity:
    """This process's client sockets against its ceiling, and the events at the limit."""

    def __init__(self, ceiling: Ceiling) -> None:
        self.ceiling = ceiling.client_sockets
        self.open_files_limit = ceiling.open_files_limit
        self.headroom = ceiling.headroom
        self.refused = 0  # WebSocket handshakes answered 503 at the ceiling, since start
        self.accept_errors: dict[str, int] = {}  # failed accepts by errno name, since start
        self._count: Callable[[], int] = lambda: 0
        self._refused_in_burst = 0
        self._failed_in_burst = 0

    def count_with(self, count: Callable[[], int]) -> None:
        """The server tells how it counts its client sockets (once it serves)."""
        self._count = count

    def client_sockets(self) -> int:
        return self._count()

    def admits_websocket(self) -> bool:
        """Whether a WebSocket handshake on a socket that is already counted may go on; a
        refusal is counted and, the first of a burst, logged. A burst is over once the
        client sockets have fallen CLEAR_BELOW under the ceiling: under a steady overload a
        slot freed now and then is taken at once, and that is still the same burst."""
        open_now = self._count()
        if open_now <= self.ceiling:
            if self._refused_in_burst and open_now <= self.ceiling * CLEAR_BELOW:
                log.info(
                    "ws_ceiling_cleared",
                    extra={"refused": self._refused_in_burst, "client_sockets": open_now},
                )
                self._refused_in_burst = 0
            return True
        self.refused += 1
        self._refused_in_burst += 1
        if self._refused_in_burst == 1:
            log.warning(
                "ws_ceiling_reached",
                extra={
                    "client_sockets": open_now,
                    "ceiling": self.ceiling,
                    "open_files_limit": self.open_files_limit,
                    "pid": os.getpid(),
                },
            )
        return False

    def accept_failed(self, errno_name: str) -> None:
        """An accept refused for lack of files (EMFILE, ENFILE): counted, the first of a burst
        logged."""
        self.accept_errors[errno_name] = self.accept_errors.get(errno_name, 0) + 1
        self._failed_in_burst += 1
        if self._failed_in_burst == 1:
            log.error(
                "accept_out_of_files",
                extra={
                    "errno": errno_name,
                    "client_sockets": self._count(),
                    "ceiling": self.ceiling,
                    "open_files_limit": self.open_files_limit,
                    "pid": os.getpid(),
                },
            )

    def accepted(self) -> None:
        """An accept succeeded: a burst of failed ones, if any, is over (and said so)."""
        if self._failed_in_burst:
            log.warning("accept_recovered", extra={"failed": self._failed_in_burst})
            self._failed_in_burst = 0
