"""The report's DPoP section: ``bench.dpop``'s table, how it was measured, and what it
means, every figure from the run."""
# ruff: noqa: RUF001  (typographic dashes and the multiplication sign are intended)

from __future__ import annotations

import statistics

from . import dpop
from .contenders import LOAD_CORES
from .results import Run

TITLE = "DPoP"


def section(heading: str, run: Run) -> list[str]:
    d = run.dpop
    if d is None:
        why = run.dpop_error or "it was not asked for"
        return [
            f"{heading}\n",
            f"*Not measured in this run:* {why}. `python -m bench --only dpop`, then "
            "`python -m bench.merge <workdir>/results.json`, measures it into this page; "
            "`python -m bench.dpop` alone prints the table.\n",
        ]
    return [
        f"{heading}\n",
        method(d),
        "All tokens are EdDSA, from one provider with `dpop: {}` (both schemes accepted). "
        "The DPoP cases send one DPoP-bound token (a token-cache hit after the first "
        "request, as when a client reuses its token) with a new proof per request, as "
        "RFC 9449 requires.\n",
        dpop.table(d.rows, d.missing) + "\n",
        meaning(d),
    ]


def method(d: dpop.Result) -> str:
    i = d.info
    redis = (f", redis-server {i.get('redis-server', '?')} (no persistence) on core "
             f"{LOAD_CORES}" if "dpop_redis" not in d.missing else "")  # fmt: skip
    return (
        "In one process, with no front door, no gRPC and no load generator: each case "
        f"sends {d.iterations:,} prepared requests through `Authorizer.check`, the call the "
        "gRPC door makes for every Check, and reads `time.process_time` around the loop "
        "(the process's CPU, the Redis client's included); "
        f"{d.repeat} run(s) per case, cases alternating (order reversed on odd runs), each "
        f"run with a new authorizer and replay store and {dpop.WARMUP} untimed requests "
        "first. Tokens and proofs are made before the clock starts; every decision must be "
        "an allow, or the run fails. The process ran on core "
        f"{i.get('cores', '?')}{redis}; cryptography {i.get('cryptography', '?')}, joserfc "
        f"{i.get('joserfc', '?')}, redis-py {i.get('redis-py', '?')}.\n"
    )


def _cpu(d: dpop.Result, name: str) -> float | None:
    row = d.row(name)
    return statistics.median(row.cpu_us) if row else None


def meaning(d: dpop.Result) -> str:
    text = (
        "**What it means.** A DPoP request is never answered from the allow memo that "
        "serves a repeated Bearer token: every proof is new (its own `jti`, signed for "
        "this request's method and URL), so each request costs a proof check (parse, "
        "import the proof's `jwk`, one signature verification) and a claim of its `jti` "
        "in the replay store, even though its access token is cached."
    )
    es, ed = _cpu(d, "dpop_memory"), _cpu(d, "dpop_memory_eddsa_proof")
    row = d.row("dpop_memory")
    if row is not None and es is not None:
        text += f" With an ES256 proof and the in-process store that was {es:,.0f} µs of CPU"
        if ed is not None:
            text += f" ({ed:,.0f} with an Ed25519 proof)"
        cached = dpop.ratio(row, d.row("bearer_cached"))
        fresh = dpop.ratio(row, d.row("bearer_verify"))
        if cached is not None and fresh is not None:
            text += (f", {cached:.0f}× a cached Bearer request and {fresh:.1f}× a Bearer "
                     "token verified afresh")  # fmt: skip
        text += ", on top of the front door's own cost (the gRPC and HTTP rows above)."
    redis = _cpu(d, "dpop_redis")
    if redis is not None and es is not None:
        text += (f" With `replay_store: redis://…` the Redis client added {redis - es:,.0f} "
                 "µs of CPU per request in extauthz (one `SET NX` through redis-py's asyncio "
                 "client).")  # fmt: skip
    return text + "\n"
