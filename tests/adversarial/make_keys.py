"""Generate the fixed key material of the adversarial corpus (run once, output committed).

    .venv/bin/python -m tests.adversarial.make_keys > tests/adversarial/keys.json

Signatures depend on keys, so the corpus signs its tokens at test time from these
fixed private JWKs: regenerating them changes no expected answer.
"""

from __future__ import annotations

import base64
import datetime
import json
import sys
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey


def _private(key: Any) -> dict[str, Any]:
    return dict(key.as_dict(private=True))


def _self_signed(key: RSAKey) -> str:
    """An attacker's self-signed certificate (for x5c), base64 DER as in RFC 7515 §4.1.6."""
    private = key.private_key
    assert private is not None, "a generated key holds its private half"
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "attacker.example")])
    start = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key)
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=3650))
        .sign(private, hashes.SHA256())
    )
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


def main() -> None:
    attacker = RSAKey.generate_key(2048)
    keys = {
        # Published in the corpus JWKS (public members only):
        "rsa": _private(RSAKey.generate_key(2048)),  # kid "rsa", alg RS256
        "rsa384": _private(RSAKey.generate_key(2048)),  # kid "rsa384", JWK alg RS384
        "ec": _private(ECKey.generate_key("P-256")),  # kid "ec"
        "ec384": _private(ECKey.generate_key("P-384")),  # kid "ec384", no JWK alg
        "ed": _private(OKPKey.generate_key("Ed25519")),  # kid "ed"
        "x25519": _private(OKPKey.generate_key("X25519")),  # kid "x25519" (not a sig key)
        # Secret of the inline provider (kid "hmac"):
        "hmac": _private(OctKey.generate_key(256)),
        # Never published: what an attacker signs with.
        "attacker_rsa": _private(attacker),
        "attacker_ec": _private(ECKey.generate_key("P-256")),
        "attacker_ed": _private(OKPKey.generate_key("Ed25519")),
        "attacker_x5c": _self_signed(attacker),
        # DPoP clients' keys (RFC 9449), never published: tokens name them in cnf.jkt.
        "dpop_ec": _private(ECKey.generate_key("P-256")),
        "dpop_ed": _private(OKPKey.generate_key("Ed25519")),
        "dpop_rsa": _private(RSAKey.generate_key(2048)),
        "dpop_rsa1024": _private(RSAKey.generate_key(1024)),  # below the 2048-bit minimum
    }
    json.dump(keys, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
