"""The command line speaks the user's words: one-line errors with the right exit code,
log options anywhere, defaults and environment variables in every --help, and
`extauthz token` / `extauthz issuer` against a real dev issuer."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import queue
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from extauthz import cli, httpsite, logs
from extauthz.dev import demo
from extauthz.dev.issuer import DevIssuer, app
from tests.support.cli import fresh_shell_env

CONFIG = """
providers:
  dev:
    issuer: "https://issuer.example"
    audiences: ["api"]
    jwks: {"keys": []}
"""
LEVELS = ["debug", "info", "warning", "error"]
ALL_ENV = ["EXTAUTHZ_CONFIG", "EXTAUTHZ_LOG_LEVEL", "EXTAUTHZ_LOG_FORMAT"]
LOG_ENV = ["EXTAUTHZ_LOG_LEVEL", "EXTAUTHZ_LOG_FORMAT"]


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    return path


def run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m extauthz ARGS`` in a tmp cwd, with the log variables unset unless given."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EXTAUTHZ_")}
    result = subprocess.run(
        [sys.executable, "-m", "extauthz", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**clean, "COLUMNS": "100", **env},
    )
    assert "Traceback" not in result.stderr, result.stderr
    assert "Traceback" not in result.stdout, result.stdout
    return result


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def claims_of(token: str, part: int = 1) -> dict[str, Any]:
    """A JWT's claims (part 1) or header (part 0), unverified."""
    data = token.split(".")[part]
    return dict(json.loads(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))))


class IssuerThread:
    """The real dev issuer app, served on 127.0.0.1:0 by aiohttp in a thread."""

    def __init__(self) -> None:
        self.dev = DevIssuer("http://127.0.0.1", alg="EdDSA", token_ttl=300.0)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> IssuerThread:
        self.thread.start()
        started = asyncio.run_coroutine_threadsafe(
            httpsite.start(app(self.dev), "127.0.0.1", 0), self.loop
        )
        self.runner, port = started.result(timeout=10)
        self.url = self.dev.issuer = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="module")
def dev_issuer() -> Iterator[IssuerThread]:
    with IssuerThread() as issuer:
        yield issuer


class Stub:
    """An HTTP server answering every POST with a fixed status and body."""

    def __init__(self, status: int, body: bytes) -> None:
        answer = (status, body)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                self.send_response(answer[0])
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(answer[1])))
                self.end_headers()
                self.wfile.write(answer[1])

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> Stub:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- token --claims ----------------------------------------------------------------


def test_claims_that_are_not_json_are_one_line_exit_2(tmp_path: Path) -> None:
    out = run(tmp_path, "token", "--issuer", "http://127.0.0.1:9", "--aud", "a", "--claims", "{bad")
    assert out.returncode == 2
    line = one_line(out.stderr)
    assert line.startswith("error: --claims is not valid JSON"), line
    assert out.stdout == ""


@pytest.mark.parametrize(
    ("claims", "kind"), [("[1, 2]", "an array"), ('"x"', "a string"), ("3", "a number")]
)
def test_claims_that_are_not_an_object_are_one_line_exit_2(
    tmp_path: Path, claims: str, kind: str
) -> None:
    out = run(tmp_path, "token", "--issuer", "http://127.0.0.1:9", "--aud", "a", "--claims", claims)
    assert out.returncode == 2
    line = one_line(out.stderr)
    assert "--claims must be a JSON object" in line and line.endswith(f"not {kind}"), line


# --- --log-level / --log-format ----------------------------------------------------


@pytest.mark.parametrize("before", [True, False], ids=["before", "after"])
def test_log_options_are_accepted_before_and_after_the_command(
    tmp_path: Path, config_file: Path, before: bool
) -> None:
    opts = ["--log-level", "debug", "--log-format", "json"]
    command = ["check-config", "--config", str(config_file)]
    out = run(tmp_path, *(opts + command if before else command + opts))
    assert out.returncode == 0, out.stderr
    assert f"{config_file}: OK" in out.stdout

    args = cli.parser().parse_args(opts + command if before else command + opts)
    assert (args.log_level, args.log_format) == ("debug", "json")


