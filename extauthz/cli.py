"""Command line: serve, check-config, demo, issuer, token."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence

from . import __version__, config, logs
from .errors import ConfigError

EXIT_CONFIG = 2


def _config_path(args: argparse.Namespace) -> str:
    path = args.config or os.environ.get("EXTAUTHZ_CONFIG")
    if not path:
        print("error: --config FILE (or EXTAUTHZ_CONFIG) is required", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG)
    return str(path)


def _load(args: argparse.Namespace) -> config.Config:
    path = _config_path(args)
    try:
        return config.load(path)
    except ConfigError as exc:
        print(f"{path}: invalid configuration", file=sys.stderr)
        for where, msg in exc.problems:
            print(f"  {where or '(top level)'}: {msg}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def _duration(text: str) -> float:
    try:
        return config.parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = _load(args)
    from . import workers

    if workers.count(cfg) > 1:
        return workers.supervise(
            cfg, _config_path(args), log_level=args.log_level, log_format=args.log_format
        )
    from pathlib import Path

    from .server import serve

    return asyncio.run(serve(cfg, config_path=Path(_config_path(args))))


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args)
    print(f"{_config_path(args)}: OK")
    print(config.summary(cfg))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run

    try:
        return asyncio.run(run(port=args.port, alg=args.alg, rotate_every=args.rotate_every))
    except KeyboardInterrupt:
        return 0


def cmd_issuer(args: argparse.Namespace) -> int:
    from aiohttp import web

    from .issuer import DevIssuer, app

    host, port = config.split_address(args.listen)
    url = args.url or f"http://{host if host != '0.0.0.0' else '127.0.0.1'}:{port}"
    issuer = DevIssuer(url, alg=args.alg, rotate_every=args.rotate_every, token_ttl=args.token_ttl)
    print(f"dev issuer {url} ({args.alg}); JWKS at {url}/.well-known/jwks.json", file=sys.stderr)
    web.run_app(app(issuer), host=host, port=port, print=None)
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    body: dict[str, object] = {"sub": args.sub}
    if args.aud:
        body["aud"] = args.aud if len(args.aud) > 1 else args.aud[0]
    if args.scope:
        body["scope"] = args.scope
    if args.ttl is not None:
        body["ttl"] = args.ttl
    if args.claims:
        body["claims"] = json.loads(args.claims)
    if not args.issuer.startswith(("http://", "https://")):
        print("error: --issuer must be an http(s) URL", file=sys.stderr)
        return EXIT_CONFIG
    request = urllib.request.Request(  # noqa: S310 - scheme checked above
        args.issuer.rstrip("/") + "/token",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 - user URL
            print(json.load(resp)["access_token"])
    except (urllib.error.URLError, OSError, KeyError, ValueError) as exc:
        print(f"error: cannot mint a token from {args.issuer}: {exc}", file=sys.stderr)
        return 1
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="extauthz", description=__doc__)
    p.add_argument("--version", action="version", version=f"extauthz {__version__}")
    p.add_argument("--log-level", default=None, help="debug, info, warning (default info)")
    p.add_argument("--log-format", choices=["json", "text"], default=None)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the ext_authz gRPC server")
    s.add_argument("--config", help="YAML config file (or EXTAUTHZ_CONFIG)")
    s.set_defaults(func=cmd_serve)

    c = sub.add_parser("check-config", help="validate a config and print a summary")
    c.add_argument("--config", help="YAML config file (or EXTAUTHZ_CONFIG)")
    c.set_defaults(func=cmd_check_config)

    d = sub.add_parser("demo", help="dev issuer + server + Envoy + upstream, with curl commands")
    d.add_argument("--port", type=int, default=10000, help="Envoy listener port (default 10000)")
    d.add_argument("--alg", default="EdDSA", choices=["EdDSA", "RS256", "ES256"])
    d.add_argument("--rotate-every", type=_duration, default=60.0, help="default 60s")
    d.set_defaults(func=cmd_demo)

    i = sub.add_parser("issuer", help="a development token issuer with key rotation")
    i.add_argument("--listen", default="127.0.0.1:8000")
    i.add_argument("--url", help="issuer URL to put in tokens (default http://LISTEN)")
    i.add_argument("--alg", default="EdDSA", choices=["EdDSA", "RS256", "ES256"])
    i.add_argument("--rotate-every", type=_duration, default=None)
    i.add_argument("--token-ttl", type=_duration, default=300.0)
    i.set_defaults(func=cmd_issuer)

    t = sub.add_parser("token", help="mint a token from a running dev issuer")
    t.add_argument("--issuer", required=True, help="dev issuer URL")
    t.add_argument("--sub", default="demo-user")
    t.add_argument("--aud", action="append", help="audience (repeatable)")
    t.add_argument("--scope")
    t.add_argument("--ttl", type=_duration)
    t.add_argument("--claims", help="extra claims as a JSON object")
    t.set_defaults(func=cmd_token)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    fmt = args.log_format or ("text" if args.command == "demo" else None)
    logs.configure(args.log_level, fmt)
    return int(args.func(args))
