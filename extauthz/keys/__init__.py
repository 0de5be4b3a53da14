"""Signing keys: immutable key-set snapshots (``jwks``) and the sources that keep one
fresh per provider in the background (``source``). The request path only reads a
snapshot; ``curves`` refuses degenerate EdDSA keys at load time."""
