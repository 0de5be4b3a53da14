"""Path normalisation for rule matching (fail closed on ambiguity).

Rules match the path as a typical upstream will resolve it, so that no spelling of
``/admin`` can ride a weaker rule:

- the query string and fragment are dropped (Envoy leaves the query inside ``:path``);
- percent-encoded *unreserved* characters (``A-Z a-z 0-9 - . _ ~``) are decoded, as
  RFC 3986 §6.2.2.2 makes them equivalent (``/%61dmin`` is ``/admin``);
- repeated slashes are merged (``//admin`` is ``/admin``);
- ``.`` and ``..`` segments are resolved (``/public/../admin`` is ``/admin``);
- a path that stays ambiguous is refused with 400 instead of guessed at: an encoded
  slash or backslash (``%2F``, ``%5C``) — upstreams disagree on whether it separates
  segments — a literal backslash, a control character, literal or encoded (``%00``),
  a double encoding (``%25`` followed by two hex digits: ``%252e%252e`` is ``..`` to an
  upstream that decodes twice), a ``%`` not followed by two hex digits, ``..`` above
  the root, or a path that does not start with ``/``;
- path parameters are refused too: a ``;`` or ``%3B`` anywhere in the path. Tomcat,
  Jetty and Spring cut ``;…`` out of each segment (``/public/..;/admin/x`` and
  ``/admin;jsessionid=1/x`` are ``/admin/x`` to them), while NGINX, Envoy and most other
  servers keep it as part of the name. No single reading is right for every upstream,
  so matching either one would open a route on the other.
"""

from __future__ import annotations

import re

from ..errors import BadPath

_UNRESERVED = re.compile(
    r"%(4[1-9A-Fa-f]|5[0-9Aa]|6[1-9A-Fa-f]|7[0-9Aa]|3[0-9]|2[DdEe]|5[Ff]|7[Ee])"
)
_AMBIGUOUS = re.compile(
    r"%(2[Ff]|5[Cc]|3[Bb]|[01][0-9A-Fa-f]|7[Ff]|25[0-9A-Fa-f]{2}|(?![0-9A-Fa-f]{2}))"
    r"|[\\;\x00-\x1f\x7f]"
)


def normalise(path: str) -> str:
    """Return the canonical path for matching. Raises BadPath."""
    path = path.partition("?")[0].partition("#")[0]
    # Checked before decoding (decoding unreserved characters cannot create any of
    # these): a malformed escape such as ``%%32%65`` would otherwise decode to ``%2e``.
    if _AMBIGUOUS.search(path) or not path.startswith("/"):
        raise BadPath()
    if "%" in path:
        path = _UNRESERVED.sub(lambda m: chr(int(m.group(1), 16)), path)
    if "//" not in path and "/." not in path:
        return path  # the common case: nothing to resolve
    out: list[str] = []
    segments = path.split("/")[1:]
    for seg in segments:
        if seg in ("", "."):
            continue
        if seg == "..":
            if not out:
                raise BadPath()
            out.pop()
        else:
            out.append(seg)
    trailing = segments[-1] in ("", ".", "..") and bool(out)
    return "/" + "/".join(out) + ("/" if trailing else "")


def host_name(host: str) -> str:
    """The host name a rule matches: ``Host``/``:authority`` lower-cased, without its port
    and without a trailing dot (``API.example.com.:443`` -> ``api.example.com``), so no
    spelling of a host steps around a host-bound rule."""
    host = host.lower()
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and ":" not in name:
        host = name
    return host.rstrip(".")
