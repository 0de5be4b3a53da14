"""The async seam between the front doors and the pure decision core.

``check`` answers every request from in-memory key snapshots and cached introspection
answers; the waits it may do — the shared unknown-``kid`` refetch, the one introspection
call in flight for an opaque token, a shared replay store — are bounded by a budget and
by the caller's deadline. Any unexpected exception becomes a deny (fail closed), logged without the
token. ``record`` counts and logs the answer a front door actually sent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Mapping

from . import errors, logs, metrics, tracing
from .core.decision import Decision, NeedIntrospection, NeedKeys, refuse, unknown_key
from .core.introspected import Answer
from .core.policy import Policy
from .core.request import CONTEXT_RULE_KEY, AuthRequest
from .introspection import Introspector
from .keys.jwks import KeySet
from .keys.source import KeySource
from .replay import MemoryReplayStore, ReplayStore

_log = logs.get("extauthz.decision")

#: Longest a request waits for an unknown-kid refetch (also capped by its deadline).
UNKNOWN_KID_WAIT = 1.0
#: Ignored context_extensions keys named in the log (each once); a bound, since the
#: keys come from the proxy's configuration.
MAX_NAMED_EXTENSIONS = 64
_UNKNOWN_EXTENSIONS: set[str] = set()


@dataclasses.dataclass(frozen=True, slots=True)
class ReplayCheck:
    """An allow that waits for its DPoP proof's jti to be claimed in a shared store."""

    decision: Decision


#: What :meth:`Authorizer.first` may leave for :meth:`Authorizer.resolve`.
Pending = NeedKeys | NeedIntrospection | ReplayCheck


