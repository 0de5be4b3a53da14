"""The client's side of sender-constrained tokens, for trying them out: a DPoP key kept
in a file, proofs signed with it (RFC 9449 §4.2), and the certificate thumbprint an
mTLS-bound token carries (RFC 8705 §3.1); and the HTTP Basic client authentication
the dev issuer's introspection and revocation endpoints take (RFC 6749 §2.3.1). For demos
and tests; not for production.
"""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.parse
import uuid
import warnings
from pathlib import Path
from typing import Any

from joserfc import jws
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, OKPKey, RSAKey

from ..core.dpop import access_token_hash
from ..core.request import ClientCert

#: The proof algorithm for each key type a key file may hold.
_ALG = {"EC": "ES256", "OKP": "EdDSA", "RSA": "PS256"}

ClientKey = ECKey | OKPKey | RSAKey


def generate_key(alg: str = "ES256") -> ClientKey:
    if alg == "ES256":
        return ECKey.generate_key("P-256")
    if alg == "EdDSA":
        return OKPKey.generate_key("Ed25519")
    if alg in ("PS256", "RS256"):
        return RSAKey.generate_key(2048)
    raise ValueError(f"unsupported DPoP algorithm {alg!r}; choose ES256, EdDSA or PS256")


def load_key(path: str | os.PathLike[str], *, create: bool = False) -> ClientKey:
    """The private JWK in ``path``; with ``create``, a new P-256 key written there (mode
    0600) if the file does not exist. Raises ValueError for a file that is not a key."""
    file = Path(path)
    try:
        data = json.loads(file.read_text())
    except FileNotFoundError:
        if not create:
            raise ValueError(f"{file}: no such key file") from None
        key = generate_key()
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(key.as_dict(private=True), out)
        return key
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{file}: not a JSON Web Key ({exc.__class__.__name__})") from None
    kty = data.get("kty") if isinstance(data, dict) else None
    if kty not in _ALG or "d" not in data:
        raise ValueError(f"{file}: not a private EC, OKP or RSA JSON Web Key")
    try:
        if kty == "EC":
            return ECKey.import_key(data)
        if kty == "OKP":
            return OKPKey.import_key(data)
        return RSAKey.import_key(data)
    except Exception:  # joserfc raises several types for a malformed key
        raise ValueError(f"{file}: not a usable private key") from None


def thumbprint(key: ClientKey) -> str:
    """RFC 7638 SHA-256 thumbprint: what a DPoP-bound token's ``cnf.jkt`` holds."""
    return str(key.thumbprint())


def proof_algorithm(key: ClientKey) -> str:
    return _ALG[key.key_type]


def make_proof(
    key: ClientKey,
    *,
    method: str,
    url: str,
    token: str | None = None,
    now: float | None = None,
    jti: str | None = None,
    alg: str | None = None,
) -> str:
    """A DPoP proof for one request: ``htm`` and ``htu`` name it (the query and fragment
    are not part of ``htu``), ``ath`` binds the access token when there is one."""
    claims: dict[str, Any] = {
        "jti": jti or uuid.uuid4().hex,
        "htm": method,
        "htu": url.partition("?")[0].partition("#")[0],
        "iat": int(time.time() if now is None else now),
    }
    if token is not None:
        claims["ath"] = access_token_hash(token)
    alg = alg or proof_algorithm(key)
    header = {"typ": "dpop+jwt", "alg": alg, "jwk": key.as_dict(private=False)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)  # "EdDSA": see dev/issuer.py
        return jws.serialize_compact(
            header, json.dumps(claims, separators=(",", ":")), key, algorithms=[alg]
        )


def certificate_thumbprint(pem: str) -> str:
    """RFC 8705 ``x5t#S256`` of a PEM certificate, computed as the server does. Raises
    ValueError when ``pem`` holds no certificate."""
    value = ClientCert(pem=pem).thumbprint()
    if not value:
        raise ValueError("not a PEM certificate")
    return value


def basic_authorization(client_id: str, client_secret: str) -> str:
    """An ``Authorization`` header value for client_secret_basic: RFC 6749 §2.3.1
    form-urlencodes the id and the secret before joining them with ":" and base64."""
    pair = f"{urllib.parse.quote_plus(client_id)}:{urllib.parse.quote_plus(client_secret)}"
    return "Basic " + base64.b64encode(pair.encode()).decode("ascii")
