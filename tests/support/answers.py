"""What the gRPC front door's table makes of a decision or a refusal (for assertions
on the decision core, which knows no status codes)."""

from __future__ import annotations

from dataclasses import dataclass

from extauthz.core.decision import Decision, NeedIntrospection, NeedKeys, unknown_key
from extauthz.errors import Denied, DenyKind
from extauthz.frontdoor.grpc import ANSWERS


@dataclass(frozen=True)
class Wire:
    http_status: int
    grpc_code: int
    oauth_error: str | None


def wire(outcome: Decision | Denied) -> Wire:
    kind: DenyKind | None = outcome.kind if isinstance(outcome, Denied) else outcome.deny
    if kind is None:
        return Wire(200, 0, None)
    answer = ANSWERS[kind]
    return Wire(answer.http_status, answer.grpc_code, answer.oauth_error)


def settled(result: Decision | NeedKeys | NeedIntrospection) -> Decision:
    """A decide() result as the answer after a refetch that did not find the kid (these
    corpora have no opaque tokens: asking for an introspection is a test failure)."""
    assert not isinstance(result, NeedIntrospection), "no introspection is configured"
    return unknown_key(result) if isinstance(result, NeedKeys) else result
