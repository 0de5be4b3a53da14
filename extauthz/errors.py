"""One error hierarchy.

Every way a request can be refused is a subclass of :class:`Denied`, which carries
what the wire needs (HTTP status, gRPC code, RFC 6750 error code) and a coarse,
token-free description. The mapping to the CheckResponse lives in one table in
``extauthz.answers``; nothing else decides status codes.
"""

from __future__ import annotations

from collections.abc import Sequence


class ExtAuthzError(Exception):
    """Base of every error extauthz raises on purpose."""


class ConfigError(ExtAuthzError):
    """A configuration could not be loaded; ``problems`` are (dotted key path, message)."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(f"{p}: {m}" if p else m for p, m in self.problems))


class KeyFetchError(ExtAuthzError):
    """A JWKS could not be fetched or parsed; the last good keys stay in use."""


# gRPC status codes used in CheckResponse.status (google.rpc.Code).
OK = 0
INVALID_ARGUMENT = 3
PERMISSION_DENIED = 7
UNAVAILABLE = 14
UNAUTHENTICATED = 16


class Denied(ExtAuthzError):
    """A request is refused. ``reason`` is a bounded metrics label."""

    http_status: int = 401
    grpc_code: int = UNAUTHENTICATED
    #: RFC 6750 error code, or None when the request carried no credentials (§3.1).
    oauth_error: str | None = "invalid_token"
    reason: str = "denied"
    description: str = "access denied"

    def __init__(self, description: str | None = None, *, reason: str | None = None) -> None:
        if description is not None:
            self.description = description
        if reason is not None:
            self.reason = reason
        super().__init__(self.description)


class MissingToken(Denied):
    oauth_error = None
    reason = "missing_token"
    description = "a bearer token is required"


class InvalidToken(Denied):
    """The token is not acceptable. Subclasses only fix ``reason``/``description``."""

    reason = "invalid_token"
    description = "token invalid"


class MalformedToken(InvalidToken):
    reason = "malformed"
    description = "token malformed"


class TokenTooLarge(InvalidToken):
    reason = "too_large"
    description = "token too large"


class AlgorithmNotAllowed(InvalidToken):
    reason = "alg_not_allowed"
    description = "algorithm not allowed"


class UnsupportedHeader(InvalidToken):
    reason = "unsupported_header"
    description = "unsupported token header"


class UnknownIssuer(InvalidToken):
    reason = "wrong_issuer"
    description = "issuer not accepted"


class UnknownKey(InvalidToken):
    reason = "unknown_key"
    description = "unknown key"


class BadSignature(InvalidToken):
    reason = "bad_signature"
    description = "signature invalid"


class Expired(InvalidToken):
    reason = "expired"
    description = "token expired"


class NotYetValid(InvalidToken):
    reason = "not_yet_valid"
    description = "token not yet valid"


class WrongAudience(InvalidToken):
    reason = "wrong_audience"
    description = "audience not accepted"


class InvalidClaims(InvalidToken):
    reason = "invalid_claims"
    description = "token claims invalid"


class UnforwardableClaim(InvalidToken):
    """A verified claim that no header value can carry faithfully (control characters,
    or whitespace HTTP would trim): refused rather than altered."""

    reason = "unforwardable_claim"
    description = "a claim cannot be sent as a header"


class InvalidRequest(Denied):
    http_status = 400
    grpc_code = INVALID_ARGUMENT
    oauth_error = "invalid_request"
    reason = "multiple_tokens"
    description = "more than one token presented"


class InsufficientScope(Denied):
    http_status = 403
    grpc_code = PERMISSION_DENIED
    oauth_error = "insufficient_scope"
    reason = "insufficient_scope"
    description = "insufficient scope"

    def __init__(
        self, description: str | None = None, *, reason: str | None = None, scope: str = ""
    ) -> None:
        self.scope = scope
        super().__init__(description, reason=reason)


class NoRuleMatched(Denied):
    """default_action: deny and no rule matched. No credentials problem, so no error code."""

    oauth_error = None
    reason = "no_rule"
    description = "no rule allows this request"


class KeysUnavailable(Denied):
    http_status = 503
    grpc_code = UNAVAILABLE
    oauth_error = None
    reason = "keys_unavailable"
    description = "signing keys unavailable"


class InternalError(Denied):
    """A bug or an unforeseen input: fail closed, with a 5xx the operator will notice."""

    http_status = 503
    grpc_code = UNAVAILABLE
    oauth_error = None
    reason = "internal_error"
    description = "authorization temporarily unavailable"
