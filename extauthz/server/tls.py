"""TLS material for the gRPC listener, re-read when its files change (cert-manager)."""

from __future__ import annotations

from pathlib import Path

import grpc

from .. import files, logs
from ..config import TLS

_log = logs.get("extauthz.server")


class CertFiles:
    """Serves TLS material to grpc; grpc asks again on each handshake (``fetch``)."""

    def __init__(self, tls: TLS) -> None:
        self.tls = tls
        self._stamp: tuple[files.Stamp, ...] | None = None

    def _paths(self) -> list[Path]:
        return [p for p in (self.tls.cert_file, self.tls.key_file, self.tls.client_ca_file) if p]

    def load(self) -> grpc.ServerCertificateConfiguration:
        self._stamp = tuple(files.stamp(p) for p in self._paths())
        ca = self.tls.client_ca_file.read_bytes() if self.tls.client_ca_file else None
        return grpc.ssl_server_certificate_configuration(
            [(self.tls.key_file.read_bytes(), self.tls.cert_file.read_bytes())],
            root_certificates=ca,
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """New material when a file changed, else None (grpc keeps the current one)."""
        try:
            if tuple(files.stamp(p) for p in self._paths()) == self._stamp:
                return None
            config = self.load()
        except OSError as exc:
            _log.warning("tls_reload_failed", error=exc.strerror)
            return None
        _log.info("tls_reloaded")
        return config

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self.load(), self.fetch, require_client_authentication=bool(self.tls.client_ca_file)
        )
