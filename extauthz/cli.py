"""extauthz: an Envoy ext_authz (v3, gRPC) server that verifies JWTs against a rotating JWKS.

Commands: serve, check-config, test-config, demo, issuer, token, dpop-proof.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import http.client
import json
import os
import shlex
import signal
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import __version__, config, logs
from .errors import ConfigError, LogSettingError, RequestsFileError

if TYPE_CHECKING:
    from .dev.client import ClientKey

EXIT_CONFIG = 2
ALGORITHMS = ["EdDSA", "RS256", "ES256"]

_ENV_HELP = {
    "EXTAUTHZ_CONFIG": ["the config file when --config is not given (serve, check-config)"],
    logs.LEVEL_ENV: [
        "the log level when --log-level is not given:",
        "debug, info (the default), warning or error",
    ],
    logs.FORMAT_ENV: [
        "the log format when --log-format is not given: json or text",
        "(default: text on a terminal, json otherwise; text for demo)",
    ],
}


def _epilog(*names: str) -> str:
    width = max(len(n) for n in names)
    lines = ["environment variables:"]
    for name in names:
        first, *rest = _ENV_HELP[name]
        lines.append(f"  {name.ljust(width)}  {first}")
        lines += [f"  {' ' * width}  {more}" for more in rest]
    lines.append("--log-level and --log-format may go before or after the command.")
    return "\n".join(lines)


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows '(default: X)' unless the help already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default is None or "default" in text:
            return text
        return super()._get_help_string(action)


def _config_path(args: argparse.Namespace) -> str:
    path = args.config or os.environ.get("EXTAUTHZ_CONFIG")
    if not path:
        print("error: --config FILE (or EXTAUTHZ_CONFIG) is required", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG)
    return str(path)


def _load(args: argparse.Namespace) -> config.Config:
    return _load_file(_config_path(args))


def _problems(path: str, what: str, exc: ConfigError) -> None:
    print(f"{path}: invalid {what}", file=sys.stderr)
    for where, msg in exc.problems:
        print(f"  {where or '(top level)'}: {msg}", file=sys.stderr)


def _load_file(path: str) -> config.Config:
    try:
        return config.load(path)
    except ConfigError as exc:
        _problems(path, "configuration", exc)
        raise SystemExit(EXIT_CONFIG) from None


def _duration(text: str) -> float:
    try:
        return config.parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _address(text: str) -> tuple[str, int]:
    try:
        return config.split_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = _load(args)
    from .server import workers

    if workers.count(cfg) > 1:
        return workers.supervise(
            cfg, _config_path(args), log_level=args.log_level, log_format=args.log_format
        )
    from pathlib import Path

    from .server.process import serve

    return asyncio.run(serve(cfg, config_path=Path(_config_path(args))))


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args)
    print(f"{_config_path(args)}: OK")
    print(config.summary(cfg))
    return 0


def cmd_test_config(args: argparse.Namespace) -> int:
    from .policytest import cases, report, runner

    cfg = _load_file(args.config)
    try:
        outcomes = runner.run(cfg, cases.load(args.requests), time.time())
    except RequestsFileError as exc:
        _problems(args.requests, "requests file", exc)
        return EXIT_CONFIG
    print(report.as_json(outcomes) if args.format == "json" else report.text(outcomes))
    return 0 if all(o.passed for o in outcomes) else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from .dev.demo import run

    try:
        return asyncio.run(run(port=args.port, alg=args.alg, rotate_every=args.rotate_every))
    except KeyboardInterrupt:
        return 0


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


async def _serve_issuer(args: argparse.Namespace) -> int:
    from .dev.issuer import DevIssuer, app
    from .httpsite import start

    host, port = args.listen
    issuer = DevIssuer(
        args.url or "http://127.0.0.1", alg=args.alg, rotate_every=args.rotate_every,
        token_ttl=args.token_ttl, client_id=args.client_id, client_secret=args.client_secret,
    )  # fmt: skip
    try:
        runner, bound = await start(app(issuer), host, port)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        print(f"error: cannot listen on {host}:{port}: {reason.lower()}", file=sys.stderr)
        return 1
    if not args.url:  # port 0: the URL is known only once bound
        issuer.issuer = f"http://{_url_host(host)}:{bound}"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    url = issuer.issuer
    print(f"dev issuer {url} ({args.alg}); JWKS at {url}/.well-known/jwks.json", file=sys.stderr)
    print(f"mint a token: extauthz token --issuer {url} --aud AUDIENCE", file=sys.stderr)
    client_id, secret = issuer.client_id, issuer.client_secret
    # curl -u sends the pair as given: form-urlencode it as RFC 6749 §2.3.1 asks.
    basic = shlex.quote(f"{urllib.parse.quote_plus(client_id)}:{urllib.parse.quote_plus(secret)}")
    for line in (
        f"opaque tokens (token --opaque): introspection (RFC 7662) at {url}/introspect, "
        f"revocation (RFC 7009) at {url}/revoke",
        f"client credentials (HTTP Basic): client_id {shlex.quote(client_id)}, "
        f"client_secret {shlex.quote(secret)}",
        f"introspect a token: curl -u {basic} -d token=TOKEN {url}/introspect",
        f"revoke a token: curl -u {basic} -d token=TOKEN {url}/revoke",
    ):
        print(line, file=sys.stderr)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
    return 0


def cmd_issuer(args: argparse.Namespace) -> int:
    return asyncio.run(_serve_issuer(args))


def _kind(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return "a number"


def _claims(text: str) -> dict[str, Any]:
    """--claims as a dict, or a one-line error (SystemExit 2)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        print(
            f"error: --claims is not valid JSON: {exc.msg} at column {exc.colno}", file=sys.stderr
        )
        raise SystemExit(EXIT_CONFIG) from None
    if not isinstance(value, dict):
        print(
            f'error: --claims must be a JSON object such as \'{{"role": "admin"}}\', '
            f"not {_kind(value)}",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_CONFIG)
    return value