class Authorizer:
    def __init__(
        self,
        policy: Policy,
        sources: Mapping[str, KeySource],
        *,
        replay: ReplayStore | None = None,
        introspectors: Mapping[str, Introspector] | None = None,
        clock: Callable[[], float] = time.time,
        unknown_kid_wait: float = UNKNOWN_KID_WAIT,
    ) -> None:
        self.policy = policy
        self.sources = sources
        self.replay: ReplayStore = replay if replay is not None else MemoryReplayStore()
        self.introspectors: Mapping[str, Introspector] = introspectors or {}
        self._answers = self._cached_answer if self.introspectors else None
        self._clock = clock
        self._wait = unknown_kid_wait

    def _keys(self, provider: str) -> KeySet | None:
        return self.sources[provider].usable()

    def _cached_answer(self, provider: str, token: str, now: float) -> Answer | None:
        answer = self.introspectors[provider].cached(token, now)
        metrics.introspection_cache_counter(provider, "miss" if answer is None else "hit").inc()
        return answer

    @property
    def ready(self) -> bool:
        return all(s.usable() is not None for s in self.sources.values())

    def keys_changed(self, provider: str, old: KeySet, new: KeySet) -> None:
        """Revocation: tokens verified by a key that left the JWKS are verified afresh."""
        if old.thumbprints - new.thumbprints:
            dropped = self.policy.verifier.forget_keys(provider, new.thumbprints)
            _log.info("token_cache_purged", provider=provider, entries=dropped)

    async def check(self, req: AuthRequest, time_remaining: float | None = None) -> Decision:
        """The decision for one request; never raises (a bug becomes a logged 503 deny).

        ``time_remaining``: the caller's deadline, in seconds, if it has one."""
        result = self.first(req)
        if isinstance(result, Decision):
            return result
        return await self.resolve(req, result, self.budget(result, time_remaining))

    def budget(
        self, pending: Pending, time_remaining: float | None, kid_wait: float | None = None
    ) -> float:
        """Seconds :meth:`resolve` may wait for ``pending``: an introspection call its
        provider's ``timeout``, an unknown kid's refetch ``kid_wait`` (default
        ``unknown_kid_wait``); at most half the caller's deadline, when it has one."""
        if isinstance(pending, NeedIntrospection):
            budget = self.introspectors[pending.provider].settings.timeout
        else:
            budget = self._wait if kid_wait is None else kid_wait
        if time_remaining is not None:
            # Leave half the deadline for answering: a late allow is a timeout.
            budget = min(budget, max(0.0, time_remaining / 2))
        return budget

    def first(self, req: AuthRequest) -> Decision | Pending:
        """Decide without waiting: a decision, or what :meth:`resolve` must still wait
        for (an unknown kid's refetch, a DPoP proof's replay check in a shared store).
        Never raises (a bug becomes a logged 503 deny)."""
        try:
            if req.context_extensions:
                _note_extensions(req.context_extensions)
            result = self.policy.decide(req, self._keys, self._clock(), self._answers)
            if isinstance(result, Decision) and result.replay is not None:
                if not isinstance(self.replay, MemoryReplayStore):
                    return ReplayCheck(result)  # a shared store: ask it without blocking
                try:
                    return self._claimed(result, self.replay.claim_now(*result.replay))
                except errors.ReplayStoreDown:
                    return self._refused(result, errors.ReplayStoreUnavailable())
            return result
        except Exception:  # fail closed on bugs; never let an exception reach a proxy
            _log.exception("check_failed", request_id=req.request_id)
            return refuse(errors.InternalError())

    async def resolve(self, req: AuthRequest, pending: Pending, budget: float) -> Decision:
        """The decision once what :meth:`first` could not wait for is known: the shared
        unknown-kid refetch (waited for at most ``budget`` seconds), the replay store.
        Never raises."""
        try:
            if isinstance(pending, NeedIntrospection):
                result = await self._after_introspection(req, pending, budget)
                if result.replay is None:
                    return result
                pending = ReplayCheck(result)
            elif isinstance(pending, NeedKeys):
                result = await self._after_refetch(req, pending, budget)
                if result.replay is None:
                    return result
                pending = ReplayCheck(result)
            return await self._claim(pending.decision)
        except Exception:
            _log.exception("check_failed", request_id=req.request_id)
            return refuse(errors.InternalError())

    async def _claim(self, decision: Decision) -> Decision:
        assert decision.replay is not None
        try:
            fresh = await self.replay.claim(*decision.replay)
        except errors.ReplayStoreDown:
            return self._refused(decision, errors.ReplayStoreUnavailable())
        return self._claimed(decision, fresh)

    def _claimed(self, decision: Decision, fresh: bool) -> Decision:
        if fresh:
            return dataclasses.replace(decision, replay=None)
        return self._refused(decision, errors.InvalidDpopProof("DPoP proof replayed"))

    def _refused(self, decision: Decision, exc: errors.Denied) -> Decision:
        return self.policy.challenged(
            refuse(exc, rule=decision.rule, provider=decision.provider, kid=decision.kid,
                   iss=decision.iss, sub=decision.sub, dpop=True)
        )  # fmt: skip

    def record(
        self,
        req: AuthRequest,
        decision: Decision,
        status: int,
        started: float,
        *,
        front_door: str,
    ) -> None:
        """Metrics, the log line and the span (with tracing on) for the answer a front
        door sent: ``status`` is the HTTP status it stands for, ``started`` a
        ``time.perf_counter()`` reading taken when the request arrived, ``front_door``
        ``grpc`` or ``http``."""
        metrics.CHECK_DURATION.observe(time.perf_counter() - started)
        metrics.check_counter(
            "allow" if decision.allowed else "deny",
            decision.reason,
            decision.provider,
            decision.rule,
            front_door,
        ).inc()
        if decision.dpop:
            metrics.DPOP.labels(decision.provider, decision.reason).inc()
        if not decision.allowed or logs.debug_enabled():
            # Denials at info, allows at debug; bounded fields only (never a token).
            log = _log.debug if decision.allowed else _log.info
            log(
                "allowed" if decision.allowed else "denied",
                reason=decision.reason,
                # Our own words (fixed, or naming configured claims): never client data.
                description=decision.description or None,
                status=status,
                front_door=front_door,
                rule=decision.rule,
                provider=decision.provider,
                kid=decision.kid,
                iss=decision.iss,
                sub=decision.sub,
                request_id=req.request_id,
            )
        if tracing.spans is not None:
            tracing.spans.decision(req, decision, status, started, front_door)

    async def _after_refetch(self, req: AuthRequest, need: NeedKeys, budget: float) -> Decision:
        source = self.sources[need.provider]
        waiter = source.refetch_for_unknown_kid(need.kid)
        if waiter is None:  # rate-limited: the kid stays unknown until the next window
            return self.policy.challenged(unknown_key(need))
        try:
            await asyncio.wait_for(waiter, budget)
        except TimeoutError:
            return self.policy.challenged(unknown_key(need))
        result = self.policy.decide(req, self._keys, self._clock(), self._answers)
        if isinstance(result, NeedKeys):
            source.mark_absent(result.kid)
            return self.policy.challenged(unknown_key(result))
        if isinstance(result, NeedIntrospection):  # the same token takes the same path
            return refuse(errors.InternalError(), rule=need.rule)
        return result

    async def _after_introspection(
        self, req: AuthRequest, need: NeedIntrospection, budget: float
    ) -> Decision:
        try:
            introspector = self.introspectors[need.provider]
            answer = await introspector.introspect(need.token, budget, req.headers)
        except errors.IntrospectionUnavailable as exc:
            iss = self.policy.providers[need.provider].config.issuer
            return refuse(exc, rule=need.rule, provider=need.provider, iss=iss, dpop=need.dpop)
        # Decided with the answer itself: one whose exp has passed is not cached, yet
        # this request may still pass within clock_skew.
        result = self.policy.decide(req, self._keys, self._clock(), lambda *_: answer)
        if not isinstance(result, Decision):  # the same token takes the same path
            return refuse(errors.InternalError(), rule=need.rule)
        return result


def _note_extensions(extensions: Mapping[str, str]) -> None:
    """Name each context_extensions key extauthz does not read, once per process: a
    route that sets ``required_scope: admin`` believes in a check that never runs."""
    for key in extensions:
        if (
            key != CONTEXT_RULE_KEY
            and key not in _UNKNOWN_EXTENSIONS
            and len(_UNKNOWN_EXTENSIONS) < MAX_NAMED_EXTENSIONS
        ):
            _UNKNOWN_EXTENSIONS.add(key)
            _log.warning(
                "context_extension_ignored",
                key=key,
                hint=f"extauthz reads only {CONTEXT_RULE_KEY!r} from context_extensions",
            )
