"""Settings: read once from the environment (and CLI flags), then passed down."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson


class ConfigError(Exception):
    """A setting is missing, malformed or unsafe; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Option:
    """One contract setting: its env var, flag, default and parser."""

    env: str
    attr: str
    default: str
    help: str
    kind: str = "str"  # str | int | bool | float

    @property
    def flag(self) -> str:
        return "--" + self.env.removeprefix("SCOREBOARD_").lower().replace("_", "-")


OPTIONS: tuple[Option, ...] = (
    Option("SCOREBOARD_HTTP_HOST", "http_host", "127.0.0.1", "listen address"),
    Option("SCOREBOARD_HTTP_PORT", "http_port", "8080", "listen port", "int"),
    Option("SCOREBOARD_REDIS_URL", "redis_url", "", "redis:// or rediss:// URL; unset: embedded"),
    Option("SCOREBOARD_DATABASE_URL", "database_url", "", "postgresql:// URL; unset: embedded"),
    Option("SCOREBOARD_JWT_SECRET", "jwt_secret", "", "HS256 key for user JWTs"),
    Option("SCOREBOARD_JWT_PUBLIC_KEYS", "jwt_public_keys", "", "JWKS file of public keys"),
    Option("SCOREBOARD_JWT_ISSUER", "jwt_issuer", "", "required iss of user JWTs"),
    Option("SCOREBOARD_JWT_AUDIENCE", "jwt_audience", "", "required aud of user JWTs"),
    Option("SCOREBOARD_JWT_LEEWAY_S", "jwt_leeway_s", "10", "clock skew on exp/nbf/iat", "int"),
    Option("SCOREBOARD_ACTION_SECRET", "action_secret", "", "HS256 key for action tokens"),
    Option(
        "SCOREBOARD_ACTION_TOKEN_MAX_TTL_S",
        "action_token_max_ttl_s",
        "300",
        "longest exp - iat of an action token",
        "int",
    ),
    Option("SCOREBOARD_MAX_DELTA", "max_delta", "1000", "largest ordinary delta", "int"),
    Option("SCOREBOARD_MAX_BONUS_DELTA", "max_bonus_delta", "100000", "largest bonus delta", "int"),
    Option(
        "SCOREBOARD_RATE_LIMIT_PER_MIN",
        "rate_limit_per_min",
        "600",
        "accepted increments per user per minute; 0 = off",
        "int",
    ),
    Option(
        "SCOREBOARD_REDIS_CLUSTER", "redis_cluster", "false", "Redis URL is a cluster node", "bool"
    ),
    Option("SCOREBOARD_WORKERS", "workers", "1", "HTTP worker processes", "int"),
    Option("SCOREBOARD_DATA_DIR", "data_dir", "./.scoreboard", "embedded mode's files"),
    Option(
        "SCOREBOARD_STREAM_MAX_CLIENTS",
        "stream_max_clients",
        "20000",
        "live SSE + WebSocket clients per process",
        "int",
    ),
    Option(
        "SCOREBOARD_STREAM_MAX_CLIENTS_PER_IP",
        "stream_max_clients_per_ip",
        "100",
        "live clients per client address",
        "int",
    ),
    Option("SCOREBOARD_LOG_LEVEL", "log_level", "info", "debug, info, warning, error"),
    Option("SCOREBOARD_LOG_FORMAT", "log_format", "auto", "json, text or auto"),
    Option(
        "SCOREBOARD_SINK",
        "sink",
        "true",
        "serve also runs the persistence sink in-process",
        "bool",
    ),
)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
MIN_SECRET_BYTES = 32


