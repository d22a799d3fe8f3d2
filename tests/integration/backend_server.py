"""A real local HTTP server standing in for the Kalami FastAPI backend; it records what it gets."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import time
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP

import aiohttp
import aiohttp.http_exceptions
from aiohttp import web


@dataclass
class Recorded:
    method: str
    raw_path: str
    query_string: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def headers_named(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]


@dataclass
class Upload:
    session_id: str
    filename: str
    content_type: str
    audio: bytes
    authorization: str | None


@dataclass
class BackendServer:
    """Knobs the tests turn: health status, delays, failures."""

    url: str = ""
    requests: list[Recorded] = field(default_factory=list)
    uploads: list[Upload] = field(default_factory=list)
    ended: list[tuple[str, str | None]] = field(default_factory=list)
    created: list[tuple[dict[str, object], str | None]] = field(default_factory=list)
    sessions: set[str] = field(default_factory=set)
    keepalive_timeout: float = 75.0
    health_status: int = 200
    slow_seconds: float = 0.0
    audio_status: int | None = None
    audio_body: bytes | None = None
    audio_hold: asyncio.Event | None = None
    audio_arrived: asyncio.Event = field(default_factory=asyncio.Event)
    stream_aborted: asyncio.Event = field(default_factory=asyncio.Event)
    # Faults: a create answered this late; end calls answered with these statuses first; an
    # end that never answers; a turn whose reply body drips a byte every `drip_seconds`.
    create_delay: float = 0.0
    end_statuses: list[int] = field(default_factory=list)
    end_hold: asyncio.Event | None = None
    drip_seconds: float | None = None
    turn_seconds: float = 0.0  # every turn takes this long (speech-to-text, LLM, TTS)
    # Streamed uploads: each piece of an audio body as it arrived (monotonic time, bytes),
    # uploads broken off mid-body, and a pause after every read (a backend reading slowly).
    body_arrivals: list[tuple[float, int]] = field(default_factory=list)
    broken_uploads: int = 0
    read_pause: float = 0.0
    reject_early: int | None = None
    read_size: int = 65536
    end_calls: list[str] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_get("/health", self._health)
        app.router.add_post("/conversations/sessions", self._create)
        app.router.add_post("/conversations/sessions/{sid}/end", self._end)
        app.router.add_post("/conversations/sessions/{sid}/audio", self._audio)
        app.router.add_route("*", "/{tail:.*}", self._echo)
        self._runner = web.AppRunner(app, access_log=None, keepalive_timeout=self.keepalive_timeout)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    def open_sessions(self) -> set[str]:
        """Sessions created and not (yet) ended."""
        return self.sessions - {sid for sid, _ in self.ended}

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _record(self, request: web.Request) -> Recorded:
        body = await request.read()
        recorded = Recorded(
            method=request.method,
            raw_path=request.raw_path.split("?", 1)[0],
            query_string=request.raw_path.split("?", 1)[1] if "?" in request.raw_path else "",
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers],
            body=body,
        )
        self.requests.append(recorded)
        return recorded

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"}, status=self.health_status)

    async def _create(self, request: web.Request) -> web.Response:
        recorded = await self._record(request)
        if self.create_delay:
            await asyncio.sleep(self.create_delay)
        payload = json.loads(recorded.body)
        self.created.append((payload, recorded.header("Authorization")))
        if payload.get("profile_id") == "missing":
            return web.json_response({"detail": "Profile not found"}, status=404)
        session_id = f"sess-{next(self._ids)}"
        self.sessions.add(session_id)
        session = {
            "id": session_id,
            "topic": payload.get("topic"),
            "started_at": "2026-01-01T00:00:00Z",
            "ended_at": None,
            "duration_seconds": None,
            "words_spoken": 0,
            "corrections_made": 0,
        }
        return web.json_response(session, status=201)

    async def _end(self, request: web.Request) -> web.Response:
        recorded = await self._record(request)
        sid = request.match_info["sid"]
        self.end_calls.append(sid)
        if self.end_hold is not None:
            await self.end_hold.wait()
        if self.end_statuses:
            return web.json_response({"detail": "try later"}, status=self.end_statuses.pop(0))
        if sid not in self.sessions:
            return web.json_response({"detail": "Session not found"}, status=404)
        self.ended.append((sid, recorded.header("Authorization")))
        return web.json_response({"id": sid, "ended_at": "2026-01-01T00:01:00Z"})

    async def _read_streamed(self, request: web.Request) -> Recorded | None:
        """The body piece by piece, as FastAPI's multipart parser would take it; None if the
        client broke the request off."""
        pieces = []
        try:
            while piece := await request.content.read(self.read_size):
                self.body_arrivals.append((time.monotonic(), len(piece)))
                pieces.append(piece)
                if self.read_pause:
                    await asyncio.sleep(self.read_pause)
        except (
            ConnectionError,
            aiohttp.ClientPayloadError,
            aiohttp.http_exceptions.HttpProcessingError,
        ):
            self.broken_uploads += 1
            return None
        recorded = Recorded(
            method=request.method,
            raw_path=request.raw_path.split("?", 1)[0],
            query_string=request.raw_path.split("?", 1)[1] if "?" in request.raw_path else "",
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers],
            body=b"".join(pieces),
        )
        self.requests.append(recorded)
        return recorded

    def streamed_bytes(self) -> int:
        return sum(size for _, size in self.body_arrivals)

    async def _audio(self, request: web.Request) -> web.StreamResponse:
        sid = request.match_info["sid"]
        if self.reject_early is not None:  # answered before the body is read (a proxy, say)
            return web.json_response({"detail": "refused early"}, status=self.reject_early)
        recorded = await self._read_streamed(request)
        if recorded is None:
            return web.Response(status=400)
        if sid not in self.sessions:
            return web.json_response({"detail": "Session not found"}, status=404)
        content_type = recorded.header("Content-Type") or ""
        message = BytesParser(policy=HTTP).parsebytes(
            b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + recorded.body
        )
        part = next(
            p
            for p in message.iter_parts()
            if p.get_param("name", header="content-disposition") == "audio"
        )
        audio = part.get_payload(decode=True)
        assert isinstance(audio, bytes)
        self.uploads.append(
            Upload(
                sid,
                part.get_filename() or "",
                part.get_content_type(),
                audio,
                recorded.header("Authorization"),
            )
        )
        self.audio_arrived.set()
        if self.turn_seconds:
            await asyncio.sleep(self.turn_seconds)
        if self.audio_hold is not None:
            await self.audio_hold.wait()
        if self.audio_status is not None:
            return web.json_response(
                {"detail": "speech recognition failed"}, status=self.audio_status
            )
        if self.audio_body is not None:
            return web.Response(body=self.audio_body, content_type="application/json")
        if self.drip_seconds is not None:
            drip = web.StreamResponse(headers={"Content-Type": "application/json"})
            drip.content_length = 1000
            await drip.prepare(request)
            for _ in range(1000):
                await drip.write(b" ")
                await asyncio.sleep(self.drip_seconds)
            return drip
        digest = hashlib.sha256(audio).hexdigest()[:12]
        return web.json_response(
            {
                "user_text": f"{len(audio)} bytes sha {digest} in {sid}",
                "assistant_text": "Great sentence!",
                "assistant_audio_base64": "SUQz",
                "corrections": [
                    {"original": "I has", "corrected": "I have", "explanation": "agreement"}
                ],
                "vocabulary_introduced": ["agreement"],
            }
        )

    async def _echo(self, request: web.Request) -> web.StreamResponse:
        recorded = await self._record(request)
        path = recorded.raw_path
        if path.startswith("/status/"):
            return web.json_response({"detail": "as asked"}, status=int(path.rsplit("/", 1)[1]))
        if path == "/slow":
            await asyncio.sleep(self.slow_seconds)
            return web.json_response({"slow": True})
        if path == "/echo-body":
            return web.Response(body=recorded.body, content_type="application/octet-stream")
        if path == "/cookies":
            response = web.json_response({"cookies": dict(request.cookies)})
            response.headers.add("Set-Cookie", "a=1; Path=/")
            response.headers.add("Set-Cookie", "b=2; Path=/")
            return response
        if path == "/hop-by-hop":
            response = web.json_response({"ok": True})
            response.headers["Connection"] = "X-Private"
            response.headers["X-Private"] = "secret"
            response.headers["Keep-Alive"] = "timeout=5"
            response.headers["Proxy-Authenticate"] = "Basic"
            return response
        if path.startswith("/bytes/"):
            size = int(path.rsplit("/", 1)[1])
            stream = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
            stream.enable_chunked_encoding()
            await stream.prepare(request)
            try:
                for offset in range(0, size, 65536):
                    await stream.write(pattern(offset, min(65536, size - offset)))
                await stream.write_eof()
            except (ConnectionResetError, ConnectionError):
                self.stream_aborted.set()
            return stream
        return web.json_response(
            {
                "method": recorded.method,
                "path": path,
                "query": recorded.query_string,
                "body_length": len(recorded.body),
            }
        )


def pattern(offset: int, size: int) -> bytes:
    """Deterministic, non-repeating-looking bytes, so a misplaced chunk is caught."""
    block = hashlib.sha256(str(offset).encode()).digest()
    return (block * (size // len(block) + 1))[:size]
