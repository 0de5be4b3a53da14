"""What a front door extracts from a protocol's request (no protocol types here)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

#: The context_extensions key (Envoy, per route) that names the rule to apply.
CONTEXT_RULE_KEY = "extauthz_rule"


class ClientCert:
    """The client's TLS certificate as a front door received it: PEM (Envoy's
    ``source.certificate``, NGINX's ``$ssl_client_escaped_cert``) or only its SHA-256
    (the ``Hash=`` of Envoy's ``x-forwarded-client-cert``). Parsed only when a token is
    certificate-bound (RFC 8705): most requests never pay for it."""

    __slots__ = ("_pem", "_sha256_hex", "_thumbprint")

    def __init__(self, *, pem: str = "", sha256_hex: str = "") -> None:
        self._pem = pem
        self._sha256_hex = sha256_hex
        self._thumbprint: str | None = None

    def thumbprint(self) -> str:
        """base64url(SHA-256(DER)), as in ``cnf["x5t#S256"]``; "" when unreadable."""
        if self._thumbprint is None:
            self._thumbprint = self._compute()
        return self._thumbprint

    def _compute(self) -> str:
        try:
            if self._pem:
                der = x509.load_pem_x509_certificate(self._pem.encode()).public_bytes(Encoding.DER)
                digest = hashlib.sha256(der).digest()
            else:
                digest = bytes.fromhex(self._sha256_hex)
                if len(digest) != 32:
                    return ""
        except ValueError:
            return ""
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """The attributes of the request being authorized (the original one, not the
    front door's own call)."""

    method: str = "GET"
    scheme: str = ""  # "http" or "https" when the front door knows it
    host: str = ""
    path: str = "/"  # including the query string (Envoy leaves http.query empty)
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    context_extensions: Mapping[str, str] = field(default_factory=dict)
    client_cert: ClientCert | None = None  # the TLS client certificate, when known

    @property
    def request_id(self) -> str | None:
        return self.headers.get("x-request-id")