def _unreachable(url: str, reason: object) -> str:
    """A URLError reason in the user's words."""
    parts = urllib.parse.urlsplit(url)
    default_port = 443 if parts.scheme == "https" else 80
    try:
        port = parts.port or default_port
    except ValueError:
        port = default_port
    where = f"{parts.hostname}:{port}"
    if isinstance(reason, ConnectionRefusedError) or getattr(reason, "errno", None) == (
        errno.ECONNREFUSED
    ):
        return f"connection refused by {where} (is the dev issuer running there?)"
    if isinstance(reason, socket.gaierror):
        return f"cannot resolve the host name {parts.hostname!r}"
    if isinstance(reason, TimeoutError):
        return f"no answer from {where} within 10 s"
    if isinstance(reason, OSError) and reason.strerror:
        return f"{reason.strerror.lower()} ({where})"
    return f"{reason} ({where})"


def _http_error(exc: urllib.error.HTTPError) -> str:
    detail = ""
    try:
        body = json.loads(exc.read() or b"null")
        if isinstance(body, dict) and body.get("error"):
            detail = f": {body['error']}"
    except (ValueError, OSError):
        pass
    return f"HTTP {exc.code} {exc.reason}{detail}"


def _client_key(option: str, path: str, *, create: bool) -> ClientKey | None:
    from .dev import client

    try:
        return client.load_key(path, create=create)
    except (ValueError, OSError) as exc:
        hint = " (create one with 'extauthz token --dpop FILE')" if not create else ""
        print(f"error: {option} {exc}{hint}", file=sys.stderr)
        return None


