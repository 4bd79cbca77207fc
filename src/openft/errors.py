"""The domain error tree.

Services raise these; ``openft.api.errors`` maps each to the OpenAI error
envelope exactly once. Nothing else builds HTTP errors by hand.
"""

from __future__ import annotations


class OpenFTError(Exception):
    """Base of every error openft reports to a client."""

    status_code = 400
    error_type = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


def error_body(
    message: str, *, type: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict[str, dict[str, str | None]]:
    """The OpenAI error envelope; built here only, for JSON responses and stream events alike."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class InvalidRequest(OpenFTError):
    """The request is malformed or names something unusable (400)."""


class AuthenticationFailed(OpenFTError):
    """No API key, or one openft does not know (401)."""

    status_code = 401


class NotFound(OpenFTError):
    """The object does not exist, or belongs to another organisation (404)."""

    status_code = 404

    def __init__(self, kind: str, object_id: str, *, param: str | None = None):
        label = kind.replace("_", " ").replace("fine tuning", "fine-tuning")
        super().__init__(f"No such {label}: {object_id}", param=param, code=f"{kind}_not_found")
        self.kind = kind
        self.object_id = object_id


class Conflict(OpenFTError):
    """The request is valid but the object's state forbids it (409)."""

    status_code = 409


class PayloadTooLarge(OpenFTError):
    """The uploaded file is larger than the configured cap (413)."""

    status_code = 413


class Forbidden(OpenFTError):
    """The object exists and is visible, but this operation is not allowed on it (403)."""

    status_code = 403


class ServerFailure(OpenFTError):
    """Work the server does for a valid request failed (a helper process died) (500)."""

    status_code = 500
    error_type = "server_error"


class Overloaded(OpenFTError):
    """The model was busy for longer than the request may wait (503)."""

    status_code = 503
    error_type = "server_error"


class RateLimited(OpenFTError):
    """The organisation, or the server, is at its share of a bounded capacity (429);
    ``retry_after`` seconds is a fair time to wait."""

    status_code = 429
    error_type = "requests"

    def __init__(self, message: str, *, retry_after: int, code: str = "rate_limit_exceeded"):
        super().__init__(message, code=code)
        self.retry_after = retry_after


class BadGateway(OpenFTError):
    """A provider account the request was routed to could not be reached or failed (502)."""

    status_code = 502
    error_type = "server_error"


class GatewayTimeout(OpenFTError):
    """A provider account did not answer within its timeout (504)."""

    status_code = 504
    error_type = "server_error"


class UpstreamError(OpenFTError):
    """A provider account's own client error (4xx), passed on with its fields."""

    def __init__(self, status: int, message: str, *, error_type: str, param: str | None, code: str | None,
                 retry_after: str | None = None):
        super().__init__(message, param=param, code=code)
        self.status_code = status
        self.error_type = error_type
        self.retry_after = retry_after
        """The upstream's ``Retry-After`` (a 429's), passed on."""
