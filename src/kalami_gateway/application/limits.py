"""What the settings tell the application, and the deadlines it derives from them.

``ServiceLimits`` is built by the container from the settings; every deadline the
application waits by is a named property here, so no module adds timeouts up on its own.
"""

from __future__ import annotations

from typing import Final

import msgspec

from kalami_gateway.domain import session as s
from kalami_gateway.domain.reply_audio import DEFAULT_MAX_REPLY_AUDIO_BYTES

# The readiness check answers within the lower of this and BACKEND_TIMEOUT.
READINESS_SECONDS: Final = 5.0


class ServiceLimits(msgspec.Struct, frozen=True):
    max_message_bytes: int
    max_audio_bytes: int
    max_connections_per_user: int = 0  # 0: no cap
    backend_timeout: float = 30.0  # every backend call finishes or fails within it
    token_expiry_warning: float = 60.0  # token_expiring this long before exp (0: never)
    message_rate: float = 0.0  # text messages per second per connection (0: no limit)
    session_start_rate: float = 0.0  # start_session per minute per user (0: no limit)
    audio_rate: float = 0.0  # binary bytes per second per connection (0: no limit)
    end_retry_window: float = 300.0  # how long a failed end call is retried in the background
    resume_grace: float = 0.0  # how long a session waits for its client to resume (0: never)
    restart_parks: bool = False  # a shutdown parks sessions (1012) instead of ending them
    shutdown_turn_wait: float = 5.0  # turns in flight at a restart get this long to finish
    # A resumed session's turn runs where it started; if its messages have not come this long
    # past BACKEND_TIMEOUT, they were lost (their instance died) and the client is told so.
    remote_turn_slack: float = 5.0
    stream_uploads: bool = False  # stream each utterance to the backend while it is recorded
    # The largest reply audio sent to a client, either form (REPLY_AUDIO_MAX_BYTES).
    max_reply_audio_bytes: int = DEFAULT_MAX_REPLY_AUDIO_BYTES

    @property
    def session_limits(self) -> s.Limits:
        """What the state machine is told of the limits."""
        return s.Limits(self.max_audio_bytes, self.max_reply_audio_bytes)

    @property
    def backend_call_deadline(self) -> float:
        """A backend call (a session's start, a turn, an upload's write) finishes or fails
        within this of its start, whatever the backend does."""
        return self.backend_timeout

    @property
    def readiness_deadline(self) -> float:
        """The backend's readiness, within the lower of 5 s and BACKEND_TIMEOUT."""
        return min(READINESS_SECONDS, self.backend_timeout)

    @property
    def remote_turn_deadline(self) -> float:
        """How long a resumed session waits for the messages of its turn still running where
        it started before it calls the reply lost: BACKEND_TIMEOUT plus the slack."""
        return self.backend_timeout + self.remote_turn_slack

    def drain_turn_wait(self, restarts: bool) -> float:
        """How long a drain lets turns of parked sessions finish: ``shutdown_turn_wait`` when
        the sessions are parked for another instance (a restart), else not at all."""
        return self.shutdown_turn_wait if restarts else 0.0