def test_log_option_after_the_command_wins_and_one_before_is_kept() -> None:
    p = cli.parser()
    both = p.parse_args(["--log-level", "error", "serve", "--log-level", "debug"])
    assert both.log_level == "debug"
    before = p.parse_args(["--log-level", "error", "--log-format", "text", "serve"])
    assert (before.log_level, before.log_format) == ("error", "text")
    neither = p.parse_args(["serve"])
    assert (neither.log_level, neither.log_format) == (None, None)


@pytest.mark.parametrize("before", [True, False], ids=["before", "after"])
@pytest.mark.parametrize(
    ("option", "value", "choices"),
    [
        ("--log-level", "loud", "'debug', 'info', 'warning', 'error'"),
        ("--log-format", "xml", "'json', 'text'"),
    ],
)
def test_unknown_log_values_are_refused_by_argparse(
    tmp_path: Path, config_file: Path, before: bool, option: str, value: str, choices: str
) -> None:
    command = ["check-config", "--config", str(config_file)]
    args = [option, value, *command] if before else [*command, option, value]
    out = run(tmp_path, *args)
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert f"argument {option}: invalid choice: '{value}' (choose from {choices})" in last
    assert out.stdout == ""


@pytest.mark.parametrize(
    ("variable", "value", "allowed"),
    [
        ("EXTAUTHZ_LOG_LEVEL", "loud", "debug, info, warning, error"),
        ("EXTAUTHZ_LOG_FORMAT", "xml", "json, text"),
    ],
)
def test_a_bad_log_environment_variable_is_an_error_naming_it(
    tmp_path: Path, config_file: Path, variable: str, value: str, allowed: str
) -> None:
    out = run(tmp_path, "check-config", "--config", str(config_file), **{variable: value})
    assert out.returncode == 2
    line = one_line(out.stderr)
    assert variable in line and repr(value) in line and allowed in line, line
    assert out.stdout == ""


def test_good_log_environment_values_work_in_any_case(tmp_path: Path, config_file: Path) -> None:
    out = run(
        tmp_path,
        "check-config",
        "--config",
        str(config_file),
        EXTAUTHZ_LOG_LEVEL="WARNING",
        EXTAUTHZ_LOG_FORMAT="Json",
    )
    assert out.returncode == 0, out.stderr


def test_an_option_overrides_the_environment_variable_unread(
    tmp_path: Path, config_file: Path
) -> None:
    out = run(
        tmp_path,
        "check-config",
        "--config",
        str(config_file),
        "--log-level",
        "info",
        EXTAUTHZ_LOG_LEVEL="loud",
    )
    assert out.returncode == 0, out.stderr


def test_log_settings_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXTAUTHZ_LOG_LEVEL", "error")
    monkeypatch.setenv("EXTAUTHZ_LOG_FORMAT", "json")
    assert logs.settings() == ("error", "json")
    assert logs.settings("debug", "text") == ("debug", "text")
    monkeypatch.delenv("EXTAUTHZ_LOG_LEVEL")
    monkeypatch.delenv("EXTAUTHZ_LOG_FORMAT")
    assert logs.settings(default_format="text") == ("info", "text")


def test_a_logger_writes_to_the_current_stderr_not_a_closed_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Logging set up while someone else's stream was sys.stderr (an embedding app, a
    test runner's capture) must not raise once that stream is closed and replaced."""
    import io

    borrowed = io.StringIO()
    monkeypatch.setattr(sys, "stderr", borrowed)
    logs.configure("info", "json")
    log = logs.get("extauthz.test.stream")
    log.info("first")
    borrowed.close()
    current = io.StringIO()
    monkeypatch.setattr(sys, "stderr", current)
    log.info("second")
    assert json.loads(current.getvalue())["event"] == "second"


