"""What ``extauthz test-config`` prints: a line per case, each failed expectation as
expected against got, and a summary; or the same as one JSON document. Never a token
(requests are not printed) nor a claim set (a payload_header shows as a placeholder).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .runner import Failure, Outcome


def _value(value: str | int | bool | None) -> str:
    if value is None:
        return "(not set)"
    if value is True:
        return "(set)"
    return str(value)


def _answer(outcome: Outcome) -> str:
    d = outcome.decision
    where = [f"rule {d.rule}" if d.rule else "no rule"]
    if d.provider:
        where.append(f"provider {d.provider}")
    line = f"{outcome.status} {d.reason} ({', '.join(where)})"
    if not d.allowed and d.description:
        line += f": {d.description}"
    if outcome.identity:
        line += "; sets " + ", ".join(f"{h}: {v}" for h, v in outcome.identity)
    return line


def _failure(failure: Failure) -> str:
    return f"{failure.key}: expected {_value(failure.expected)}, got {_value(failure.got)}"


def text(outcomes: Sequence[Outcome]) -> str:
    lines: list[str] = []
    for outcome in outcomes:
        verdict = "PASS" if outcome.passed else "FAIL"
        lines.append(f"{verdict}  {outcome.case.name}: {_answer(outcome)}")
        lines += [f"        {_failure(f)}" for f in outcome.failures]
    lines.append(summary(outcomes))
    return "\n".join(lines)


def summary(outcomes: Sequence[Outcome]) -> str:
    failed = sum(not o.passed for o in outcomes)
    cases = "1 case" if len(outcomes) == 1 else f"{len(outcomes)} cases"
    return f"{cases}: {len(outcomes) - failed} passed, {failed} failed"


def as_json(outcomes: Sequence[Outcome]) -> str:
    def one(outcome: Outcome) -> dict[str, Any]:
        d = outcome.decision
        return {
            "name": outcome.case.name,
            "passed": outcome.passed,
            "status": outcome.status,
            "reason": d.reason,
            "description": d.description or None,
            "rule": d.rule or None,
            "provider": d.provider or None,
            "headers": dict(outcome.identity),
            "failures": [
                {"key": f.key, "expected": f.expected, "got": f.got} for f in outcome.failures
            ],
        }

    failed = sum(not o.passed for o in outcomes)
    document = {
        "cases": [one(o) for o in outcomes],
        "passed": len(outcomes) - failed,
        "failed": failed,
    }
    return json.dumps(document, indent=2)
