"""What a failed attempt at an event leads to (pure): retry after a backoff, hold it while its location is paused,
ask whether the location's credentials are refused, or dead-letter it with a PHI-free reason.

The lanes act on the `Step` (sinks/agent.py); the table is docs/sync-engine.md, "Failures and pausing"."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sinks.errors import SyncError
from sinks.ghl.errors import GhlError, GhlPermanentError, GhlTransientError
from sinks.locations import LocationsError, UnknownLocation
from streams.plan.planner import PlanError

AUTH_STATUSES = frozenset({401, 403})  # credentials rejected: pause the location (after a location-level check)
UNEXPECTED_MAX_ATTEMPTS = 3  # an unexpected exception (a bug) is retried this often, then dead-lettered
_MAX_DOUBLINGS = 16  # 2**16 × the base is far above any cap: the exponent stops growing there
_REASON_LABEL_CHARS = 60


class Failure(enum.Enum):
    TRANSIENT = "transient"  # GoHighLevel unavailable, throttled or slow after the client's own retries
    CREDENTIALS = "credentials"  # 401/403: the location's token, or only this request, is refused
    PERMANENT = "permanent"  # the event can never succeed as it is
    UNEXPECTED = "unexpected"  # a bug or a Kafka error


class Action(enum.Enum):
    RETRY = "retry"  # wait `delay_s` (woken early when the location recovers), then try again
    HOLD = "hold"  # the location is paused: the next attempt waits for its breaker, not for a backoff
    CHECK_CREDENTIALS = "check-credentials"  # ask the location whether its token is refused
    DEADLETTER = "deadletter"


@dataclass(frozen=True, slots=True)
class Step:
    action: Action
    delay_s: float = 0.0
    reason: str = ""


def classify(exc: BaseException) -> Failure:
    if isinstance(exc, GhlTransientError):
        return Failure.TRANSIENT
    if isinstance(exc, GhlPermanentError):
        return Failure.CREDENTIALS if exc.status in AUTH_STATUSES else Failure.PERMANENT
    if isinstance(exc, (SyncError, PlanError, UnknownLocation, LocationsError)):
        return Failure.PERMANENT
    return Failure.UNEXPECTED


def reason(exc: BaseException) -> str:
    """The error's own PHI-free reason (for the dead letter and logs), or its type (never its message)."""
    if isinstance(exc, (GhlError, SyncError)):
        return exc.reason
    if isinstance(exc, PlanError):
        return f"plan: {exc}"
    if isinstance(exc, UnknownLocation):
        return "unknown location: no locations-file entry and no default"
    return type(exc).__name__


def reason_label(text: str) -> str:
    """A bounded metric label: the reason's first clause without ids ("HTTP 422 from POST /contacts/upsert")."""
    return text.split(":")[0][:_REASON_LABEL_CHARS]


@dataclass(frozen=True, slots=True)
class FailurePolicy:
    retry_base_s: float
    retry_max_s: float
    unexpected_max_attempts: int = UNEXPECTED_MAX_ATTEMPTS

    def ceiling(self, nth: int) -> float:
        """The capped exponential delay after the `nth` failure: base, 2×base, 4×base, … up to retry_max_s."""
        return min(self.retry_max_s, self.retry_base_s * 2.0 ** min(max(nth, 1) - 1, _MAX_DOUBLINGS))

    def backoff(self, failures: int, jitter: float) -> float:
        """The ceiling for the `failures`-th failure; `jitter` in [0, 1] spreads it over [½, 1]× of it."""
        return self.ceiling(failures) * (0.5 + min(max(jitter, 0.0), 1.0) / 2)

    def after(self, exc: BaseException, *, failures: int, attempts: int, location_paused: bool,
              jitter: float) -> Step:
        """The next step for an event whose attempt raised `exc`; `failures` counts its transient failures so far
        (this one included), `attempts` its unexpected ones (this one included)."""
        failure = classify(exc)
        if failure is Failure.TRANSIENT:
            if location_paused:
                return Step(Action.HOLD)
            return Step(Action.RETRY, self.backoff(failures, jitter))
        if failure is Failure.CREDENTIALS:
            return Step(Action.CHECK_CREDENTIALS, reason=reason(exc))
        if failure is Failure.PERMANENT:
            return Step(Action.DEADLETTER, reason=reason(exc))
        if attempts >= self.unexpected_max_attempts:
            return Step(Action.DEADLETTER, reason=f"internal error: {type(exc).__name__}")
        return Step(Action.RETRY, self.ceiling(attempts + 1))  # no jitter: a bug's retries need no spreading


__all__ = ["AUTH_STATUSES", "Action", "Failure", "FailurePolicy", "Step", "classify", "reason", "reason_label"]
