"""The decision core: from an :class:`AuthRequest` to a :class:`Decision`.

No protobuf, no HTTP framework, no status code and no serialized bytes live here; a
front door translates a protocol's request into an ``AuthRequest`` and a ``Decision``
into that protocol's answer. Time is a parameter (``now``), and key sets are read from
a callable: nothing here does I/O.

Modules, in the order a request meets them: ``paths`` (the path a rule matches),
``tokens`` (finding the token), ``verify`` (JOSE checks of one token), ``cache`` and
``verifier`` (verification behind one call, the verified-token cache hidden inside),
``headers`` (claims rendered as identity headers), ``policy`` (rules and the decision).
"""
