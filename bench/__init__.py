"""Benchmark harness for extauthz: python -m bench (see docs/benchmarks.md)."""