def _confirmation(args: argparse.Namespace) -> dict[str, str] | None:
    """The token's ``cnf``: {} unbound; None (after saying why) when a file is unusable."""
    from .dev import client

    cnf: dict[str, str] = {}
    if args.dpop:
        key = _client_key("--dpop", args.dpop, create=True)
        if key is None:
            return None
        cnf["jkt"] = client.thumbprint(key)
    if args.cnf_cert:
        try:
            with open(args.cnf_cert, encoding="ascii") as f:
                cnf["x5t#S256"] = client.certificate_thumbprint(f.read())
        except (OSError, ValueError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not a PEM certificate"
            print(f"error: --cnf-cert {args.cnf_cert}: {why}", file=sys.stderr)
            return None
    return cnf


def cmd_dpop_proof(args: argparse.Namespace) -> int:
    if not args.url.startswith(("http://", "https://")):
        print(f"error: --url must be an http(s) URL, got {args.url!r}", file=sys.stderr)
        return EXIT_CONFIG
    from .dev import client

    key = _client_key("--key", args.key, create=False)
    if key is None:
        return EXIT_CONFIG
    if args.token is None:
        print(
            "warning: no --token: the proof has no ath, which extauthz (a resource "
            "server) requires; such a proof only suits a token request",
            file=sys.stderr,
        )
    print(client.make_proof(key, method=args.method, url=args.url, token=args.token))
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    if not args.issuer.startswith(("http://", "https://")):
        print(f"error: --issuer must be an http(s) URL, got {args.issuer!r}", file=sys.stderr)
        return EXIT_CONFIG
    if args.opaque:
        given = [o for o, v in (("--dpop", args.dpop), ("--cnf-cert", args.cnf_cert),
                                ("--typ", args.typ)) if v]  # fmt: skip
        if given:
            print(
                f"error: --opaque cannot go with {' or '.join(given)}: only a JWT carries "
                "a cnf binding or a typ header",
                file=sys.stderr,
            )
            return EXIT_CONFIG
    body: dict[str, object] = {"sub": args.sub}
    if args.opaque:
        body["opaque"] = True
    if args.claims:
        body["claims"] = _claims(args.claims)
    if args.aud:
        body["aud"] = args.aud if len(args.aud) > 1 else args.aud[0]
    else:
        print(
            "warning: no --aud: the token has no audience, so any provider with audiences "
            "configured (the demo's is demo-api) will refuse it",
            file=sys.stderr,
        )
    if args.scope:
        body["scope"] = args.scope
    if args.ttl is not None:
        body["ttl"] = args.ttl
    if args.typ:
        body["typ"] = args.typ
    cnf = _confirmation(args)
    if cnf is None:
        return EXIT_CONFIG
    if cnf:
        body["cnf"] = cnf
    issuer = args.issuer.rstrip("/")
    request = urllib.request.Request(  # noqa: S310 - scheme checked above
        issuer + "/token",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 - user URL
            token = json.load(resp)["access_token"]
        if not isinstance(token, str):
            raise TypeError("access_token is not a string")
    except urllib.error.HTTPError as exc:
        hint = " (is --issuer the URL of an extauthz dev issuer?)" if exc.code in (404, 405) else ""
        print(f"error: POST {issuer}/token answered {_http_error(exc)}{hint}", file=sys.stderr)
        return 1
    except urllib.error.URLError as exc:
        print(f"error: cannot reach {issuer}: {_unreachable(issuer, exc.reason)}", file=sys.stderr)
        return 1
    except (OSError, http.client.HTTPException) as exc:
        print(f"error: cannot reach {issuer}: {_unreachable(issuer, exc)}", file=sys.stderr)
        return 1
    except (KeyError, TypeError, ValueError):
        print(f"error: POST {issuer}/token did not answer with a token", file=sys.stderr)
        return 1
    print(token)
    return 0


def _log_options(p: argparse.ArgumentParser, *, top: bool, fmt_default: str) -> None:
    # On a subcommand the default is SUPPRESS, so an option given before the command
    # is not overwritten by the subcommand's default.
    default = None if top else argparse.SUPPRESS
    p.add_argument(
        "--log-level",
        type=str.lower,
        choices=logs.LEVELS,
        default=default,
        help=f"log level (default: ${logs.LEVEL_ENV}, else info)",
    )
    p.add_argument(
        "--log-format",
        type=str.lower,
        choices=logs.FORMATS,
        default=default,
        help=f"log format (default: ${logs.FORMAT_ENV}, else {fmt_default})",
    )


def parser() -> argparse.ArgumentParser:
    all_env = ("EXTAUTHZ_CONFIG", logs.LEVEL_ENV, logs.FORMAT_ENV)
    log_env = (logs.LEVEL_ENV, logs.FORMAT_ENV)
    auto = "text on a terminal, json otherwise"
    p = argparse.ArgumentParser(
        prog="extauthz", description=__doc__, formatter_class=_Help, epilog=_epilog(*all_env)
    )
    p.add_argument("--version", action="version", version=f"extauthz {__version__}")
    _log_options(p, top=True, fmt_default=f"{auto}; text for demo")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, text: str, env: tuple[str, ...], description: str | None = None
    ) -> argparse.ArgumentParser:
        s = sub.add_parser(
            name,
            help=text,
            description=description or text,
            formatter_class=_Help,
            epilog=_epilog(*env),
        )
        _log_options(s, top=False, fmt_default="text" if name == "demo" else auto)
        return s

    s = command("serve", "run the ext_authz gRPC server", all_env)
    s.add_argument("--config", help="YAML config file (default: $EXTAUTHZ_CONFIG)")
    s.set_defaults(func=cmd_serve)

    c = command("check-config", "validate a config and print a summary", all_env)
    c.add_argument("--config", help="YAML config file (default: $EXTAUTHZ_CONFIG)")
    c.set_defaults(func=cmd_check_config)

    tc = command(
        "test-config",
        "check a config's answers to a table of requests, without a server",
        log_env,
        "Decide each request of REQUESTS with CONFIG, as the server would, and check the "
        "answer against the request's expectations. No server, proxy or network: minted "
        "tokens are signed by local keys that stand in for each provider's JWKS. "
        "Exit status: 0 every expectation holds, 1 some do not, 2 a file is invalid.",
    )
    tc.add_argument("config", metavar="CONFIG", help="YAML config file")
    tc.add_argument(
        "requests",
        metavar="REQUESTS",
        help="YAML file of requests and their expected answers (docs/policy.md)",
    )
    tc.add_argument(
        "--format", choices=("text", "json"), default="text", help="how the outcome is printed"
    )
    tc.set_defaults(func=cmd_test_config)

    d = command("demo", "dev issuer + server + Envoy + upstream, with curl commands", log_env)
    d.add_argument("--port", type=int, default=10000, help="Envoy listener port (0: any free)")
    d.add_argument("--alg", default="EdDSA", choices=ALGORITHMS, help="signing algorithm")
    d.add_argument(
        "--rotate-every",
        type=_duration,
        default="60s",
        metavar="DURATION",
        help="signing key rotation period",
    )
    d.set_defaults(func=cmd_demo)

    i = command("issuer", "a development token issuer with key rotation", log_env)
    i.add_argument(
        "--listen",
        type=_address,
        default="127.0.0.1:8000",
        metavar="HOST:PORT",
        help="address to listen on (port 0: any free port)",
    )
    i.add_argument("--url", help="issuer URL to put in tokens (default: http://LISTEN)")
    i.add_argument("--alg", default="EdDSA", choices=ALGORITHMS, help="signing algorithm")
    i.add_argument(
        "--rotate-every",
        type=_duration,
        metavar="DURATION",
        help="key rotation period (default: never rotate)",
    )
    i.add_argument(
        "--token-ttl", type=_duration, default="5m", metavar="DURATION", help="token lifetime"
    )
    i.add_argument(
        "--client-id",
        default="extauthz",
        metavar="ID",
        help="the client that may introspect (RFC 7662) and revoke (RFC 7009) opaque "
        "tokens, with HTTP Basic",
    )
    i.add_argument(
        "--client-secret",
        metavar="SECRET",
        help="that client's secret (default: a random one, printed at start)",
    )
    i.set_defaults(func=cmd_issuer)

    t = command("token", "mint a token from a running dev issuer", log_env)
    t.add_argument(
        "--issuer", required=True, metavar="URL", help="dev issuer URL, e.g. http://127.0.0.1:8000"
    )
    t.add_argument("--sub", default="demo-user", help="subject")
    t.add_argument(
        "--aud",
        action="append",
        help="audience, repeatable (default: none, which providers with audiences refuse)",
    )
    t.add_argument("--scope", help='space-separated scopes, e.g. "read write" (default: none)')
    t.add_argument(
        "--ttl",
        type=_duration,
        metavar="DURATION",
        help="lifetime (default: the issuer's --token-ttl)",
    )
    t.add_argument(
        "--claims", help='extra claims as a JSON object, e.g. \'{"role": "admin"}\' (default: none)'
    )
    t.add_argument(
        "--dpop",
        metavar="KEYFILE",
        help="bind the token to this DPoP key (RFC 9449; a new P-256 key is written there "
        "if the file does not exist); send it with 'Authorization: DPoP' and a proof "
        "from 'extauthz dpop-proof'",
    )
    t.add_argument(
        "--cnf-cert",
        metavar="FILE",
        help="bind the token to this PEM client certificate (RFC 8705 x5t#S256)",
    )
    t.add_argument("--typ", choices=("JWT", "at+jwt"), help="the token's typ header (default: JWT)")
    t.add_argument(
        "--opaque",
        action="store_true",
        help="an opaque token, which the issuer answers for at /introspect (RFC 7662) and "
        "forgets at /revoke (RFC 7009); not with --dpop, --cnf-cert or --typ "
        "(default: a signed JWT)",
    )
    t.set_defaults(func=cmd_token)

    p_ = command("dpop-proof", "sign a DPoP proof for one request (RFC 9449)", log_env)
    p_.add_argument(
        "--key", required=True, metavar="KEYFILE", help="the key given to 'token --dpop'"
    )
    p_.add_argument("--url", required=True, help="the request's URL (htu; the query is left out)")
    p_.add_argument("--method", default="GET", help="the request's method (htm)")
    p_.add_argument("--token", help="the access token it goes with (ath)")
    p_.set_defaults(func=cmd_dpop_proof)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        logs.configure(
            args.log_level,
            args.log_format,
            default_format="text" if args.command == "demo" else None,
        )
    except LogSettingError as exc:
        print(f"extauthz: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return int(args.func(args))