# --- --help ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "env", "defaults"),
    [
        pytest.param([], ALL_ENV, ["(default: $EXTAUTHZ_LOG_LEVEL, else info)"], id="top"),
        pytest.param(["serve"], ALL_ENV, ["(default: $EXTAUTHZ_CONFIG)"], id="serve"),
        pytest.param(["check-config"], ALL_ENV, ["(default: $EXTAUTHZ_CONFIG)"], id="check"),
        pytest.param(["test-config"], LOG_ENV, ["(default: text)"], id="test-config"),
        pytest.param(
            ["demo"], LOG_ENV, ["(default: 10000)", "(default: EdDSA)", "(default: 60s)"], id="demo"
        ),
        pytest.param(
            ["issuer"],
            LOG_ENV,
            ["(default: 127.0.0.1:8000)", "(default: 5m)", "(default: never rotate)"],
            id="issuer",
        ),
        pytest.param(["token"], LOG_ENV, ["(default: demo-user)", "(default: none"], id="token"),
    ],
)
def test_every_help_shows_defaults_and_environment_variables(
    tmp_path: Path, command: list[str], env: list[str], defaults: list[str]
) -> None:
    out = run(tmp_path, *command, "--help")
    assert out.returncode == 0, out.stderr
    flat = " ".join(out.stdout.split())
    for text in defaults:
        assert text in flat, out.stdout
    assert "(default: $EXTAUTHZ_LOG_FORMAT, else" in flat, out.stdout
    assert "(default: None)" not in flat, out.stdout
    epilog = flat.split("environment variables:", 1)[1]
    for name in ALL_ENV:
        assert (name in epilog) == (name in env), (name, out.stdout)


# --- token -------------------------------------------------------------------------


def test_token_without_aud_warns_and_still_mints(tmp_path: Path, dev_issuer: IssuerThread) -> None:
    out = run(tmp_path, "token", "--issuer", dev_issuer.url, "--sub", "carol")
    assert out.returncode == 0, out.stderr
    warning = one_line(out.stderr)
    assert warning.startswith("warning: no --aud") and "refuse" in warning, warning
    token = out.stdout.splitlines()[-1]
    assert out.stdout == token + "\n"
    claims = claims_of(token)
    assert claims["sub"] == "carol" and "aud" not in claims
    assert claims["iss"] == dev_issuer.url


