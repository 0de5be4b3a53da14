"""``extauthz test-config``: a configuration tested against a table of requests, without
a server or a proxy (as ``opa test`` or Envoy's ``router_check_tool`` test theirs).

:mod:`.cases` reads the requests file, :mod:`.signing` mints each case's token with
dev-issuer keys that stand in for the providers' own, :mod:`.runner` asks the policy and
holds each answer to the case's expectations, :mod:`.report` prints the outcome.
"""
