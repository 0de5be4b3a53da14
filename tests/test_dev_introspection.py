"""The dev issuer's opaque tokens, as a user meets them: `extauthz token --opaque`, then
`POST /introspect` (RFC 7662) and `POST /revoke` (RFC 7009) with HTTP Basic client
credentials (RFC 6749 §2.3.1), over real HTTP against an issuer on 127.0.0.1:0."""

from __future__ import annotations

import base64
import json
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from extauthz import cli
from extauthz.dev.client import basic_authorization
from extauthz.dev.issuer import DevIssuer
from tests.support.cli import fresh_shell_env
from tests.test_cli import IssuerThread, _stderr_lines

START = 1_700_000_000.0
OPAQUE = re.compile(r"^[A-Za-z0-9_-]{43,}$")  # base64url of at least 256 bits, no dots


class Clock:
    """The issuer's time, moved by the test (never a sleep)."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


class Issuer(IssuerThread):
    """The real issuer app on 127.0.0.1:0, around a DevIssuer the test configures."""

    def __init__(self, dev: DevIssuer) -> None:
        super().__init__()
        self.dev = dev

    def __enter__(self) -> Issuer:
        super().__enter__()
        return self

    def auth(self) -> str:
        return basic_authorization(self.dev.client_id, self.dev.client_secret)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def issuer(clock: Clock) -> Iterator[Issuer]:
    with Issuer(DevIssuer("http://127.0.0.1", token_ttl=300.0, clock=clock)) as running:
        yield running


@dataclass
class Answer:
    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        assert self.headers.get_content_type() == "application/json", self.headers
        return json.loads(self.body)


def call(
    url: str,
    *,
    form: dict[str, str] | None = None,
    data: dict[str, Any] | None = None,
    authorization: str | None = None,
) -> Answer:
    """GET, or POST a form (``form``) or a JSON body (``data``); any status is an answer."""
    headers = {"authorization": authorization} if authorization else {}
    body = None
    if form is not None:
        body = urllib.parse.urlencode(form).encode()
        headers["content-type"] = "application/x-www-form-urlencoded"
    elif data is not None:
        body = json.dumps(data).encode()
        headers["content-type"] = "application/json"
    request = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return Answer(resp.status, resp.headers, resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return Answer(exc.code, exc.headers, exc.read())


def mint(issuer: Issuer, **body: Any) -> str:
    answer = call(issuer.url + "/token", data={"opaque": True, **body})
    assert answer.status == 200, answer.body
    reply = answer.json()
    assert reply["token_type"] == "Bearer"
    token = reply["access_token"]
    assert isinstance(token, str) and OPAQUE.match(token), token
    return token


def introspect(issuer: Issuer, token: str, authorization: str | None = None) -> Any:
    answer = call(
        issuer.url + "/introspect",
        form={"token": token, "token_type_hint": "access_token"},
        authorization=authorization or issuer.auth(),
    )
    assert answer.status == 200, answer.body
    assert answer.headers["cache-control"] == "no-store"
    return answer.json()


def revoke(issuer: Issuer, token: str, authorization: str | None = None) -> None:
    answer = call(
        issuer.url + "/revoke", form={"token": token}, authorization=authorization or issuer.auth()
    )
    assert (answer.status, answer.body) == (200, b"")


# --- introspection ---------------------------------------------------------------


def test_an_opaque_token_introspects_active_with_its_claims(issuer: Issuer) -> None:
    token = mint(
        issuer, sub="alice", aud="api", scope="read write", ttl=120, claims={"role": "admin"}
    )
    assert "." not in token and len(base64.urlsafe_b64decode(token + "=")) >= 32
    reply = introspect(issuer, token)
    assert reply.pop("jti")
    assert reply == {
        "active": True,
        "iss": issuer.url,  # the issuer its JWTs and discovery name
        "sub": "alice",
        "aud": "api",
        "scope": "read write",
        "iat": int(START),
        "exp": int(START) + 120,
        "token_type": "Bearer",
        "client_id": "extauthz",
        "role": "admin",
    }


def test_an_opaque_token_without_scope_or_ttl_has_the_issuers_lifetime(issuer: Issuer) -> None:
    reply = introspect(issuer, mint(issuer, aud=["a", "b"]))
    assert reply["active"] is True and "scope" not in reply
    assert (reply["sub"], reply["aud"], reply["exp"]) == ("demo-user", ["a", "b"], START + 300)
    assert mint(issuer) != mint(issuer)


#: Authorization headers that are not the issuer's client, given its secret.
NOT_THE_CLIENT: dict[str, Callable[[str], str | None]] = {
    "none": lambda _: None,
    "wrong-secret": lambda _: basic_authorization("extauthz", "wrong"),
    "wrong-id": lambda secret: basic_authorization("someone", secret),
    "not-basic": lambda secret: f"Bearer {secret}",
    "not-base64": lambda _: "Basic not base64!",
    "no-colon": lambda secret: "Basic " + base64.b64encode(secret.encode()).decode(),
}


@pytest.mark.parametrize("path", ["/introspect", "/revoke"])
@pytest.mark.parametrize("who", NOT_THE_CLIENT)
def test_a_client_without_the_credentials_gets_401_invalid_client(
    issuer: Issuer, path: str, who: str
) -> None:
    token = mint(issuer, aud="api")
    header = NOT_THE_CLIENT[who](issuer.dev.client_secret)
    answer = call(issuer.url + path, form={"token": token}, authorization=header)
    assert answer.status == 401
    assert re.fullmatch(r'Basic realm="[^"]+"', answer.headers["www-authenticate"])
    assert answer.json() == {"error": "invalid_client"}
    assert answer.headers["cache-control"] == "no-store"
    assert introspect(issuer, token)["active"] is True  # a refused revocation revoked nothing


@pytest.mark.parametrize("path", ["/introspect", "/revoke"])
@pytest.mark.parametrize("form", [{}, {"token": ""}, {"token_type_hint": "access_token"}])
def test_a_request_without_a_token_is_400_invalid_request(
    issuer: Issuer, path: str, form: dict[str, str]
) -> None:
    answer = call(issuer.url + path, form=form, authorization=issuer.auth())
    assert answer.status == 400
    assert answer.json() == {"error": "invalid_request"}


def test_credentials_are_form_urlencoded_before_base64(clock: Clock) -> None:
    dev = DevIssuer("http://127.0.0.1", client_id="dev client", client_secret="a b:c%", clock=clock)
    with Issuer(dev) as issuer:
        token = mint(issuer, aud="api")
        # RFC 6749 §2.3.1 by hand: "dev client" -> dev+client, "a b:c%" -> a+b%3Ac%25.
        wire = "Basic " + base64.b64encode(b"dev+client:a+b%3Ac%25").decode()
        assert basic_authorization("dev client", "a b:c%") == wire
        assert introspect(issuer, token, wire)["client_id"] == "dev client"
        spaces_as_20 = "Basic " + base64.b64encode(b"dev%20client:a%20b%3Ac%25").decode()
        assert introspect(issuer, token, spaces_as_20)["active"] is True
        revoke(issuer, token, wire)
        assert introspect(issuer, token, wire) == {"active": False}


# --- inactive tokens -------------------------------------------------------------


def test_a_revoked_token_is_inactive_and_revoking_is_idempotent(issuer: Issuer) -> None:
    token, other = mint(issuer, aud="api"), mint(issuer, aud="api")
    revoke(issuer, token)
    assert introspect(issuer, token) == {"active": False}
    assert introspect(issuer, other)["active"] is True  # only that one
    revoke(issuer, token)  # again: still 200, empty
    revoke(issuer, "never-issued")
    assert introspect(issuer, "never-issued") == {"active": False}


def test_an_expired_token_is_inactive(issuer: Issuer, clock: Clock) -> None:
    token = mint(issuer, aud="api", ttl=60)
    clock.now = START + 59.5
    assert introspect(issuer, token)["active"] is True
    clock.now = START + 60  # exp: no longer active
    assert introspect(issuer, token) == {"active": False}


def test_a_jwt_from_the_same_issuer_is_inactive(issuer: Issuer) -> None:
    answer = call(issuer.url + "/token", data={"aud": "api"})
    jwt = answer.json()["access_token"]
    assert jwt.count(".") == 2
    assert introspect(issuer, jwt) == {"active": False}
    revoke(issuer, jwt)  # a JWT cannot be revoked here, and saying so is no error (RFC 7009)


# --- the store is bounded --------------------------------------------------------


def test_expired_tokens_are_dropped_and_the_store_has_a_cap(clock: Clock) -> None:
    dev = DevIssuer("http://127.0.0.1", clock=clock, max_opaque=3)
    assert DevIssuer("http://127.0.0.1").max_opaque == 100_000
    with Issuer(dev) as issuer:
        tokens = [mint(issuer, aud="api") for _ in range(5)]
        assert dev.opaque_tokens == 3
        assert [introspect(issuer, t)["active"] for t in tokens] == [False, False, True, True, True]

        short = mint(issuer, aud="api", ttl=10)  # the oldest goes: still 3
        assert dev.opaque_tokens == 3
        clock.now = START + 11
        dev.tick()
        assert dev.opaque_tokens == 2  # the expired one is gone, not just inactive
        assert introspect(issuer, short) == {"active": False}
        clock.now = START + 301
        mint(issuer, aud="api")  # a mint sweeps too
        assert dev.opaque_tokens == 1


def test_the_store_keeps_digests_not_tokens(issuer: Issuer) -> None:
    token = mint(issuer, aud="api")
    assert token not in repr(vars(issuer.dev))
    assert token.encode() not in repr(vars(issuer.dev)).encode()


# --- discovery, the Python API -----------------------------------------------------


def test_discovery_names_both_endpoints(issuer: Issuer) -> None:
    doc = call(issuer.url + "/.well-known/openid-configuration").json()
    assert doc["introspection_endpoint"] == issuer.url + "/introspect"
    assert doc["revocation_endpoint"] == issuer.url + "/revoke"
    assert doc["issuer"] == issuer.url


def test_python_api_and_default_credentials(clock: Clock) -> None:
    dev = DevIssuer("https://dev.example", clock=clock, token_ttl=30)
    other = DevIssuer("https://dev.example")
    assert dev.client_id == "extauthz" and len(dev.client_secret) >= 32
    assert dev.client_secret != other.client_secret  # random per issuer
    token = dev.mint_opaque(sub="bob", scope="read")
    assert dev.introspect(token)["exp"] == START + 30
    dev.revoke(token)
    assert dev.introspect(token) == {"active": False}


# --- the command line ------------------------------------------------------------


def test_token_opaque_prints_a_token_that_introspects_active(
    issuer: Issuer, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["token", "--issuer", issuer.url, "--aud", "api", "--scope", "read", "--opaque"]
    code = cli.main([*args, "--sub", "carol", "--ttl", "90s", "--claims", '{"tier": 2}'])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    token = out.splitlines()[-1]
    assert out == token + "\n" and OPAQUE.match(token)
    reply = introspect(issuer, token)
    assert (reply["active"], reply["sub"], reply["aud"], reply["scope"]) == (
        True,
        "carol",
        "api",
        "read",
    )
    assert (reply["exp"] - reply["iat"], reply["tier"]) == (90, 2)


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--dpop", "{dir}/k.jwk"], "--dpop"),
        (["--cnf-cert", "{dir}/c.pem"], "--cnf-cert"),
        (["--typ", "at+jwt"], "--typ"),
        (["--typ", "JWT", "--dpop", "{dir}/k.jwk"], "--dpop or --typ"),
    ],
)
def test_token_opaque_with_a_binding_or_typ_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], named: str
) -> None:
    args = ["token", "--issuer", "http://127.0.0.1:9", "--aud", "a", "--opaque"]
    code = cli.main(args + [a.format(dir=tmp_path) for a in extra])
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --opaque cannot go with {named}:"), err
    assert list(tmp_path.iterdir()) == []  # no DPoP key was written


def test_the_issuer_refuses_an_opaque_token_with_cnf_or_typ(issuer: Issuer) -> None:
    for body in ({"cnf": {"jkt": "x"}}, {"typ": "JWT"}, {"opaque": "yes"}):
        answer = call(issuer.url + "/token", data={"opaque": True, **body})
        assert answer.status == 400, body
        assert "opaque" in answer.json()["error"]


@pytest.mark.skipif(shutil.which("curl") is None, reason="runs the printed curl commands")
def test_issuer_banner_prints_credentials_and_curl_lines_that_work(tmp_path: Path) -> None:
    secret = "a b:c%"
    proc = subprocess.Popen(
        [sys.executable, "-m", "extauthz", "issuer", "--listen", "127.0.0.1:0",
         "--client-id", "dev client", "--client-secret", secret],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        start_new_session=True,
    )  # fmt: skip
    try:
        lines = _stderr_lines(proc)
        deadline = time.monotonic() + 30
        banner: list[str] = []
        while not (banner and banner[-1].startswith("revoke a token:")):
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            assert line is not None, f"the issuer exited: {''.join(banner)}"
            banner.append(line.rstrip("\n"))
        first = re.match(r"dev issuer (http://127\.0\.0\.1:\d+) ", banner[0])
        assert first, banner
        url = first.group(1)
        assert banner[2:] == [
            f"opaque tokens (token --opaque): introspection (RFC 7662) at {url}/introspect, "
            f"revocation (RFC 7009) at {url}/revoke",
            "client credentials (HTTP Basic): client_id 'dev client', client_secret 'a b:c%'",
            f"introspect a token: curl -u dev+client:a+b%3Ac%25 -d token=TOKEN {url}/introspect",
            f"revoke a token: curl -u dev+client:a+b%3Ac%25 -d token=TOKEN {url}/revoke",
        ]

        def paste(line: str, token: str) -> str:
            command = line.split(": ", 1)[1].replace("TOKEN", token)
            out = subprocess.run(
                ["bash", "-c", command + " -sS"], capture_output=True,
                text=True, env=fresh_shell_env(), timeout=30,
            )  # fmt: skip
            assert out.returncode == 0, out.stderr
            return out.stdout

        token = subprocess.run(
            [sys.executable, "-m", "extauthz", "token", "--issuer", url, "--aud", "api",
             "--opaque"], capture_output=True, text=True, timeout=60, check=True,
        ).stdout.splitlines()[-1]  # fmt: skip
        assert json.loads(paste(banner[4], token))["active"] is True
        assert paste(banner[5], token) == ""
        assert json.loads(paste(banner[4], token)) == {"active": False}

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        rest: list[str] = []
        while (line := lines.get(timeout=10)) is not None:
            rest.append(line)
        assert token not in "".join(banner + rest)  # never logged
        assert secret not in "".join(rest)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


def test_issuer_help_shows_the_credential_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["issuer", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--client-id ID" in text and "(default: extauthz)" in text
    assert "--client-secret SECRET" in text and "(default: a random one, printed at start)" in text
