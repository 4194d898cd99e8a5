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
    return parser, commands


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the exit code is returned (and used by the console script)."""
    parser, commands = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from(args)
        if args.command != "migrate":
            settings = settings.with_secrets()
        return commands[args.command](settings, args)
    except ConfigError as e:
        print(f"scoreboard: configuration error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
