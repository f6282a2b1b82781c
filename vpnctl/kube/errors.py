"""What can go wrong talking to an apiserver, as exceptions the layers above can decide on.

The split follows the two questions a caller has: *may I try again?* and *what do I tell
a person?* Transport trouble (refused, reset, timed out, 5xx) and 429 are worth retrying
with backoff; 409 Conflict is worth retrying after a fresh read; everything else is
permanent for this request and is reported as it is. The message of every error names
the request (method and path) and the apiserver's own words, so a log line is enough to
act on.

Nothing here imports kubernetes_asyncio: errors are built from status code, headers and
body, so they can be tested (and faked) without a client.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Mapping
from typing import Any


class KubeconfigError(Exception):
    """A kubeconfig (file, text or Secret) that can't be used; the message says which
    and what is wrong with it."""


class ApiError(Exception):
    """A request the apiserver (or the way to it) refused.

    ``status`` is the HTTP status (None when no response came), ``reason`` the
    apiserver's machine-readable reason (``NotFound``, ``AlreadyExists``, ...).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        reason: str = "",
        method: str = "",
        path: str = "",
        body: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.reason = reason
        self.method = method
        self.path = path
        self.body: Mapping[str, Any] = body or {}

    def __str__(self) -> str:
        where = f"{self.method} {self.path}".strip()
        code = f"{self.status} {self.reason}".strip() if self.status else self.reason
        head = ": ".join(part for part in (where, code) if part)
        return f"{head}: {self.message}" if head else self.message


class BadRequest(ApiError):
    """400: the request itself is malformed (a bug on our side, not retryable)."""


class Unauthorized(ApiError):
    """401: our credentials were not accepted (expired token or certificate?)."""


class Forbidden(ApiError):
    """403: authenticated, but RBAC (or admission) says no."""


class NotFound(ApiError):
    """404: the object (or the resource type, e.g. a CRD not installed) doesn't exist."""


class Conflict(ApiError):
    """409 on an update or apply: someone wrote in between (stale resourceVersion) or
    another field manager owns a field. Retry after a fresh read."""


class AlreadyExists(ApiError):
    """409 on a create: the name is taken. Not a Conflict: retrying won't help."""


class Gone(ApiError):
    """410: the resourceVersion asked for is too old (compacted); relist."""


class Invalid(ApiError):
    """422: the object fails validation. ``causes`` are the apiserver's per-field
    messages, e.g. ``spec.port: Invalid value: 0: must be between 1 and 65535``."""

    def __init__(self, message: str, *, causes: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.causes = causes


class TooManyRequests(ApiError):
    """429: the apiserver (priority and fairness) asks us to slow down for
    ``retry_after`` seconds (None if it didn't say)."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class TransportError(ApiError):
    """No usable answer: connection refused or reset, a timeout, a broken stream, or a
    5xx from the apiserver. Worth retrying with backoff."""


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date.

    Returns None for a missing or unreadable value (the caller falls back to its own
    backoff). ``now`` (epoch seconds) is only used for the HTTP-date form.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def _status_body(raw: bytes | str) -> dict[str, Any]:
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    try:
        parsed = json.loads(text)
    except ValueError:
        return {"message": text.strip()[:500]}
    return parsed if isinstance(parsed, dict) else {"message": text.strip()[:500]}


def _causes(body: Mapping[str, Any]) -> tuple[str, ...]:
    details = body.get("details")
    if not isinstance(details, Mapping):
        return ()
    causes = details.get("causes")
    if not isinstance(causes, list):
        return ()
    out: list[str] = []
    for cause in causes:
        if not isinstance(cause, Mapping):
            continue
        field = cause.get("field")
        message = cause.get("message") or cause.get("reason") or ""
        out.append(f"{field}: {message}" if field else str(message))
    return tuple(out)


def error_from_response(
    *,
    status: int,
    body: bytes | str,
    headers: Mapping[str, str],
    method: str,
    path: str,
) -> ApiError:
    """The ApiError subclass for a non-2xx answer. ``body`` is usually a metav1.Status."""
    parsed = _status_body(body)
    reason = str(parsed.get("reason") or "")
    message = str(parsed.get("message") or f"HTTP {status} with no message")
    common: dict[str, Any] = {
        "status": status,
        "reason": reason,
        "method": method,
        "path": path,
        "body": parsed,
    }
    if status == 400:
        return BadRequest(message, **common)
    if status == 401:
        return Unauthorized(message, **common)
    if status == 403:
        return Forbidden(message, **common)
    if status == 404:
        return NotFound(message, **common)
    if status == 409:
        if reason == "AlreadyExists":
            return AlreadyExists(message, **common)
        return Conflict(message, **common)
    if status == 410:
        return Gone(message, **common)
    if status == 422:
        causes = _causes(parsed)
        if causes and not all(c in message for c in causes):
            message = f"{message} ({'; '.join(causes)})"
        return Invalid(message, causes=causes, **common)
    if status == 429:
        retry_after = parse_retry_after(headers.get("Retry-After"))
        if retry_after is None:
            details = parsed.get("details")
            if isinstance(details, Mapping) and isinstance(
                details.get("retryAfterSeconds"), int | float
            ):
                retry_after = float(details["retryAfterSeconds"])
        return TooManyRequests(message, retry_after=retry_after, **common)
    if status >= 500:
        return TransportError(message, **common)
    return ApiError(message, **common)


def error_from_status_object(status_obj: Mapping[str, Any], *, method: str, path: str) -> ApiError:
    """The ApiError for a metav1.Status that arrived as a watch ERROR event."""
    code = status_obj.get("code")
    return error_from_response(
        status=code if isinstance(code, int) else 500,
        body=json.dumps(dict(status_obj)),
        headers={},
        method=method,
        path=path,
    )
