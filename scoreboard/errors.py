"""One error hierarchy: each class carries its HTTP status and the contract's code."""

from __future__ import annotations

from typing import Any, ClassVar


class ScoreboardError(Exception):
    """Base of every error that becomes the contract's JSON error body."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    outcome: ClassVar[str] = "error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}

    def extra(self) -> dict[str, Any]:
        """Fields added to the error body beyond error/message/requestId."""
        return {}

    def auth_reason(self) -> str | None:
        """The `scoreboard_auth_failures_total` reason of an authentication or
        authorization failure; None for every other error."""
        return None


class InvalidToken(ScoreboardError):
    status = 401
    code = "invalid_token"
    outcome = "unauthorized"

    def __init__(self, message: str, *, reason: str = "invalid") -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        self.reason = reason

    def auth_reason(self) -> str:
        return self.reason


class PayloadTooLarge(ScoreboardError):
    status = 413
    code = "payload_too_large"
    outcome = "payload_too_large"


class UnsupportedMediaType(ScoreboardError):
    status = 415
    code = "unsupported_media_type"
    outcome = "unsupported_media_type"


class BadRequest(ScoreboardError):
    status = 400
    code = "bad_request"
    outcome = "bad_request"


class InvalidActionToken(ScoreboardError):
    status = 403
    code = "invalid_action_token"
    outcome = "invalid_action_token"

    def __init__(self, message: str, *, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason

    def auth_reason(self) -> str:
        # Prefixed: an expired action token and an expired user JWT are different alarms.
        return "action_" + self.reason


class Forbidden(ScoreboardError):
    status = 403
    code = "forbidden"
    outcome = "forbidden"

    def __init__(self, message: str, *, reason: str = "scope") -> None:
        super().__init__(message)
        self.reason = reason

    def auth_reason(self) -> str:
        return self.reason


class NotFound(ScoreboardError):
    status = 404
    code = "not_found"
    outcome = "not_found"


class MethodNotAllowed(ScoreboardError):
    status = 405
    code = "method_not_allowed"
    outcome = "bad_request"


class InvalidDelta(ScoreboardError):
    status = 422
    code = "invalid_delta"
    outcome = "invalid_delta"


class Replay(ScoreboardError):
    status = 409
    code = "replay"
    outcome = "replay"

    def __init__(self, message: str, original: dict[str, Any] | None) -> None:
        super().__init__(message)
        self.original = original

    def extra(self) -> dict[str, Any]:
        return {"original": self.original} if self.original else {}


class RateLimited(ScoreboardError):
    status = 429
    code = "rate_limited"
    outcome = "rate_limited"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})
        self.retry_after_s = retry_after_s


class TooManyClients(ScoreboardError):
    status = 503
    code = "too_many_clients"
    outcome = "error"

    def __init__(self, message: str, retry_after_s: int = 5) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class StoreUnavailable(ScoreboardError):
    status = 500
    code = "store_unavailable"
    outcome = "error"


class DatabaseUnavailable(ScoreboardError):
    """The durable store (PostgreSQL or SQLite) is unreachable or failing."""

    status = 503
    code = "database_unavailable"
    outcome = "error"
