"""The ``kalami-gateway`` command: ``serve`` (default), ``token``, ``talk``, ``--version``."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import msgspec

from kalami_gateway import __version__
from kalami_gateway.app.settings import (
    SettingsError,
    cluster_problems,
    environment_help,
    load_settings,
)

# Each command imports what it runs, when it runs it: the supervisor of --workers only binds,
# spawns and waits, and without the app, the server and the voice client it holds 31 MiB
# instead of 69 (docs/operations.md, "Memory per worker"). A spawned worker imports this
# module first too (its parent's main module).


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kalami-gateway",
        description="Kalami Gateway: WebSocket voice sessions and the /api proxy.",
    )
    parser.add_argument("--version", action="version", version=f"kalami-gateway {__version__}")
    commands = parser.add_subparsers(dest="command")
    serve_cmd = commands.add_parser(
        "serve",
        help="run the gateway (the default); settings from the environment",
        description="Run the gateway. Settings come from the environment (and a .env file in "
        "the working directory; the environment wins). Durations are milliseconds.",
        epilog=environment_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve_cmd.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes on one port (default WORKERS, 1); more than 1 needs REDIS_URL",
    )
    token = commands.add_parser("token", help="mint a development token signed with JWT_SECRET")
    token.add_argument("--sub", required=True, help="the user id the token is for")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires (3600)")
    talk = commands.add_parser("talk", help="a voice turn from a file, as a client would")
    talk.add_argument(
        "--file", required=True, help="the utterance: a .wav, .webm, .mp3, .m4a or .ogg file"
    )
    talk.add_argument(
        "--url", default=None, help="gateway WebSocket URL (ws://127.0.0.1:GATEWAY_PORT/ws)"
    )
    talk.add_argument(
        "--resume-url",
        default=None,
        help="where to reconnect and resume if the socket drops mid-turn (default: --url); "
        "another instance of the cluster, say",
    )
    talk.add_argument("--profile", default="default", help="learner profile id (default)")
    talk.add_argument("--topic", default=None, help="conversation topic")
    who = talk.add_mutually_exclusive_group()
    who.add_argument("--token", default=None, help="a token to connect with")
    who.add_argument("--sub", default=None, help="mint a token for this user with JWT_SECRET")
    talk.add_argument("--out", default=None, help="where to save the tutor's reply audio")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = args.command or "serve"
    try:
        if command == "token":
            return _token(args.sub, args.ttl)
        if command == "talk":
            from kalami_gateway.app.talk import run_talk

            return run_talk(args)
        return _serve(getattr(args, "workers", None))
    except SettingsError as exc:
        print(f"kalami-gateway: configuration error: {exc}", file=sys.stderr)
        return 2


def _token(subject: str, ttl: int) -> int:
    if ttl <= 0:
        print("kalami-gateway: --ttl must be a positive number of seconds", file=sys.stderr)
        return 2
    from kalami_gateway.adapters.jwt_decoder import mint_token

    settings = load_settings()
    print(mint_token(settings.jwt_secret, subject, time.time() + ttl))
    return 0


def _serve(workers: int | None) -> int:
    settings = load_settings()
    if workers is not None:
        if workers < 1:
            raise SettingsError(f"--workers must be at least 1, got {workers}")
        settings = msgspec.structs.replace(settings, workers=workers)
        problems = cluster_problems(settings)
        if problems:
            raise SettingsError("; ".join(problems))
    from kalami_gateway.app.workers import Supervisor, listen

    listeners = listen(settings, settings.workers)
    if settings.workers > 1:
        from kalami_gateway.app.logs import configure_logging

        configure_logging(settings.log_level, settings.log_format)
        return Supervisor(settings, settings.workers).run(listeners)
    from kalami_gateway.adapters.capacity import raise_open_files_limit
    from kalami_gateway.app.factory import create_app
    from kalami_gateway.app.server import serve

    raise_open_files_limit()  # before the app computes its ceiling from it
    serve(create_app(settings), listeners.of_worker(0))
    return 0
