"""The `scoreboard` command: serve, worker, migrate, reseed, verify, token, action-token."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

import orjson

from . import auth
from .config import OPTIONS, ConfigError, Settings

Command = Callable[[Settings, argparse.Namespace], int]


def _settings_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("settings (each also read from its environment variable)")
    for opt in OPTIONS:
        kwargs: dict[str, object] = {"dest": "opt_" + opt.attr, "default": None}
        if opt.kind == "bool":
            kwargs.update(nargs="?", const="true", metavar="BOOL")
        else:
            kwargs["metavar"] = opt.kind.upper() if opt.kind != "str" else "VALUE"
        secret = "SECRET" in opt.env
        default = "unset" if not opt.default else opt.default
        help_text = f"{opt.help} [{opt.env}; default {default}]"
        if secret:
            help_text += " (prefer the environment: flags show in process lists)"
        group.add_argument(opt.flag, help=help_text, **kwargs)  # type: ignore[arg-type]
    return parent


def settings_from(args: argparse.Namespace, env: dict[str, str] | None = None) -> Settings:
    """Environment first, then flags on top."""
    merged = dict(os.environ if env is None else env)
    for opt in OPTIONS:
        value = getattr(args, "opt_" + opt.attr, None)
        if value is not None:
            merged[opt.env] = str(value)
    return Settings.from_env(merged)


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from .serve import serve

    return serve(settings)


def _token(settings: Settings, args: argparse.Namespace) -> int:
    user = auth.parse_uuid(args.user)
    if user is None:
        raise ConfigError("--user must be a UUID")
    print(auth.mint_user_token(settings, user, args.scope, args.ttl))
    return 0


def _action_token(settings: Settings, args: argparse.Namespace) -> int:
    user = auth.parse_uuid(args.user)
    if user is None:
        raise ConfigError("--user must be a UUID")
    ttl = settings.action_token_max_ttl_s if args.ttl is None else args.ttl
    nonce, token = auth.mint_action_token(settings, user, args.delta, args.action, ttl)
    print(orjson.dumps({"nonce": nonce, "actionToken": token}).decode())
    return 0


def _needs_redis(settings: Settings, command: str) -> None:
    if settings.embedded_redis:
        raise ConfigError(
            f"scoreboard {command} needs SCOREBOARD_REDIS_URL: the embedded Redis lives inside "
            "`scoreboard serve`, which persists it with its own sink and reloads it at startup"
        )


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    from .sink import SinkOptions
    from .worker import worker

    _needs_redis(settings, "worker")
    options = SinkOptions(
        batch_size=args.batch_size, block_ms=args.block_ms, claim_idle_ms=args.claim_idle_ms
    )
    return worker(settings, options, args.metrics_port)


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from .worker import run_migrate

    return asyncio.run(run_migrate(settings, sys.stdout))


def _reseed(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from .persist.progress import Progress
    from .worker import run_reseed

    _needs_redis(settings, "reseed")
    progress = Progress(sys.stderr, tty=False if args.no_progress_bar else None)
    return asyncio.run(run_reseed(settings, args.board, progress, sys.stdout))


def _verify(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from .worker import run_verify

    _needs_redis(settings, "verify")
    return asyncio.run(run_verify(settings, args.board, args.wait, sys.stdout))


def _board_arg(value: str) -> str:
    from .keys import BOARD_ID_RE

    if not BOARD_ID_RE.fullmatch(value):
        raise argparse.ArgumentTypeError("a board id is 1-64 characters of a-z, 0-9, _ and -")
    return value


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Command]]:
    parser = argparse.ArgumentParser(
        prog="scoreboard",
        description="Scoreboard: a live leaderboard backend (Redis + PostgreSQL).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parent = _settings_parent()
    commands: dict[str, Command] = {}

    def add(name: str, fn: Command, help_text: str) -> argparse.ArgumentParser:
        commands[name] = fn
        return sub.add_parser(name, parents=[parent], help=help_text, description=help_text)

    add("serve", _serve, "run the HTTP API, live streams and /metrics (and the sink)")
    p = add("token", _token, "print a user JWT signed with the configured secret")
    p.add_argument("--user", required=True, help="the user's UUID (the sub claim)")
    p.add_argument("--scope", default="", help='space-separated scopes, e.g. "scores:admin"')
    p.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")
    p = add("action-token", _action_token, "print {nonce, actionToken} JSON for one action")
    p.add_argument("--user", required=True, help="the user's UUID")
    p.add_argument("--delta", type=int, required=True, help="the points of the action")
    p.add_argument("--action", default=auth.DEFAULT_ACTION, help='action type ("bonus" …)')
    p.add_argument("--ttl", type=int, default=None, help="lifetime in seconds (default: max)")
    add("migrate", _migrate, "create or update the database schema (idempotent)")
    p = add("worker", _worker, "run the persistence sink alone: Redis Streams -> database")
    p.add_argument("--batch-size", type=int, default=500, help="entries per transaction")
    p.add_argument("--block-ms", type=int, default=1000, help="longest wait for new entries")
    p.add_argument(
        "--claim-idle-ms",
        type=int,
        default=30_000,
        help="take over entries another consumer left pending this long (default 30000)",
    )
    p.add_argument(
        "--metrics-port", type=int, default=0, help="serve /metrics and /healthz here (0 = off)"
    )
    p = add("reseed", _reseed, "rebuild the live boards in Redis from the database")
    p.add_argument(
        "--board", action="append", type=_board_arg, default=[], help="only this board (repeatable)"
    )
    p.add_argument(
        "--no-progress-bar", action="store_true", help="plain progress lines even on a terminal"
    )
    p = add("verify", _verify, "compare Redis and the database; exit 0 when they agree, 1 if not")
    p.add_argument(
        "--board", action="append", type=_board_arg, default=[], help="only this board (repeatable)"
    )
    p.add_argument(
        "--wait",
        type=float,
        default=30.0,
        help="seconds to wait for the sink to drain before comparing (default 30)",
    )
    return parser, commands


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the exit code is returned (and used by the console script)."""
    parser, commands = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from(args)
        # The durable side's commands sign and verify nothing: no secrets needed.
        if args.command not in ("migrate", "worker", "reseed", "verify"):
            settings = settings.with_secrets()
        return commands[args.command](settings, args)
    except ConfigError as e:
        print(f"scoreboard: configuration error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
