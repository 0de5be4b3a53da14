"""Every exception extauthz raises on purpose, in one place.

::

    ExtAuthzError
    ├── ConfigError               a configuration file or mapping is invalid
    │   └── RequestsFileError       a test-config requests file is invalid
    ├── LogSettingError           --log-level / --log-format / EXTAUTHZ_LOG_* is unknown
    ├── JwksError                 a JWKS document holds no usable key (parse, not I/O)
    │   └── KeyFetchError         a JWKS could not be fetched or read (I/O)
    ├── EnvoyStartError           the development Envoy did not start
    ├── ReplayStoreDown           the DPoP replay store could not be asked (becomes a 503)
    └── Denied                    a request is refused; ``kind`` says how
        ├── MissingToken            no credentials where a token is required
        ├── NoRuleMatched           default_action: deny and no rule matched
        │   └── UnknownRule           context_extensions named a rule that does not exist
        ├── InvalidToken            the token is not acceptable (each subclass one reason)
        │   ├── MalformedToken, TokenTooLarge, AlgorithmNotAllowed, UnsupportedHeader,
        │   │   UnknownIssuer, UnknownKey, BadSignature, Expired, NotYetValid,
        │   │   WrongAudience, InvalidClaims, UnforwardableClaim, WrongTokenType
        │   ├── InactiveToken           introspection says the opaque token is not active
        │   └── BindingMismatch         a sender-constrained token without its key or cert
        ├── InvalidDpopProof        a DPoP proof is missing, malformed, stale or replayed
        ├── InvalidRequest          the request is ambiguous (two tokens)
        │   └── BadPath               a path upstreams would read differently
        ├── InsufficientScope       a valid token without the rule's scopes or claims
        └── Unavailable             no answer can be given now (503)
            ├── KeysUnavailable       the provider has no usable keys
            ├── ReplayStoreUnavailable  the shared DPoP replay store cannot be reached
            ├── IntrospectionUnavailable  the introspection endpoint gave no usable answer
            └── InternalError         a bug or an unforeseen input: fail closed

A ``Denied`` carries what was decided — its ``kind`` (a :class:`DenyKind`), a bounded
``reason`` for metrics and logs, and a coarse, token-free ``description`` — and nothing
about any wire: each front door maps a kind to its own answer in one table.
``UnsafeHeaderValue`` is a ``ValueError`` (a claim no header can carry) that the
decision core turns into ``UnforwardableClaim``.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence


class ExtAuthzError(Exception):
    """Base of every error extauthz raises on purpose."""


class ConfigError(ExtAuthzError):
    """A configuration could not be loaded; ``problems`` are (dotted key path, message)."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(f"{p}: {m}" if p else m for p, m in self.problems))


class RequestsFileError(ConfigError):
    """The requests file of ``extauthz test-config`` is invalid, or asks something of the
    configuration it cannot answer; ``problems`` as for ConfigError."""


class LogSettingError(ExtAuthzError, ValueError):
    """A log level or format that does not exist (from a flag or the environment)."""


class JwksError(ExtAuthzError):
    """A JWKS document holds no usable key; the last good keys stay in use."""


class KeyFetchError(JwksError):
    """A JWKS could not be fetched or read (network, HTTP status, file); the last good
    keys stay in use."""


class EnvoyStartError(ExtAuthzError, RuntimeError):
    """The development Envoy (``extauthz demo``) exited or did not become ready."""


class ReplayStoreDown(ExtAuthzError):
    """The replay store could not be asked; the caller must not accept the proof."""


class UnsafeHeaderValue(ValueError):
    """A claim that no header value can carry faithfully."""


class DenyKind(enum.Enum):
    """What a refusal means, independent of any protocol (RFC 6750 §3.1 terms)."""

    MISSING_TOKEN = "missing_token"  # no credentials: a challenge without an error
    NO_RULE = "no_rule"  # nothing allows the request: also no error attribute
    INVALID_TOKEN = "invalid_token"
    INVALID_DPOP_PROOF = "invalid_dpop_proof"  # RFC 9449 §7.1
    INVALID_REQUEST = "invalid_request"
    INSUFFICIENT_SCOPE = "insufficient_scope"
    UNAVAILABLE = "unavailable"  # no answer can be given now; retry


