"""Each case of a requests file through the server's own decision code — the
:class:`~extauthz.core.policy.Policy` of the configuration, asked as a front door asks
it — and its answer held against the case's expectations. No listener, no proxy, no
network: keys come from :mod:`.signing`, introspection answers from the case.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import quote

from .. import errors, logs
from ..config import DEFAULT_TOKEN_SOURCES, Config, TokenSource
from ..core.decision import Decision, NeedIntrospection, NeedKeys, refuse, unknown_key
from ..core.policy import Answers, Policy
from ..core.request import CONTEXT_RULE_KEY, AuthRequest
from ..errors import RequestsFileError
from ..frontdoor.grpc import http_status
from ..introspection import parse_answer
from . import cases
from .cases import Case, CaseFile, Minted
from .signing import Signers, provider_of, token_problems

#: Shown instead of a payload_header's value: the whole claim set is never printed.
CLAIM_SET = "(the claim set)"

_log = logs.get("extauthz.policytest")


@dataclass(frozen=True, slots=True)
class Failure:
    """One expectation that did not hold: ``key`` as in the file (``headers.x-user-id``);
    None means "not set", True "set to any value"."""

    key: str
    expected: str | int | bool | None
    got: str | int | None


@dataclass(frozen=True, slots=True)
class Outcome:
    case: Case
    decision: Decision
    status: int  # the HTTP status the front doors answer (frontdoor.grpc.ANSWERS)
    identity: tuple[tuple[str, str], ...]  # identity headers set; a payload as CLAIM_SET
    failures: tuple[Failure, ...]
    request: AuthRequest = field(repr=False)  # carries the token: never printed

    @property
    def passed(self) -> bool:
        return not self.failures


def run(cfg: Config, table: CaseFile, now: float) -> list[Outcome]:
    """Decide every case at ``now``. Raises RequestsFileError, before deciding anything,
    when a case asks what ``cfg`` cannot answer (an unknown provider, a header no
    provider sets…), and after, when an opaque token needs an answer the case lacks."""
    policy = Policy(cfg)
    problems = _problems(table, cfg, policy)
    if problems:
        raise RequestsFileError(cases.in_order(problems))
    signers = Signers(cfg, now)
    requests = [_request(case, cfg, signers) for case in table.cases]
    payloads = _payload_headers(cfg)
    outcomes: list[Outcome] = []
    for i, (case, req) in enumerate(zip(table.cases, requests, strict=True)):
        decision = _decide(policy, req, case, signers, now)
        if decision is None:
            problems.append(
                (f"cases.{i}.introspection", "required: the token goes to an introspection "
                 "endpoint, which test-config never calls; give its answer here, e.g. "
                 "{active: true, sub: alice, scope: read}")
            )  # fmt: skip
            continue
        status = http_status(decision)
        sets = dict(decision.set_headers)
        shown = {h: CLAIM_SET if h in payloads else v for h, v in sets.items()}
        identity = tuple((h, shown[h]) for h in policy.injected if h in sets)
        failures = _failures(case, decision, status, sets, shown)
        outcomes.append(Outcome(case, decision, status, identity, failures, req))
    if problems:
        raise RequestsFileError(cases.in_order(problems))
    return outcomes


def _payload_headers(cfg: Config) -> frozenset[str]:
    """The headers that carry a whole claim set: never printed."""
    return frozenset(p.payload_header for p in cfg.providers.values() if p.payload_header)


def _placement(case: Case, cfg: Config) -> TokenSource | None:
    """Where the case's token goes: ``token_in``, else the first source of the minted
    token's provider, else (a literal) ``Authorization: Bearer``; None for DPoP."""
    if isinstance(case.token, Minted):
        if case.token.dpop:
            return None
        return case.token_in or cfg.providers[provider_of(case.token, cfg)].token_sources[0]
    return case.token_in or DEFAULT_TOKEN_SOURCES[0]


