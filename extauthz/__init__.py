"""extauthz: an Envoy ext_authz (v3, gRPC) server that verifies JWTs against a rotating JWKS."""

__version__ = "0.1.0"
