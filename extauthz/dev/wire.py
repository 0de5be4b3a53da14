"""The Envoy ext_authz v3 wire types, for development tools: the benchmark's do-nothing
servers and its clients speak the same messages extauthz does."""

from .._proto.envoy.config.core.v3 import base_pb2
from .._proto.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from .._proto.google.rpc import status_pb2

__all__ = ["base_pb2", "external_auth_pb2", "external_auth_pb2_grpc", "status_pb2"]
