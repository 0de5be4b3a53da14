"""The Python peer: Google service-extensions' ext_authz SDK with its JWT example,
re-implemented from its documented behaviour (never vendored) for the bench.

What it does, as its README and example describe it: grpcio's synchronous server with
a two-thread pool (the SDK's ``server_thread_count`` default); ``Check`` takes a
``Bearer`` token from the ``authorization`` request header, decodes it with PyJWT
against one RSA public key in PEM, ``algorithms=['RS256']``, and allows with one
``decoded-<claim>`` header per claim. Two differences, both in its favour: PyJWT is
given the bench's audience (the example passes none, and PyJWT then refuses every
token that carries ``aud``), and its log lines (two per request at its DEBUG level)
are left out.

    python -m bench.peer --listen 127.0.0.1:9191 --public-key key.pem

Needs PyJWT (``pip install -e '.[bench]'``), a bench-only dependency.
"""

from __future__ import annotations

import argparse
import importlib
from concurrent import futures
from pathlib import Path
from typing import Any

from extauthz.dev.wire import base_pb2, external_auth_pb2_grpc, status_pb2
from extauthz.dev.wire import external_auth_pb2 as pb

from .common import AUDIENCE
from .floor import serve_sync

THREADS = 2  # the SDK's default server_thread_count


class PeerServicer(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    def __init__(self, public_key: bytes) -> None:
        self._jwt: Any = importlib.import_module("jwt")  # optional: typed as Any
        self._key = public_key

    def Check(self, request: Any, context: Any) -> Any:
        value = request.attributes.request.http.headers.get("authorization", "")
        parts = value.strip().split(" ")
        if len(parts) != 2 or parts[0].lower() != "bearer":
            return _deny()
        try:
            claims = self._jwt.decode(parts[1], self._key, algorithms=["RS256"],
                                      audience=AUDIENCE)  # fmt: skip
        except self._jwt.InvalidTokenError:
            return _deny()
        headers = [
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key=f"decoded-{k}", value=str(v))
            )
            for k, v in claims.items()
        ]
        return pb.CheckResponse(
            status=status_pb2.Status(code=0), ok_response=pb.OkHttpResponse(headers=headers)
        )


def _deny() -> Any:
    return pb.CheckResponse(status=status_pb2.Status(code=16))


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.peer")
    p.add_argument("--listen", default="127.0.0.1:9191")
    p.add_argument("--public-key", type=Path, required=True, help="RSA public key, PEM")
    args = p.parse_args()
    # The SDK's own server: a ThreadPoolExecutor.
    serve_sync(args.listen, THREADS, PeerServicer(args.public_key.read_bytes()),
               futures.ThreadPoolExecutor(THREADS))  # fmt: skip


if __name__ == "__main__":
    main()
