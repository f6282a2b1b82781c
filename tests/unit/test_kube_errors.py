"""Error mapping, Retry-After and ``with_retries``: pure, with a manual clock."""

from __future__ import annotations

import asyncio
import json
import logging
import random

import pytest

from vpnctl.kube import (
    CERTIFICATE_SIGNING_REQUEST,
    SECRET,
    TUNNEL,
    AlreadyExists,
    ApiError,
    Conflict,
    Forbidden,
    Gone,
    Invalid,
    ManualClock,
    NotFound,
    TooManyRequests,
    TransportError,
    with_retries,
)
from vpnctl.kube.errors import error_from_response, error_from_status_object, parse_retry_after
from vpnctl.kube.retry import backoff


def _status(code: int, reason: str, message: str, **details: object) -> bytes:
    body: dict[str, object] = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }
    if details:
        body["details"] = details
    return json.dumps(body).encode()


def _err(code: int, reason: str = "", message: str = "m", headers: dict[str, str] | None = None,
         **details: object) -> ApiError:  # fmt: skip
    return error_from_response(
        status=code,
        body=_status(code, reason, message, **details),
        headers=headers or {},
        method="PUT",
        path="/api/v1/namespaces/t/secrets/s",
    )


@pytest.mark.parametrize(
    ("code", "reason", "cls"),
    [
        (404, "NotFound", NotFound),
        (403, "Forbidden", Forbidden),
        (409, "Conflict", Conflict),
        (409, "AlreadyExists", AlreadyExists),
        (410, "Expired", Gone),
        (422, "Invalid", Invalid),
        (429, "TooManyRequests", TooManyRequests),
        (500, "InternalError", TransportError),
        (503, "ServiceUnavailable", TransportError),
        (418, "", ApiError),
    ],
)
def test_status_codes_map_to_error_classes(code: int, reason: str, cls: type[ApiError]) -> None:
    err = _err(code, reason)
    assert type(err) is cls
    assert err.status == code


def test_already_exists_is_not_a_conflict() -> None:
    # A create that finds the name taken must not be retried like a stale update.
    assert not isinstance(_err(409, "AlreadyExists"), Conflict)


def test_message_names_request_status_and_the_apiservers_words() -> None:
    err = _err(404, "NotFound", 'secrets "s" not found')
    assert str(err) == 'PUT /api/v1/namespaces/t/secrets/s: 404 NotFound: secrets "s" not found'


def test_invalid_carries_the_field_causes() -> None:
    err = _err(
        422,
        "Invalid",
        'Tunnel.vpnctl.io "t" is invalid',
        causes=[
            {"reason": "FieldValueInvalid", "message": "Invalid value: 0", "field": "spec.port"}
        ],
    )
    assert isinstance(err, Invalid)
    assert err.causes == ("spec.port: Invalid value: 0",)
    assert "spec.port: Invalid value: 0" in str(err)


def test_a_body_that_is_not_a_status_is_still_reported() -> None:
    err = error_from_response(
        status=502, body=b"<html>bad gateway</html>", headers={}, method="GET", path="/x"
    )
    assert isinstance(err, TransportError)
    assert "bad gateway" in str(err)


def test_retry_after_from_header_or_details() -> None:
    assert _err(429, headers={"Retry-After": "3"}).retry_after == 3.0  # type: ignore[attr-defined]
    from_details = _err(429, retryAfterSeconds=7)
    assert isinstance(from_details, TooManyRequests)
    assert from_details.retry_after == 7.0
    assert _err(429).retry_after is None  # type: ignore[attr-defined]


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    # HTTP-date form, relative to `now` (epoch seconds).
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0


def test_watch_error_event_410_is_gone() -> None:
    status = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}
    err = error_from_status_object(status, method="WATCH", path="/api/v1/secrets")
    assert isinstance(err, Gone)
    assert "too old" in str(err)


def test_resource_paths() -> None:
    assert SECRET.path(namespace="t", name="s") == "/api/v1/namespaces/t/secrets/s"
    assert SECRET.path() == "/api/v1/secrets"
    assert TUNNEL.path(namespace="t", name="a", subresource="status") == (
        "/apis/vpnctl.io/v1alpha1/namespaces/t/tunnels/a/status"
    )
    assert CERTIFICATE_SIGNING_REQUEST.path(name="c", subresource="approval") == (
        "/apis/certificates.k8s.io/v1/certificatesigningrequests/c/approval"
    )
    assert TUNNEL.label == "tunnels.vpnctl.io"
    assert SECRET.api_version == "v1"
    with pytest.raises(ValueError, match="cluster-scoped"):
        CERTIFICATE_SIGNING_REQUEST.path(namespace="t", name="c")
    with pytest.raises(ValueError, match="namespaced; pass its namespace"):
        SECRET.path(name="s")


