"""The one error tree of ModelMint.

Every failure a caller can act on is a ``ModelMintError``. Each edge maps it once:
the gateway to an OpenAI-shaped JSON body with ``status_code``, the CLI to a
message and ``exit_code``.

    ModelMintError
    ├── InvalidRequest            400  bad field, bad value, bad JSON
    │   └── ContextLengthExceeded 400  prompt + max_tokens beyond the context window
    ├── AuthenticationError       401  missing, unknown, revoked or expired key
    ├── InsufficientQuota         402  budget or prepaid credit cannot cover the request
    ├── PermissionDenied          403  key not allowed to use the model
    ├── NotFound                  404  unknown model, key, organisation ...
    │   └── ModelNotFound         404
    ├── MethodNotAllowed          405
    ├── Conflict                  409  name already taken
    ├── PayloadTooLarge           413
    ├── RateLimited               429  carries retry_after seconds
    │   └── UpstreamRateLimited   429  the upstream, not the caller, is over its limit
    ├── BackendError              502  upstream answered with garbage or an error
    ├── ServiceUnavailable        503  model not loaded, queue full, database down
    └── UpstreamTimeout           504
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "BackendError",
    "Conflict",
    "ContextLengthExceeded",
    "HeadersTooLarge",
    "InsufficientQuota",
    "InvalidRequest",
    "MethodNotAllowed",
    "ModelMintError",
    "ModelNotFound",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "RateLimited",
    "ServiceUnavailable",
    "UpstreamRateLimited",
    "UpstreamTimeout",
]


class ModelMintError(Exception):
    """Base of every error a user of ModelMint can see."""

    status_code: int = 500
    error_type: str = "server_error"
    code: str | None = None
    exit_code: int = 1

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def to_body(self) -> dict[str, object]:
        """The OpenAI error shape: ``{"error": {"message", "type", "param", "code"}}``."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(ModelMintError):
    status_code = 400
    error_type = "invalid_request_error"
    exit_code = 2


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class AuthenticationError(ModelMintError):
    status_code = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"
    exit_code = 3


class InsufficientQuota(ModelMintError):
    status_code = 402
    error_type = "insufficient_quota"
    code = "insufficient_quota"
    exit_code = 4


class PaymentRequired(InsufficientQuota):
    """The organisation's invoice payment is overdue past its grace period (dunning)."""

    code = "payment_required"


class PermissionDenied(ModelMintError):
    status_code = 403
    error_type = "permission_error"
    code = "model_not_allowed"
    exit_code = 3


class NotFound(ModelMintError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"
    exit_code = 4


class ModelNotFound(NotFound):
    code = "model_not_found"


class MethodNotAllowed(ModelMintError):
    status_code = 405
    error_type = "invalid_request_error"
    code = "method_not_allowed"


class Conflict(ModelMintError):
    status_code = 409
    error_type = "invalid_request_error"
    code = "conflict"
    exit_code = 5


class PayloadTooLarge(ModelMintError):
    status_code = 413
    error_type = "invalid_request_error"
    code = "payload_too_large"


class HeadersTooLarge(ModelMintError):
    status_code = 431
    error_type = "invalid_request_error"
    code = "headers_too_large"


class RateLimited(ModelMintError):
    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float, code: str | None = None):
        super().__init__(message, code=code)
        self.retry_after = retry_after


class UpstreamRateLimited(RateLimited):
    code = "upstream_rate_limited"


class BackendError(ModelMintError):
    status_code = 502
    error_type = "api_error"
    code = "bad_gateway"


class ServiceUnavailable(ModelMintError):
    status_code = 503
    error_type = "api_error"
    code = "service_unavailable"

    def __init__(self, message: str, *, retry_after: float | None = None, code: str | None = None):
        super().__init__(message, code=code)
        self.retry_after = retry_after


class UpstreamTimeout(ModelMintError):
    status_code = 504
    error_type = "api_error"
    code = "timeout"
