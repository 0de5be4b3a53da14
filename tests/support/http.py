"""HTTP clients for the tests: the benchmark's (one implementation for both)."""

from bench.client import KeepAlive, Response, http_request

__all__ = ["KeepAlive", "Response", "http_request"]