def test_token_with_aud_is_quiet(tmp_path: Path, dev_issuer: IssuerThread) -> None:
    out = run(
        tmp_path,
        "token",
        "--issuer",
        dev_issuer.url,
        "--aud",
        "demo-api",
        "--scope",
        "read",
        "--claims",
        '{"role": "admin"}',
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    claims = claims_of(out.stdout.strip())
    assert (claims["aud"], claims["scope"], claims["role"]) == ("demo-api", "read", "admin")


def test_token_from_an_unreachable_issuer_is_one_line_exit_1(tmp_path: Path) -> None:
    with socket.socket() as held:  # bound, never listening: connections are refused
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        out = run(tmp_path, "token", "--issuer", f"http://127.0.0.1:{port}", "--aud", "a")
    assert out.returncode == 1
    line = one_line(out.stderr)
    assert f"connection refused by 127.0.0.1:{port}" in line, line
    assert out.stdout == ""


def test_token_http_404_is_one_line_exit_1(tmp_path: Path, dev_issuer: IssuerThread) -> None:
    out = run(tmp_path, "token", "--issuer", f"{dev_issuer.url}/nope", "--aud", "a")
    assert out.returncode == 1
    line = one_line(out.stderr)
    assert f"POST {dev_issuer.url}/nope/token answered HTTP 404 Not Found" in line, line


def test_token_http_error_carries_the_issuers_reason(tmp_path: Path) -> None:
    body = json.dumps({"error": "tokens are minted for loopback only"}).encode()
    with Stub(403, body) as stub:
        out = run(tmp_path, "token", "--issuer", stub.url, "--aud", "a")
    assert out.returncode == 1
    line = one_line(out.stderr)
    assert "HTTP 403 Forbidden: tokens are minted for loopback only" in line, line


def test_token_answer_without_a_token_is_one_line_exit_1(tmp_path: Path) -> None:
    with Stub(200, b"<html>hello</html>") as stub:
        out = run(tmp_path, "token", "--issuer", stub.url, "--aud", "a")
    assert out.returncode == 1
    assert "did not answer with a token" in one_line(out.stderr)


def test_token_issuer_must_be_a_url(tmp_path: Path) -> None:
    out = run(tmp_path, "token", "--issuer", "127.0.0.1:8000", "--aud", "a")
    assert out.returncode == 2
    assert "--issuer must be an http(s) URL" in one_line(out.stderr)


def test_token_main_in_process(
    capsys: pytest.CaptureFixture[str], dev_issuer: IssuerThread
) -> None:
    assert cli.cmd_token(cli.parser().parse_args(["token", "--issuer", dev_issuer.url])) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("warning: no --aud")
    assert claims_of(captured.out.strip())["iss"] == dev_issuer.url


# --- sender-constrained tokens: token --dpop / --cnf-cert / --typ, dpop-proof --------


def _main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_dpop_bound_token_and_its_proof_verify_together(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dev_issuer: IssuerThread
) -> None:
    from extauthz.config import DpopSettings
    from extauthz.core.dpop import verify_proof

    key = tmp_path / "client.jwk"
    code, out, err = _main(
        capsys, "token", "--issuer", dev_issuer.url, "--aud", "api", "--dpop", str(key)
    )
    assert code == 0, err
    assert key.stat().st_mode & 0o777 == 0o600  # a private key, written for its owner only
    token = out.strip()
    code, out, err = _main(
        capsys, "dpop-proof", "--key", str(key), "--method", "POST",
        "--url", "https://api.example/orders?page=2", "--token", token,
    )  # fmt: skip
    assert code == 0, err
    proof = verify_proof(out.strip(), token, method="POST", uri="https://api.example/orders",
                         settings=DpopSettings(), clock_skew=5, now=time.time())  # fmt: skip
    assert claims_of(token)["cnf"] == {"jkt": proof.jkt}
    assert claims_of(out.strip())["htu"] == "https://api.example/orders"  # no query
    # The same key file again: the same binding, not a new key.
    code, out, _ = _main(
        capsys, "token", "--issuer", dev_issuer.url, "--aud", "a", "--dpop", str(key)
    )
    assert code == 0 and claims_of(out.strip())["cnf"] == {"jkt": proof.jkt}


def test_token_cnf_cert_binds_the_certificate_and_typ_sets_the_header(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dev_issuer: IssuerThread
) -> None:
    from extauthz.core.request import ClientCert
    from tests.support.certs import CA

    pair = CA(tmp_path).issue("client", server=False)
    code, out, err = _main(
        capsys, "token", "--issuer", dev_issuer.url, "--aud", "api",
        "--cnf-cert", str(pair.cert), "--typ", "at+jwt",
    )  # fmt: skip
    assert code == 0, err
    token = out.strip()
    want = ClientCert(pem=pair.cert.read_text()).thumbprint()
    assert claims_of(token)["cnf"] == {"x5t#S256": want}
    assert claims_of(token, 0)["typ"] == "at+jwt"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["token", "--dpop", "{dir}/bad.jwk"], "error: --dpop {dir}/bad.jwk: not a private EC"),
        (["token", "--cnf-cert", "{dir}/bad.jwk"], "error: --cnf-cert {dir}/bad.jwk: not a PEM"),
        (["token", "--cnf-cert", "{dir}/absent.pem"], "No such file or directory"),
        (["dpop-proof", "--key", "{dir}/absent.jwk", "--url", "http://x/"],
         "no such key file (create one with 'extauthz token --dpop FILE')"),
        (["dpop-proof", "--key", "{dir}/bad.jwk", "--url", "http://x/"], "not a private EC"),
        (["dpop-proof", "--key", "{dir}/bad.jwk", "--url", "x/y"], "--url must be an http(s) URL"),
    ],
)  # fmt: skip
def test_unusable_key_and_certificate_files_are_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    (tmp_path / "bad.jwk").write_text('{"kty": "EC", "crv": "P-256"}')  # public at most
    full = [a.format(dir=tmp_path) for a in args]
    if full[0] == "token":
        full += ["--issuer", "http://127.0.0.1:9", "--aud", "a"]  # never reached
    code, out, err = _main(capsys, *full)
    assert (code, out) == (2, "")
    assert message.format(dir=tmp_path) in one_line(err), err
    assert not (tmp_path / "absent.jwk").exists()  # dpop-proof never invents a key


# --- issuer --listen HOST:0 --------------------------------------------------------


