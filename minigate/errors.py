"""Every error minigate raises on purpose.

    MinigateError
    ├── ConfigError                  a config file failed to load; names file, line and field
    └── RequestError                 reaches a client; carries HTTP status and OpenAI type/code
        ├── InvalidRequest           400 invalid_request_error
        │   └── MalformedJSON        400, with the position of the fault
        ├── AuthenticationFailed     401 missing or unknown key
        ├── PermissionDenied         403 the key's role may not do this
        ├── NotFound                 404 a thing the request names does not exist
        │   └── ModelNotFound        404 lists the routes that exist
        ├── RequestTimeout           408 the body did not arrive within server.body_timeout_s
        ├── PayloadTooLarge          413 body over server.max_body_bytes
        ├── TooManyRequests          429 a key's rate limit (type requests|tokens) or budget (insufficient_quota)
        ├── ClientClosedRequest      499 the client left before its answer (nginx's code; nobody reads it)
        ├── ServiceUnavailable       503 a part minigate needs (the call-log store) is down
        └── UpstreamError            the model behind a route failed
            ├── UpstreamUnavailable  502 connect failure or 5xx
            │   └── ReplicasUnavailable  no replica answered; carries the attempts made
            ├── UpstreamTimeout      504
            │   └── ReplicasTimeout      a call timed out (never retried); carries the attempts made
            └── UpstreamStreamCut    the upstream closed a stream mid-way (reported as an SSE error event)

The gateway renders RequestError in one place (`minigate.gateway.errors`) as OpenAI's
`{"error": {"message", "type", "param", "code"}}`, so clients written for OpenAI parse ours unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "ConfigError",
    "ConfigProblem",
    "AuthenticationFailed",
    "ClientClosedRequest",
    "InvalidRequest",
    "MalformedJSON",
    "MinigateError",
    "ModelNotFound",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "RequestTimeout",
    "ReplicasTimeout",
    "ReplicasUnavailable",
    "RequestError",
    "ServiceUnavailable",
    "TooManyRequests",
    "UpstreamError",
    "UpstreamStreamCut",
    "UpstreamTimeout",
    "UpstreamUnavailable",
]


class MinigateError(Exception):
    """Base of every error minigate raises deliberately."""


@dataclass(frozen=True)
class ConfigProblem:
    """One fault in a config file, located so that a person can go straight to it."""

    field: str
    message: str
    line: int | None = None

    def render(self, file: str) -> str:
        where = f"{file}:{self.line}" if self.line is not None else file
        return f"{where}: {self.field}: {self.message}"


class ConfigError(MinigateError):
    """A config file could not be loaded.

    >>> str(ConfigError("a.yaml", [ConfigProblem("routes.gpt-4.default", "unknown model 'x'", 7)]))
    "a.yaml:7: routes.gpt-4.default: unknown model 'x'"
    """

    def __init__(self, file: str, problems: list[ConfigProblem]) -> None:
        self.file = file
        self.problems = problems
        super().__init__("\n".join(p.render(file) for p in problems))


class RequestError(MinigateError):
    """An error a client sees, in OpenAI's error vocabulary."""

    status: int = 400
    type: str = "invalid_request_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}  # sent with the error (Retry-After, x-ratelimit-*)


class InvalidRequest(RequestError):
    code = "invalid_request"


class MalformedJSON(InvalidRequest):
    code = "invalid_json"


class AuthenticationFailed(RequestError):
    status = 401
    code = "invalid_api_key"


class PermissionDenied(RequestError):
    status = 403
    type = "permission_error"
    code = "insufficient_role"


class NotFound(RequestError):
    status = 404
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class RequestTimeout(RequestError):
    status = 408
    code = "request_timeout"


class PayloadTooLarge(RequestError):
    status = 413
    code = "payload_too_large"


class TooManyRequests(RequestError):
    """Over a rate limit (OpenAI's type `requests` or `tokens`, code `rate_limit_exceeded`) or a spend budget
    (type `insufficient_quota`, as OpenAI answers an exhausted quota); `headers` say when to retry."""

    status = 429

    def __init__(self, message: str, *, type_: str, code: str, headers: dict[str, str]) -> None:
        super().__init__(message, headers=headers)
        self.type = type_
        self.code = code


class ClientClosedRequest(RequestError):
    """Raised where we notice the client has gone: the call is recorded as 499, and nothing is sent."""

    status = 499
    code = "client_closed_request"


class ServiceUnavailable(RequestError):
    status = 503
    type = "server_error"
    code = "service_unavailable"


class UpstreamError(RequestError):
    """The model behind a route failed; `upstream` names the config entry so operators know where to look."""

    status = 502
    type = "upstream_error"
    code = "upstream_unavailable"

    def __init__(self, message: str, *, upstream: str, kind: str) -> None:
        super().__init__(message)
        self.upstream = upstream
        self.kind = kind


class UpstreamUnavailable(UpstreamError):
    pass


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class ReplicasUnavailable(UpstreamUnavailable):
    """No replica answered (connect errors, open circuits); `attempts` are the calls made, retries included.

    Each attempt is a `minigate.serving.replicas.Attempt`; the type says only `object` because this
    module, the face every room imports, may depend on none of them.
    """

    def __init__(self, message: str, *, upstream: str, kind: str, attempts: Sequence[object]) -> None:
        super().__init__(message, upstream=upstream, kind=kind)
        self.attempts = attempts


class ReplicasTimeout(UpstreamTimeout):
    """A call that timed out, never retried: the upstream may have run it. `attempts` as above."""

    def __init__(self, message: str, *, upstream: str, kind: str, attempts: Sequence[object]) -> None:
        super().__init__(message, upstream=upstream, kind=kind)
        self.attempts = attempts


class UpstreamStreamCut(UpstreamError):
    code = "upstream_stream_cut"
