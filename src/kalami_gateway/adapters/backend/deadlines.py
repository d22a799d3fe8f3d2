"""The deadlines the HTTP backend client sets itself, each by name, made from BACKEND_TIMEOUT in
one place (``BackendDeadlines.from_backend_timeout``).

BACKEND_TIMEOUT is one setting for several deadlines. The client bounds only the connect. The
others are the caller's, the application service's, and so are not set here: every call
finishes or fails within BACKEND_TIMEOUT of its start whatever the backend does (a reply that
drips fails at it), each frame written into a streamed upload waits at most BACKEND_TIMEOUT
for the backend to take it, and the readiness probe has the lower of it and 5 s. A create that
answers after its deadline must still be heard, so that the session it made can be ended: a
deadline of the client's own would cut it off.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BackendDeadlines:
    """Which deadline of the backend client is which, in seconds (None: none of its own)."""

    # Making a TCP connection to the backend (aiohttp's sock_connect): a backend that does not
    # answer the connect (a dropped SYN) fails the call as a timeout by this deadline.
    connect: float
    # Waiting for one of the client's connections (MAX_BACKEND_CONNECTIONS at once): none of
    # its own, the call's deadline bounds it.
    pool: float | None
    # Each read of the backend's answer: none of its own, the call's deadline bounds the whole
    # answer, however it arrives.
    read: float | None
    # Each write of a request body: none of its own (the aiohttp transport passes none on);
    # the streamed upload's writes are bounded frame by frame by the caller.
    write: float | None

    @classmethod
    def from_backend_timeout(cls, backend_timeout: float) -> BackendDeadlines:
        """The client's deadlines for BACKEND_TIMEOUT (seconds)."""
        return cls(connect=backend_timeout, pool=None, read=None, write=None)