def _stderr_lines(proc: subprocess.Popen[str]) -> queue.Queue[str | None]:
    lines: queue.Queue[str | None] = queue.Queue()
    assert proc.stderr is not None
    stream = proc.stderr

    def pump() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def test_issuer_on_port_0_prints_and_uses_the_bound_port(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "extauthz", "issuer", "--listen", "127.0.0.1:0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        start_new_session=True,
    )
    try:
        lines = _stderr_lines(proc)
        deadline = time.monotonic() + 30
        url = None
        seen: list[str] = []
        while url is None:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            assert line is not None, f"the issuer exited: {''.join(seen)}"
            seen.append(line)
            if m := re.match(r"dev issuer (http://127\.0\.0\.1:(\d+)) ", line):
                url = m.group(1)
                assert int(m.group(2)) != 0
        out = run(tmp_path, "token", "--issuer", url, "--aud", "a")
        assert out.returncode == 0, out.stderr
        assert claims_of(out.stdout.strip())["iss"] == url

        # The same port again: one line, exit 1.
        busy = run(tmp_path, "issuer", "--listen", url.removeprefix("http://"))
        assert busy.returncode == 1
        assert "address already in use" in one_line(busy.stderr)

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


def test_issuer_listen_must_be_host_port(tmp_path: Path) -> None:
    out = run(tmp_path, "issuer", "--listen", "localhost")
    assert out.returncode == 2
    assert "argument --listen: expected HOST:PORT" in out.stderr


# --- the demo's token command ------------------------------------------------------


def test_demo_token_command_is_the_venv_script_by_absolute_path(tmp_path: Path) -> None:
    command = demo.extauthz_command()
    script = Path(sys.executable).parent / "extauthz"
    if script.exists():
        assert shlex.split(command) == [str(Path(os.path.abspath(script)))]
    env = fresh_shell_env()
    out = subprocess.run(
        ["bash", "-c", f"{command} --version"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("extauthz ")


def test_demo_token_command_falls_back_to_python_m(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An interpreter with no console script beside it, in a directory with a space.
    bindir = tmp_path / "no script here"
    bindir.mkdir()
    python = bindir / "python"
    python.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    python.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(python))
    command = demo.extauthz_command()
    assert shlex.split(command) == [str(python), "-m", "extauthz"]
    out = subprocess.run(
        ["bash", "-c", f"{command} --version"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=fresh_shell_env(),
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("extauthz ")


def test_demo_token_lifetime_keeps_rotation_working_and_the_jwks_small() -> None:
    """60-minute tokens, a key rotation every 60 s, a token minted in every rotation:
    every unexpired token's key stays published (until exp + the 60 s grace), and the
    JWKS stays at most 63 keys (about 9 KB for EdDSA; 27 KB for RS256, of 1 MiB)."""
    now = [1_000_000.0]
    dev = DevIssuer(
        "http://127.0.0.1:1", rotate_every=60.0, token_ttl=demo.TOKEN_TTL, clock=lambda: now[0]
    )
    minted: list[tuple[int, str]] = []
    most_keys = biggest = 0
    for _ in range(3 * 60 * 4):  # three hours in 15 s steps
        token = dev.mint(aud="a")
        minted.append((claims_of(token)["exp"], claims_of(token, 0)["kid"]))
        jwks = dev.jwks()
        kids = {k["kid"] for k in jwks["keys"]}
        for exp, kid in minted:
            if exp + 60 > now[0]:
                assert kid in kids
        most_keys = max(most_keys, len(kids))
        biggest = max(biggest, len(json.dumps(jwks)))
        now[0] += 15
    assert claims_of(dev.mint())["exp"] - now[0] == demo.TOKEN_TTL
    assert most_keys <= 63
    assert biggest < 10_000


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"cnf": {"jwk": {}}}, "cnf must be"),
        ({"cnf": {"jkt": 1}}, "cnf must be"),
        ({"cnf": "jkt"}, "cnf must be"),
        ({"typ": "JOSE"}, "typ must be JWT or at+jwt"),
    ],
    ids=["unknown-member", "not-a-string", "not-an-object", "typ"],
)
def test_the_dev_issuer_refuses_a_confirmation_it_cannot_mint(
    dev_issuer: IssuerThread, body: dict[str, Any], message: str
) -> None:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        dev_issuer.url + "/token", data=json.dumps(body).encode(), method="POST",
        headers={"content-type": "application/json"},
    )  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    assert info.value.code == 400
    assert message in json.load(info.value)["error"]