def _parse(opt: Option, raw: str) -> Any:
    raw = raw.strip()
    if opt.kind == "int":
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{opt.env} must be an integer, got {raw!r}") from None
    if opt.kind == "bool":
        low = raw.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ConfigError(f"{opt.env} must be true or false, got {raw!r}")
    return raw


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of the contract, typed. Build with `Settings.from_env`."""

    http_host: str = "127.0.0.1"
    http_port: int = 8080
    redis_url: str = ""
    database_url: str = ""
    jwt_secret: str = field(default="", repr=False)
    jwt_public_keys: str = ""
    jwt_issuer: str = ""
    jwt_audience: str = ""
    jwt_leeway_s: int = 10
    action_secret: str = field(default="", repr=False)
    action_token_max_ttl_s: int = 300
    max_delta: int = 1000
    max_bonus_delta: int = 100000
    rate_limit_per_min: int = 600
    redis_cluster: bool = False
    workers: int = 1
    data_dir: str = "./.scoreboard"
    stream_max_clients: int = 20000
    stream_max_clients_per_ip: int = 100
    log_level: str = "info"
    log_format: str = "auto"
    sink: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Read every `SCOREBOARD_*` variable; unknown values raise ConfigError."""
        values: dict[str, Any] = {}
        for opt in OPTIONS:
            raw = env.get(opt.env)
            values[opt.attr] = _parse(opt, opt.default if raw is None else raw)
        settings = cls(**values)
        settings.check_values()
        return settings

    @property
    def embedded_redis(self) -> bool:
        return not self.redis_url

    @property
    def embedded_database(self) -> bool:
        return not self.database_url

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    def check_values(self) -> None:
        """Range checks that need no secrets."""
        if not 0 <= self.http_port <= 65535:
            raise ConfigError("SCOREBOARD_HTTP_PORT must be 0-65535")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("SCOREBOARD_REDIS_URL must start with redis:// or rediss://")
        if self.database_url and not self.database_url.startswith(("postgresql://", "postgres://")):
            raise ConfigError("SCOREBOARD_DATABASE_URL must start with postgresql://")
        for name, value, low in (
            ("SCOREBOARD_JWT_LEEWAY_S", self.jwt_leeway_s, 0),
            ("SCOREBOARD_ACTION_TOKEN_MAX_TTL_S", self.action_token_max_ttl_s, 1),
            ("SCOREBOARD_MAX_DELTA", self.max_delta, 1),
            ("SCOREBOARD_MAX_BONUS_DELTA", self.max_bonus_delta, 1),
            ("SCOREBOARD_RATE_LIMIT_PER_MIN", self.rate_limit_per_min, 0),
            ("SCOREBOARD_WORKERS", self.workers, 1),
            ("SCOREBOARD_STREAM_MAX_CLIENTS", self.stream_max_clients, 1),
            ("SCOREBOARD_STREAM_MAX_CLIENTS_PER_IP", self.stream_max_clients_per_ip, 1),
        ):
            if value < low:
                raise ConfigError(f"{name} must be at least {low}, got {value}")
        if self.log_format not in ("json", "text", "auto"):
            raise ConfigError("SCOREBOARD_LOG_FORMAT must be json, text or auto")
        if self.log_level.lower() not in ("debug", "info", "warning", "error", "critical"):
            raise ConfigError("SCOREBOARD_LOG_LEVEL must be debug, info, warning or error")

    def with_secrets(self) -> Settings:
        """Fill in the embedded mode's generated secrets, then check that secrets are safe.

        In server mode (a Redis URL is set) a missing secret is an error; in the
        embedded default, missing secrets are generated once and kept in the data
        directory so that `scoreboard token` mints what the server accepts.
        """
        settings = self
        if self.embedded_redis:
            stored = load_or_create_secrets(self.data_path)
            settings = replace(
                self,
                jwt_secret=self.jwt_secret
                or ("" if self.jwt_public_keys else stored["jwt_secret"]),
                action_secret=self.action_secret or stored["action_secret"],
            )
        settings.check_secrets()
        return settings

    def check_secrets(self) -> None:
        """Refuse missing, short or shared secrets."""
        if not self.action_secret:
            raise ConfigError(
                "SCOREBOARD_ACTION_SECRET is required when SCOREBOARD_REDIS_URL is set"
            )
        if not self.jwt_secret and not self.jwt_public_keys:
            raise ConfigError(
                "SCOREBOARD_JWT_SECRET or SCOREBOARD_JWT_PUBLIC_KEYS is required "
                "when SCOREBOARD_REDIS_URL is set"
            )
        for name, value in (
            ("SCOREBOARD_JWT_SECRET", self.jwt_secret),
            ("SCOREBOARD_ACTION_SECRET", self.action_secret),
        ):
            if value and len(value.encode()) < MIN_SECRET_BYTES:
                raise ConfigError(f"{name} must be at least {MIN_SECRET_BYTES} bytes long")
        if self.jwt_secret and self.jwt_secret == self.action_secret:
            raise ConfigError("SCOREBOARD_ACTION_SECRET must differ from SCOREBOARD_JWT_SECRET")
        if self.jwt_public_keys and not Path(self.jwt_public_keys).is_file():
            raise ConfigError(f"SCOREBOARD_JWT_PUBLIC_KEYS: no file at {self.jwt_public_keys}")


def load_or_create_secrets(data_dir: Path) -> dict[str, str]:
    """The embedded mode's secrets, generated on first use and kept (mode 0600)."""
    path = data_dir / "secrets.json"
    if not path.is_file():
        data_dir.mkdir(parents=True, exist_ok=True)
        created = {
            "jwt_secret": secrets.token_urlsafe(48),
            "action_secret": secrets.token_urlsafe(48),
        }
        tmp = data_dir / f".secrets.{os.getpid()}.{secrets.token_hex(4)}"
        tmp.write_bytes(orjson.dumps(created))
        tmp.chmod(0o600)
        # link() fails when another process won the race; then its secrets are kept.
        with suppress(FileExistsError):
            os.link(tmp, path)
        tmp.unlink()
    stored = orjson.loads(path.read_bytes())
    if not isinstance(stored, dict) or not {"jwt_secret", "action_secret"} <= stored.keys():
        raise ConfigError(f"{path} is not a secrets file; remove it to generate new secrets")
    return {k: str(stored[k]) for k in ("jwt_secret", "action_secret")}
