"""A backend built as the real Kalami backend is — FastAPI under uvicorn, JWT bearer auth with
the shared secret, sessions owned by users, audio as a multipart ``UploadFile``, the LLM's
corrections passed through as free-form objects, an unhandled exception answered 500 — with
its speech-to-text, LLM and text-to-speech replaced by deterministic stand-ins.

Routes (as the backend serves them; the app reaches them through the gateway's ``/api``):

- ``POST /auth/register`` ``{"email", "password", "native_language"}`` → 201 ``{"id", …}``
- ``POST /auth/login`` (form: ``username``, ``password``) → ``{"access_token", "token_type"}``
- ``POST /conversations/sessions`` ``{"profile_id", "topic"?}`` → 201 a session (UUID ``id``)
- ``POST /conversations/sessions/{id}/audio`` multipart ``audio`` → the turn
- ``POST /conversations/sessions/{id}/end`` → the session, ``ended_at`` set
- ``GET /users/stats`` raises (an unhandled exception: Starlette's plain-text 500)
- ``GET /health``

Every other route checks ``Authorization: Bearer <JWT>`` as the real one does with
``OAuth2PasswordBearer``: HS256 with the shared secret, ``exp`` enforced with no leeway, ``sub``
a registered user's id; no header is 401 ``Not authenticated``, a bad or expired token 401
``Could not validate credentials`` with ``WWW-Authenticate: Bearer``. A session that is not the
user's is 404 ``Session not found``; an ended one 400 ``Session has ended``. Tokens carry only
``sub`` (the user's UUID) and ``exp`` (30 minutes), as the real backend's do.
"""

import asyncio
import base64
import contextlib
import hashlib
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

import jwt
import uvicorn
from fastapi import Depends, FastAPI, File, Form, HTTPException, UploadFile
from fastapi.security import OAuth2PasswordBearer

TOKEN_MINUTES = 30
# What the LLM stand-in answers: corrections carry a key the gateway never heard of.
CORRECTION = {
    "original": "I goed",
    "corrected": "I went",
    "explanation": "'go' is irregular",
    "category": "verb_tense",
}


@dataclass
class Turn:
    session_id: str
    user: str
    filename: str
    content_type: str
    audio: bytes


