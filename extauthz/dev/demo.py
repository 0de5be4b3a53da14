"""``extauthz demo``: dev issuer (rotating keys) + extauthz + Envoy + a tiny upstream.

Everything listens on loopback; Ctrl-C stops all of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

from aiohttp import web

from .. import config, httpsite, logs
from ..errors import EnvoyStartError
from ..server.process import ServingProcess
from . import client, envoy_config, issuer

AUDIENCE = "demo-api"
#: How long an introspection answer is reused: short, so a revocation shows soon.
OPAQUE_CACHE_TTL = 5.0
TOKEN_TTL = 3600.0  # long enough for an unhurried trial; rotation keeps working (issuer.py)
_log = logs.get("extauthz.demo")


def extauthz_command() -> str:
    """How to run this same extauthz from any shell and cwd, shell-quoted.

    The console script next to the interpreter (``.venv/bin/extauthz``, which need not
    be on PATH), else ``<python> -m extauthz``. Paths are absolute but not resolved: a
    venv's python is a symlink whose target is outside the venv.
    """
    here = Path(os.path.abspath(sys.executable))
    script = here.parent / "extauthz"
    if script.is_file() and os.access(script, os.X_OK):
        return shlex.quote(str(script))
    return shlex.join([str(here), "-m", "extauthz"])


def _validity(exp: int, now: float) -> str:
    minutes = round((exp - now) / 60)
    until = time.strftime("%H:%M", time.gmtime(exp))
    return f"valid for {minutes} min, until {until} UTC"


async def _upstream(request: web.Request) -> web.Response:
    seen = {k.lower(): v for k, v in request.headers.items() if k.lower().startswith("x-")}
    return web.json_response(
        {"upstream": "hello from the demo upstream", "path": request.path_qs, "headers": seen}
    )


def demo_config(
    issuer_url: str,
    rotate_every: float,
    secret_file: Path | None = None,
    client_id: str = "extauthz",
) -> config.Config:
    # Opaque tokens too, when the dev issuer's client secret is at hand (RFC 7662).
    introspection = (
        {
            "introspection": {
                "endpoint": f"{issuer_url}/introspect",
                "client_id": client_id,
                "client_secret_file": str(secret_file),
                "cache_ttl": OPAQUE_CACHE_TTL,
            }
        }
        if secret_file is not None
        else {}
    )
    return config.from_mapping(
        {
            "server": {"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0"},
            "providers": {
                "demo": {
                    "issuer": issuer_url,
                    "audiences": [AUDIENCE],
                    "discovery": True,
                    "refresh_interval": max(2.0, rotate_every / 2),
                    "min_refresh_interval": 1.0,
                    "claims_to_headers": {"x-user-id": "sub", "x-user-scope": "scope"},
                    "dpop": {},  # DPoP-bound tokens accepted; plain Bearer ones too
                    **introspection,
                }
            },
            "rules": [
                {"name": "public", "match": {"path_prefix": "/public"}, "allow_anonymous": True},
                {"name": "admin", "match": {"path_prefix": "/admin"}, "scopes": ["admin"]},
                {"name": "default", "match": {"path_prefix": "/"}},
            ],
        }
    )


def _start_envoy(port: int, grpc_port: int, upstream_port: int) -> Any:
    from .envoy import EnvoyProcess

    workdir = Path(tempfile.mkdtemp(prefix="extauthz-demo-envoy-"))
    bootstrap = envoy_config.bootstrap(
        listen_port=port, extauthz_port=grpc_port, upstream_port=upstream_port,
        unprotected_prefixes=["/healthz"], timeout="0.5s",
        access_log_path=str(workdir / "access.log"),
    )  # fmt: skip
    try:
        return EnvoyProcess(bootstrap, workdir=workdir).start()
    except EnvoyStartError:
        if port == 0:
            raise
        print(f"port {port} is busy; letting the OS pick one", file=sys.stderr)
        return _start_envoy(0, grpc_port, upstream_port)


def _dpop_examples(dev: issuer.DevIssuer, base: str, key_file: Path) -> list[str]:
    """Commands for a DPoP-bound token (RFC 9449): its proof is signed when the command
    runs, as a client would for each request, so the commands work whenever pasted."""
    key = client.load_key(key_file, create=True)
    bound = dev.mint(sub="carol", aud=AUDIENCE, scope="read", cnf={"jkt": client.thumbprint(key)})
    url = f"{base}/hello"
    proof = (
        f"{extauthz_command()} dpop-proof --key {shlex.quote(str(key_file))} "
        f'--token "$T" --url {url}'
    )
    dpop = '-H "Authorization: DPoP $T" -H "DPoP: $P"'
    return [
        f"# DPoP (RFC 9449): a token bound to the client key in {key_file},",
        "# sent with a proof signed for this request -> 200; the upstream sees x-user-id: carol",
        f"T={bound}; P=$({proof}); curl -i {url} {dpop}",
        '# the same proof sent twice -> 200, then 401 error="invalid_dpop_proof" '
        '"DPoP proof replayed"',
        f"T={bound}; P=$({proof}); curl -s -o /dev/null -w '%{{http_code}}\\n' {url} {dpop};"
        f" curl -i {url} {dpop}",
        '# the DPoP-bound token sent as a plain Bearer token -> 401 error="invalid_token"',
        f"curl -i {url} -H 'Authorization: Bearer {bound}'",
    ]


def _opaque_examples(dev: issuer.DevIssuer, base: str) -> list[str]:
    """Commands for opaque tokens, introspected at the dev issuer, and a revocation that
    takes effect once the cached answer ends."""
    url = f"{base}/hello"
    code = "curl -s -o /dev/null -w '%{http_code}\\n'"
    opaque = dev.mint_opaque(sub="dave", aud=AUDIENCE, scope="read")
    doomed = dev.mint_opaque(sub="erin", aud=AUDIENCE, scope="read")
    auth = f"-H 'Authorization: Bearer {doomed}'"
    credentials = shlex.quote(f"{quote_plus(dev.client_id)}:{quote_plus(dev.client_secret)}")
    revoke = f"curl -s -u {credentials} -d token={doomed} {dev.issuer}/revoke"
    wait = f"{OPAQUE_CACHE_TTL:g}"
    return [
        "# an opaque token, checked by introspection at the dev issuer (RFC 7662)",
        "# -> 200; the upstream sees x-user-id: dave",
        f"curl -i {url} -H 'Authorization: Bearer {opaque}'",
        f"# revoked at the dev issuer: passes while its answer is cached ({wait} s),",
        '# -> 200, then 200, then 401 error="invalid_token" "token not active"',
        f"{code} {url} {auth}; {revoke}; {code} {url} {auth}; sleep {wait}; curl -i {url} {auth}",
    ]


async def run(*, port: int = 10000, alg: str = "EdDSA", rotate_every: float = 60.0) -> int:
    dev = issuer.DevIssuer(
        "http://127.0.0.1", alg=alg, rotate_every=rotate_every or None,
        token_ttl=TOKEN_TTL,
    )  # fmt: skip
    iss_runner, iss_port = await httpsite.start(issuer.app(dev), "127.0.0.1", 0)
    dev.issuer = f"http://127.0.0.1:{iss_port}"  # known only once bound

    up_app = web.Application()
    up_app.router.add_route("*", "/{tail:.*}", _upstream)
    up_runner, up_port = await httpsite.start(up_app, "127.0.0.1", 0)

    client_dir = Path(tempfile.mkdtemp(prefix="extauthz-demo-client-"))
    secret_file = client_dir / "introspection-secret"
    secret_file.write_text(dev.client_secret + "\n")
    secret_file.chmod(0o600)
    cfg = demo_config(dev.issuer, rotate_every or 60.0, secret_file, dev.client_id)
    server = ServingProcess(cfg)
    await server.start()
    deadline = time.monotonic() + 15
    while not server.ready:
        if time.monotonic() > deadline:
            print("extauthz did not become ready (cannot fetch the dev issuer's keys)")
            return 1
        await asyncio.sleep(0.05)

    envoy = None
    try:
        envoy = await asyncio.to_thread(_start_envoy, port, server.grpc_port, up_port)
    except (ImportError, OSError) as exc:
        print(f"Envoy not available ({exc.__class__.__name__}): pip install 'extauthz[demo]'")
    except Exception as exc:  # EnvoyStartError: show why, keep the rest running
        print(f"Envoy failed to start: {exc}")

    minted_at = time.time()
    valid = dev.mint(sub="alice", aud=AUDIENCE, scope="read")
    admin_token = dev.mint(sub="root", aud=AUDIENCE, scope="read admin")
    now = int(time.time())
    expired = dev.mint(sub="alice", aud=AUDIENCE, claims={"iat": now - 900, "exp": now - 600})
    wrong_aud = dev.mint(sub="alice", aud="someone-else")
    base = f"http://127.0.0.1:{envoy.port}" if envoy else None
    lines = [
        "",
        "extauthz demo is running (Ctrl-C stops everything):",
        f"  dev issuer   {dev.issuer}  ({alg}, rotating every {rotate_every:g}s)",
        f"  extauthz     gRPC 127.0.0.1:{server.grpc_port}, "
        f"admin http://127.0.0.1:{server.admin_port}/metrics",
        f"  upstream     http://127.0.0.1:{up_port}",
    ]
    if base:
        auth = "-H 'Authorization: Bearer {}'"
        examples = [
            ("valid token -> 200; the upstream sees x-user-id: alice", "/hello", valid),
            ('expired token -> 401 error="invalid_token" "token expired"', "/hello", expired),
            ('no token -> 401 WWW-Authenticate: Bearer realm="extauthz"', "/hello", None),
            ("wrong audience -> 401", "/hello", wrong_aud),
            ('token without the admin scope -> 403 "insufficient_scope"', "/admin", valid),
            ("token with the admin scope -> 200", "/admin", admin_token),
            ("public path, no token -> 200", "/public/info", None),
        ]
        validity = _validity(int(minted_at + dev.token_ttl), minted_at)
        lines += [
            f"  envoy        {base}",
            "",
            f"# tokens below are {validity} (the expired one excepted);",
            "# the last command mints a fresh one whenever you run it",
        ]
        for comment, path, token in examples:
            lines.append(f"# {comment}")
            lines.append(f"curl -i {base}{path}" + (" " + auth.format(token) if token else ""))
        mint = f"{extauthz_command()} token --issuer {shlex.quote(dev.issuer)} --sub bob"
        lines += [
            "# a fresh token from the dev issuer (its signing key rotates) -> 200",
            f'curl -i {base}/hello -H "Authorization: Bearer $({mint} --aud {AUDIENCE})"',
            *_dpop_examples(dev, base, client_dir / "dpop-key.json"),
            *_opaque_examples(dev, base),
        ]
    print("\n".join(lines), flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        print("\nstopping…", flush=True)
        if envoy is not None:
            await asyncio.to_thread(envoy.stop)
            shutil.rmtree(envoy.workdir, ignore_errors=True)
        shutil.rmtree(client_dir, ignore_errors=True)
        await server.stop(grace=1.0)
        for runner in (up_runner, iss_runner):
            with contextlib.suppress(Exception):
                await runner.cleanup()
    return 0