class Denied(ExtAuthzError):
    """A request is refused. ``reason`` is a bounded metrics label."""

    kind: DenyKind = DenyKind.INVALID_TOKEN
    reason: str = "denied"
    description: str = "access denied"
    # What is known of the token when it was refused, for logs and metrics labels.
    provider: str = ""
    kid: str | None = None
    iss: str | None = None

    def __init__(self, description: str | None = None, *, reason: str | None = None) -> None:
        if description is not None:
            self.description = description
        if reason is not None:
            self.reason = reason
        super().__init__(self.description)

    def about(self, provider: str, kid: str | None, iss: str | None) -> Denied:
        """Note which provider, key and issuer the refused token named."""
        self.provider, self.kid, self.iss = provider, kid, iss
        return self


class MissingToken(Denied):
    kind = DenyKind.MISSING_TOKEN
    reason = "missing_token"
    description = "an access token is required"


class NoRuleMatched(Denied):
    """default_action: deny and no rule matched. No credentials problem, so no error code."""

    kind = DenyKind.NO_RULE
    reason = "no_rule"
    description = "no rule allows this request"


class UnknownRule(NoRuleMatched):
    """``context_extensions: {extauthz_rule: NAME}`` names no rule: fail closed."""

    reason = "unknown_rule"

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__()


class InvalidToken(Denied):
    """The token is not acceptable. Subclasses only fix ``reason``/``description``."""

    kind = DenyKind.INVALID_TOKEN
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


class WrongTokenType(InvalidToken):
    """``require_typ`` (RFC 9068 ``at+jwt``): an ID token or another JWT is not an
    access token."""

    reason = "wrong_token_type"
    description = "token type not accepted"


class InactiveToken(InvalidToken):
    """RFC 7662: the authorization server answered ``active: false`` (revoked, expired,
    unknown)."""

    reason = "inactive_token"
    description = "token not active"


class BindingMismatch(InvalidToken):
    """A sender-constrained token presented without its key or certificate (RFC 9449
    §7.1, RFC 8705 §3): a DPoP-bound token sent as Bearer, an unbound token sent as
    DPoP, a proof by another key, a missing or different client certificate."""

    reason = "binding_mismatch"
    description = "token binding not satisfied"


class InvalidDpopProof(Denied):
    kind = DenyKind.INVALID_DPOP_PROOF
    reason = "invalid_dpop_proof"
    description = "DPoP proof invalid"


class InvalidRequest(Denied):
    kind = DenyKind.INVALID_REQUEST
    reason = "multiple_tokens"
    description = "more than one token presented"


class BadPath(InvalidRequest):
    """A request path that different upstreams would resolve differently."""

    reason = "bad_path"
    description = "ambiguous request path"


class InsufficientScope(Denied):
    kind = DenyKind.INSUFFICIENT_SCOPE
    reason = "insufficient_scope"
    description = "insufficient scope"

    def __init__(
        self, description: str | None = None, *, reason: str | None = None, scope: str = ""
    ) -> None:
        self.scope = scope
        super().__init__(description, reason=reason)


class Unavailable(Denied):
    kind = DenyKind.UNAVAILABLE
    reason = "unavailable"
    description = "authorization temporarily unavailable"


class KeysUnavailable(Unavailable):
    reason = "keys_unavailable"
    description = "signing keys unavailable"


class ReplayStoreUnavailable(Unavailable):
    """DPoP replay protection cannot be checked (Redis unreachable): a replay is never
    accepted, so DPoP requests wait for the store to come back."""

    reason = "replay_store_unavailable"
    description = "replay protection temporarily unavailable"


class IntrospectionUnavailable(Unavailable):
    """The introspection endpoint failed, timed out or answered something unusable:
    fail closed, and ask again next time (never cached)."""

    reason = "introspection_unavailable"
    description = "token introspection temporarily unavailable"


class InternalError(Unavailable):
    """A bug or an unforeseen input: fail closed, with a 503 the operator will notice."""

    reason = "internal_error"
    description = "authorization temporarily unavailable"
