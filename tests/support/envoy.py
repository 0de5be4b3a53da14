"""Real-Envoy test support: the runner lives in the package (``extauthz demo`` uses it)."""

from extauthz.envoy_process import (
    EnvoyProcess,
    EnvoyStartError,
    Response,
    envoy_binary,
    http_request,
)

__all__ = ["EnvoyProcess", "EnvoyStartError", "Response", "envoy_binary", "http_request"]