# --- with_retries ---------------------------------------------------------------------------


class Script:
    """An operation that fails with the given errors, then returns "ok"."""

    def __init__(self, *errors: ApiError) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def _transport() -> TransportError:
    return TransportError("ConnectionResetError: reset by peer", method="GET", path="/x")


async def test_transport_errors_are_retried_with_capped_jittered_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock(autoadvance=True)
    op = Script(_transport(), _transport(), _transport())
    with caplog.at_level(logging.WARNING):
        assert await with_retries(op, rng=random.Random(7), clock=clock, base=0.5, cap=8) == "ok"
    assert op.calls == 4
    assert len(clock.sleeps) == 3
    for attempt, slept in enumerate(clock.sleeps, start=1):
        ceiling = min(8.0, 0.5 * 2 ** (attempt - 1))
        assert ceiling / 2 <= slept <= ceiling
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("attempt #1/4 failed; will retry in ")
    assert lines[0].endswith("s: GET /x: ConnectionResetError: reset by peer")
    assert lines[2].startswith("attempt #3/4 failed; will retry in ")


async def test_429_waits_what_retry_after_says() -> None:
    clock = ManualClock(autoadvance=True)
    throttled = _err(429, "TooManyRequests", "slow down", headers={"Retry-After": "5"})
    op = Script(throttled)
    assert await with_retries(op, rng=random.Random(1), clock=clock, cap=1.0) == "ok"
    assert clock.sleeps == [5.0]  # not our own (capped at 1 s) guess


async def test_429_retry_after_is_capped() -> None:
    clock = ManualClock(autoadvance=True)
    op = Script(_err(429, headers={"Retry-After": "3600"}))
    await with_retries(op, rng=random.Random(1), clock=clock, max_retry_after=30)
    assert clock.sleeps == [30.0]


async def test_429_waits_on_the_clock_not_before() -> None:
    clock = ManualClock()
    op = Script(_err(429, headers={"Retry-After": "2"}))
    task = asyncio.ensure_future(with_retries(op, rng=random.Random(1), clock=clock))
    await asyncio.sleep(0)
    assert op.calls == 1
    clock.advance(1.9)
    await asyncio.sleep(0)
    assert op.calls == 1
    clock.advance(0.1)
    assert await task == "ok"
    assert op.calls == 2


async def test_permanent_errors_propagate_at_once() -> None:
    clock = ManualClock(autoadvance=True)
    for error in (_err(404, "NotFound"), _err(403, "Forbidden"), _err(422, "Invalid")):
        op = Script(error)
        with pytest.raises(type(error)):
            await with_retries(op, rng=random.Random(1), clock=clock)
        assert op.calls == 1
    assert clock.sleeps == []


async def test_conflicts_are_retried_only_when_the_operation_rereads() -> None:
    clock = ManualClock(autoadvance=True)
    op = Script(_err(409, "Conflict"))
    with pytest.raises(Conflict):
        await with_retries(op, rng=random.Random(1), clock=clock)
    assert op.calls == 1

    op = Script(_err(409, "Conflict"), _err(409, "Conflict"))
    assert await with_retries(op, rng=random.Random(1), clock=clock, conflicts=True) == "ok"
    assert op.calls == 3

    op = Script(_err(409, "AlreadyExists"))
    with pytest.raises(AlreadyExists):
        await with_retries(op, rng=random.Random(1), clock=clock, conflicts=True)
    assert op.calls == 1


async def test_the_last_error_propagates_when_attempts_run_out() -> None:
    clock = ManualClock(autoadvance=True)
    op = Script(*[_transport() for _ in range(5)])
    with pytest.raises(TransportError):
        await with_retries(op, rng=random.Random(1), clock=clock, attempts=3)
    assert op.calls == 3
    assert len(clock.sleeps) == 2


def test_backoff_never_exceeds_the_cap() -> None:
    rng = random.Random(3)
    assert all(backoff(attempt=n, base=0.5, cap=8, rng=rng) <= 8 for n in range(1, 40))