def _problems(table: CaseFile, cfg: Config, policy: Policy) -> list[tuple[str, str]]:
    """Cases that ask what this configuration cannot answer, with their key paths."""
    found = cases.problems(table)
    injected = policy.injected
    payloads = _payload_headers(cfg)
    for i, case in enumerate(table.cases):
        where = f"cases.{i}"
        minting = token_problems(case.token, cfg) if isinstance(case.token, Minted) else []
        found += [(f"{where}.token.{key}", message) for key, message in minting]
        for key in case.context_extensions:
            if key != CONTEXT_RULE_KEY:
                found.append(
                    (f"{where}.context_extensions.{key}",
                     f"extauthz reads only {CONTEXT_RULE_KEY} (the name of a rule)")
                )  # fmt: skip
        for name, want in case.expect.headers.items():
            if name not in injected:
                known = ", ".join(injected) or "none"
                found.append(
                    (f"{where}.expect.headers.{name}",
                     "not a header this configuration sets (claims_to_headers and "
                     f"payload_header name: {known})")
                )  # fmt: skip
            elif name in payloads and isinstance(want, str):
                found.append(
                    (f"{where}.expect.headers.{name}",
                     "carries the whole claim set (with a random jti): expect true (set) "
                     "or null (not set)")
                )  # fmt: skip
        if not minting:  # a token that cannot be minted has no placement to check
            found += _placement_problems(case, cfg, where)
    return found


def _placement_problems(case: Case, cfg: Config, where: str) -> list[tuple[str, str]]:
    if case.token is None:
        return []
    source = _placement(case, cfg)
    taken = ["authorization", "dpop"] if source is None else [source.header or ""]
    return [
        (f"{where}.headers.{name}", "the token goes in this header: set one or the other")
        for name in taken
        if name in case.headers
    ]


def _request(case: Case, cfg: Config, signers: Signers) -> AuthRequest:
    headers = dict(case.headers)
    path = case.path
    spec = case.token
    token = signers.mint(provider_of(spec, cfg), spec) if isinstance(spec, Minted) else spec
    source = _placement(case, cfg)
    if token is not None:
        if source is None:
            headers["authorization"] = f"DPoP {token}"
        elif source.header is not None:
            headers[source.header] = (source.prefix or "") + token
        elif source.cookie is not None:
            jar = [c for c in (headers.get("cookie"), f"{source.cookie}={token}") if c]
            headers["cookie"] = "; ".join(jar)
        elif source.query is not None:
            sep = "&" if "?" in path else "?"
            path = f"{path}{sep}{quote(source.query, safe='')}={quote(token, safe='')}"
    req = AuthRequest(
        method=case.method,
        host=case.host,
        path=path,
        headers=MappingProxyType(headers),
        context_extensions=case.context_extensions,
    )
    if isinstance(spec, Minted) and spec.dpop and token is not None:
        headers["dpop"] = signers.proof(provider_of(spec, cfg), req, token)
        req = dataclasses.replace(req, headers=MappingProxyType(headers))
    return req


def _decide(
    policy: Policy, req: AuthRequest, case: Case, signers: Signers, now: float
) -> Decision | None:
    """The decision a serving process would reach, or None when the token needs an
    introspection answer that the case does not give."""
    answers: Answers | None = None
    if case.introspection is not None:
        answer = parse_answer(json.dumps(dict(case.introspection)).encode())
        answers = lambda *_: answer  # noqa: E731 - the one answer this case's token gets
    try:
        result = policy.decide(req, signers.keys, now, answers)
    except Exception:  # as the server: a bug is a 503 (fail closed), logged
        _log.exception("check_failed", case=case.name)
        return refuse(errors.InternalError())
    if isinstance(result, NeedKeys):  # a refetch would not find it: the keys are fixed
        return policy.challenged(unknown_key(result))
    if isinstance(result, NeedIntrospection):
        return None
    if result.replay is not None:  # every proof is new: its jti has not been seen
        return dataclasses.replace(result, replay=None)
    return result


def _failures(
    case: Case, decision: Decision, status: int, sets: Mapping[str, str], shown: Mapping[str, str]
) -> tuple[Failure, ...]:
    expect = case.expect
    found: list[Failure] = []
    if expect.status is not None and expect.status != status:
        found.append(Failure("status", expect.status, status))
    if expect.reason is not None and expect.reason != decision.reason:
        found.append(Failure("reason", expect.reason, decision.reason))
    if expect.rule is not None and expect.rule != decision.rule:
        found.append(Failure("rule", expect.rule, decision.rule or None))
    for name, want in expect.headers.items():
        got = sets.get(name)
        held = got is not None if want is True else got == want
        if not held:
            found.append(Failure(f"headers.{name}", want, shown.get(name)))
    return tuple(found)
