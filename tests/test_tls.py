"""TLS and mTLS on the gRPC listener, with a real Envoy as the client; certificate reload."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509

from extauthz._proto.envoy.service.auth.v3 import external_auth_pb2_grpc
from tests.support.certs import CA, Pair
from tests.support.envoy import EnvoyProcess
from tests.support.server import ServerThread, wait_for
from tests.support.signing import Signer, claims, jwks
from tests.support.upstream import EchoUpstream
from tests.test_server import check_request

pytestmark = pytest.mark.envoy

ISS = "https://issuer.example"
SIGNER = Signer("EdDSA")
TOKEN = SIGNER.sign(claims(ISS, "api", ttl=3600))


def server_config(tls: dict[str, str]) -> dict[str, Any]:
    return {
        "server": {"listen": "127.0.0.1:0", "admin_listen": None, "tls": tls},
        "providers": {"p": {"issuer": ISS, "audiences": ["api"], "jwks": jwks(SIGNER)}},
    }


def tls_to_extauthz(ca: Path, client: Pair | None) -> Callable[[dict[str, Any]], None]:
    """Envoy's extauthz cluster speaks TLS (and presents a client certificate for mTLS)."""

    def hook(bootstrap: dict[str, Any]) -> None:
        cluster = next(
            c for c in bootstrap["static_resources"]["clusters"] if c["name"] == "extauthz"
        )
        common: dict[str, Any] = {
            "alpn_protocols": ["h2"],
            "validation_context": {
                "trusted_ca": {"filename": str(ca)},
                "match_typed_subject_alt_names": [
                    {"san_type": "DNS", "matcher": {"exact": "localhost"}}
                ],
            },
        }
        if client is not None:
            common["tls_certificates"] = [
                {
                    "certificate_chain": {"filename": str(client.cert)},
                    "private_key": {"filename": str(client.key)},
                }
            ]
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/"
                "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": "localhost",
                "common_tls_context": common,
            },
        }

    return hook


def through_envoy(port: int, hook: Callable[[dict[str, Any]], None]) -> tuple[int, int]:
    with (
        EchoUpstream() as up,
        EnvoyProcess(extauthz_port=port, upstream_port=up.port, config_hook=hook) as envoy,
    ):
        ok = envoy.request("GET", "/x", headers={"authorization": f"Bearer {TOKEN}"}).status
        missing = envoy.request("GET", "/x").status
    return ok, missing


def test_tls_with_envoy(tmp_path: Path) -> None:
    ca = CA(tmp_path)
    srv = ca.issue("server", server=True)
    cfg = server_config({"cert_file": str(srv.cert), "key_file": str(srv.key)})
    with ServerThread(cfg) as server:
        server.wait_ready()
        assert through_envoy(server.grpc_port, tls_to_extauthz(ca.path, None)) == (200, 401)


def test_mtls_requires_a_client_certificate(tmp_path: Path) -> None:
    ca = CA(tmp_path)
    srv = ca.issue("server", server=True)
    client = ca.issue("envoy", server=False)
    cfg = server_config(
        {"cert_file": str(srv.cert), "key_file": str(srv.key), "client_ca_file": str(ca.path)}
    )
    with ServerThread(cfg) as server:
        server.wait_ready()
        assert through_envoy(server.grpc_port, tls_to_extauthz(ca.path, client)) == (200, 401)
        # Envoy without a client certificate is refused: fail closed to 503.
        assert through_envoy(server.grpc_port, tls_to_extauthz(ca.path, None)) == (503, 503)
        # So is any gRPC client without one.
        creds = grpc.ssl_channel_credentials(root_certificates=ca.path.read_bytes())
        with grpc.secure_channel(f"localhost:{server.grpc_port}", creds) as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            with pytest.raises(grpc.RpcError) as exc:
                stub.Check(check_request({"authorization": f"Bearer {TOKEN}"}), timeout=5)
            assert exc.value.code() == grpc.StatusCode.UNAVAILABLE


def _served_serial(port: int, ca: Path) -> int:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


def test_certificates_are_reloaded_when_the_files_change(tmp_path: Path) -> None:
    ca = CA(tmp_path)
    first = ca.issue("server", server=True)
    cfg = server_config({"cert_file": str(first.cert), "key_file": str(first.key)})
    with ServerThread(cfg) as server:
        server.wait_ready()
        assert _served_serial(server.grpc_port, ca.path) == first.serial
        second = ca.issue("server", server=True, cert=first.cert, key=first.key)  # rotation
        wait_for(
            lambda: _served_serial(server.grpc_port, ca.path) == second.serial,
            10,
            "the rotated certificate to be served",
        )
        assert through_envoy(server.grpc_port, tls_to_extauthz(ca.path, None)) == (200, 401)
