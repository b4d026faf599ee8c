"""The sink's failure policy (sinks/failure_policy.py): which step each failure leads to, and the backoff."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sinks.errors import IdentityConflict, SyncError, UnreadableEvent
from sinks.failure_policy import Action, Failure, FailurePolicy, Step, classify, reason, reason_label
from sinks.ghl.errors import GhlPermanentError, GhlRateLimited, GhlTransientError, error_for_status
from sinks.locations import LocationsError, UnknownLocation
from streams.plan.planner import PlanError

POLICY = FailurePolicy(retry_base_s=1.0, retry_max_s=60.0)


@pytest.mark.parametrize(("exc", "failure"), [
    (GhlTransientError("HTTP 503 from POST /contacts/upsert", status=503), Failure.TRANSIENT),
    (GhlRateLimited("HTTP 429 from GET /contacts/{contactId}"), Failure.TRANSIENT),
    (GhlPermanentError("HTTP 401 from POST /contacts/upsert", status=401), Failure.CREDENTIALS),
    (GhlPermanentError("HTTP 403 from POST /contacts/upsert", status=403), Failure.CREDENTIALS),
    (GhlPermanentError("HTTP 422 from POST /contacts/upsert", status=422), Failure.PERMANENT),
    (SyncError("no email or phone to identify the contact"), Failure.PERMANENT),
    (IdentityConflict("identity conflict: phone"), Failure.PERMANENT),
    (UnreadableEvent("unreadable normalized event"), Failure.PERMANENT),
    (PlanError("appointment event without an appointment"), Failure.PERMANENT),
    (UnknownLocation("x"), Failure.PERMANENT),
    (LocationsError("entry 3: no token"), Failure.PERMANENT),
    (KeyError("a bug"), Failure.UNEXPECTED),
    (RuntimeError("Kafka said no"), Failure.UNEXPECTED),
])
def test_classify(exc: BaseException, failure: Failure) -> None:
    assert classify(exc) is failure


def test_statuses_from_the_client_classify_as_the_client_raises_them() -> None:
    for status, failure in ((500, Failure.TRANSIENT), (502, Failure.TRANSIENT), (429, Failure.TRANSIENT),
                            (401, Failure.CREDENTIALS), (400, Failure.PERMANENT), (404, Failure.PERMANENT)):
        assert classify(error_for_status(status, "POST /contacts/upsert")) is failure, status


def test_transient_retries_with_backoff_or_holds_while_the_location_is_paused() -> None:
    exc = GhlTransientError("HTTP 503 from POST /contacts/upsert", status=503)
    assert POLICY.after(exc, failures=1, attempts=0, location_paused=False, jitter=1.0) == Step(Action.RETRY, 1.0)
    assert POLICY.after(exc, failures=3, attempts=0, location_paused=False, jitter=1.0) == Step(Action.RETRY, 4.0)
    assert POLICY.after(exc, failures=3, attempts=0, location_paused=True, jitter=1.0) == Step(Action.HOLD)


def test_transient_failures_are_never_dead_lettered() -> None:
    exc = GhlTransientError("timeout on POST /contacts/upsert")
    for failures in (1, 10, 100, 10_000):
        assert POLICY.after(exc, failures=failures, attempts=0, location_paused=False,
                            jitter=0.5).action is Action.RETRY


def test_credentials_are_checked_before_a_401_dead_letters() -> None:
    exc = GhlPermanentError("HTTP 401 from POST /contacts/upsert", status=401)
    assert POLICY.after(exc, failures=0, attempts=0, location_paused=False, jitter=0.0) == Step(
        Action.CHECK_CREDENTIALS, reason="HTTP 401 from POST /contacts/upsert")


def test_permanent_failures_dead_letter_at_once_with_their_reason() -> None:
    exc = GhlPermanentError("HTTP 422 from POST /contacts/upsert", status=422)
    assert POLICY.after(exc, failures=0, attempts=0, location_paused=False, jitter=0.0) == Step(
        Action.DEADLETTER, reason="HTTP 422 from POST /contacts/upsert")
    unknown = POLICY.after(UnknownLocation("Clinic of Jane Doe"), failures=0, attempts=0, location_paused=False,
                           jitter=0.0)
    assert unknown == Step(Action.DEADLETTER, reason="unknown location: no locations-file entry and no default")


def test_unexpected_errors_retry_then_dead_letter_by_type_only() -> None:
    exc = ValueError("jane@example.com is not allowed")  # a bug's message may hold PHI: never the reason
    steps = [POLICY.after(exc, failures=0, attempts=n, location_paused=False, jitter=0.0) for n in (1, 2, 3)]
    assert steps[:2] == [Step(Action.RETRY, 2.0), Step(Action.RETRY, 4.0)]
    assert steps[2] == Step(Action.DEADLETTER, reason="internal error: ValueError")
    assert "jane" not in reason(exc)


@given(failures=st.integers(min_value=0, max_value=10**6), jitter=st.floats(min_value=-1, max_value=2),
       base=st.floats(min_value=0.01, max_value=10), cap=st.floats(min_value=0.01, max_value=600))
def test_backoff_stays_within_half_and_all_of_its_capped_ceiling(failures: int, jitter: float, base: float,
                                                                 cap: float) -> None:
    policy = FailurePolicy(retry_base_s=base, retry_max_s=cap)
    delay = policy.backoff(failures, jitter)
    ceiling = min(cap, base * 2 ** min(max(failures, 1) - 1, 16))
    assert ceiling / 2 - 1e-9 <= delay <= ceiling + 1e-9
    assert delay <= cap + 1e-9


@given(st.integers(min_value=1, max_value=40))
def test_backoff_never_shrinks_as_failures_grow(failures: int) -> None:
    assert POLICY.backoff(failures + 1, 1.0) >= POLICY.backoff(failures, 1.0)


@given(st.text(max_size=500))
def test_reason_labels_are_bounded_and_stop_at_the_first_clause(text: str) -> None:
    label = reason_label(text)
    assert len(label) <= 60
    assert ":" not in label
    assert text.startswith(label)