@dataclass
class KalamiBackend:
    """The backend's state, and the knobs a test turns."""

    secret: str
    url: str = ""
    users: dict[str, tuple[str, str]] = field(default_factory=dict)  # email -> (id, password)
    sessions: dict[str, str] = field(default_factory=dict)  # id -> owner's id
    ended: list[tuple[str, str]] = field(default_factory=list)  # (id, who ended it)
    refused: list[str] = field(default_factory=list)  # paths answered 401
    turns: list[Turn] = field(default_factory=list)
    turn_seconds: float = 0.0
    reply_extra: dict[str, Any] = field(default_factory=dict)  # merged into every turn reply

    def token(self, user_id: str, minutes: float = TOKEN_MINUTES) -> str:
        """A token as the backend's login issues it."""
        return jwt.encode(
            {"sub": user_id, "exp": int(time.time() + minutes * 60)}, self.secret, algorithm="HS256"
        )

    def user_id(self, email: str) -> str:
        return self.users[email][0]

    def build(self) -> FastAPI:
        app = FastAPI()
        scheme = OAuth2PasswordBearer(tokenUrl="/auth/login")

        def current_user(token: Annotated[str, Depends(scheme)]) -> str:
            try:
                claims = jwt.decode(token, self.secret, algorithms=["HS256"])
            except jwt.InvalidTokenError:
                raise HTTPException(
                    401, "Could not validate credentials", {"WWW-Authenticate": "Bearer"}
                ) from None
            user_id = claims.get("sub")
            if user_id not in {uid for uid, _ in self.users.values()}:
                raise HTTPException(
                    401, "Could not validate credentials", {"WWW-Authenticate": "Bearer"}
                )
            assert isinstance(user_id, str)
            return user_id

        def owned(session_id: str, user: str) -> None:
            if self.sessions.get(session_id) != user:
                raise HTTPException(404, "Session not found")
            if any(sid == session_id for sid, _ in self.ended):
                raise HTTPException(400, "Session has ended")

        def session(session_id: str, topic: str, ended: bool) -> dict[str, Any]:
            return {
                "id": session_id,
                "topic": topic,
                "started_at": "2026-12-06T12:00:00",
                "ended_at": "2026-12-06T12:05:00" if ended else None,
                "duration_seconds": 300 if ended else None,
                "words_spoken": 0,
                "corrections_made": 0,
            }

        @app.post("/auth/register", status_code=201)
        async def register(body: dict[str, str]) -> dict[str, Any]:
            if body["email"] in self.users:
                raise HTTPException(400, "Email already registered")
            user_id = str(uuid.uuid4())
            self.users[body["email"]] = (user_id, body["password"])
            return {"id": user_id, "email": body["email"], "native_language": "en"}

        @app.post("/auth/login")
        async def login(
            username: Annotated[str, Form()], password: Annotated[str, Form()]
        ) -> dict[str, str]:
            user_id, known = self.users.get(username, ("", None))
            if known != password:
                raise HTTPException(
                    401, "Invalid email or password", {"WWW-Authenticate": "Bearer"}
                )
            return {"access_token": self.token(user_id), "token_type": "bearer"}

        @app.post("/conversations/sessions", status_code=201)
        async def create(
            body: dict[str, Any], user: Annotated[str, Depends(current_user)]
        ) -> dict[str, Any]:
            session_id = str(uuid.uuid4())
            self.sessions[session_id] = user
            return session(session_id, body.get("topic") or "General conversation", False)

        @app.post("/conversations/sessions/{session_id}/audio")
        async def audio(
            session_id: str,
            audio: Annotated[UploadFile, File()],
            user: Annotated[str, Depends(current_user)],
        ) -> dict[str, Any]:
            owned(session_id, user)
            data = await audio.read()
            self.turns.append(
                Turn(session_id, user, audio.filename or "", audio.content_type or "", data)
            )
            if self.turn_seconds:
                await asyncio.sleep(self.turn_seconds)
            digest = hashlib.sha256(data).hexdigest()[:12]
            return {
                "user_text": f"I goed to the market ({len(data)} bytes, sha {digest})",
                "assistant_text": "Nice! What did you buy there?",
                "corrections": [CORRECTION],
                "vocabulary_introduced": ["market"],
                "assistant_audio_base64": base64.b64encode(b"ID3" + bytes(64)).decode(),
                "message_id": 1234,
                **self.reply_extra,
            }

        @app.post("/conversations/sessions/{session_id}/end")
        async def end(
            session_id: str, user: Annotated[str, Depends(current_user)]
        ) -> dict[str, Any]:
            if self.sessions.get(session_id) != user:
                raise HTTPException(404, "Session not found")
            self.ended.append((session_id, user))
            return session(session_id, "General conversation", True)

        @app.get("/users/stats")
        async def stats(user: Annotated[str, Depends(current_user)]) -> dict[str, Any]:
            raise RuntimeError("the stats query failed")

        @app.get("/health")
        async def health() -> dict[str, str]:
            return {"status": "healthy", "service": "kalami-api"}

        @app.middleware("http")
        async def note_refusals(request: Any, call_next: Any) -> Any:
            response = await call_next(request)
            if response.status_code == 401:
                self.refused.append(request.url.path)
            return response

        return app


class _QuietServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the test process's signals are not the backend's


@contextlib.asynccontextmanager
async def running_kalami(secret: str) -> AsyncIterator[KalamiBackend]:
    """The backend under uvicorn (httptools, as deployed) on a free local port."""
    backend = KalamiBackend(secret)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = _QuietServer(
        uvicorn.Config(backend.build(), http="httptools", log_level="critical", lifespan="off")
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    backend.url = f"http://127.0.0.1:{port}"
    try:
        yield backend
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()
