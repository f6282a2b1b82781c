"""Domain errors of reconciliation, in the two tiers the loop acts on.

The loop never has to guess what to do with an error:

- `TemporaryError`: the world is not ready yet (a Machine without a nodeRef, a Secret the
  PKI step has not written). Retry later with backoff; report nothing alarming.
- `PermanentError`: the input is wrong (overlapping CIDRs, a Cluster without
  clusterNetwork, CIDR text that does not parse). Retrying cannot help. Report a status
  condition and an Event, then wait for the spec to change (a new generation).

Transport errors (HTTP 409/429/5xx) are the kube layer's own, and never reach this module.

Every error carries `reason`, a CamelCase word for the condition's `reason` field, and a
message a person reads: what was wrong, where, and what to do.
"""

from __future__ import annotations

import re

_CAMEL_CASE = re.compile(r"[A-Z][A-Za-z0-9]*")


class ReconcileError(Exception):
    """Base of the domain errors; `str(error)` is the message."""

    reason: str
    message: str

    def __init__(self, *, reason: str, message: str) -> None:
        if not _CAMEL_CASE.fullmatch(reason):
            raise ValueError(f"condition reason {reason!r} must be CamelCase, e.g. CIDROverlap")
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reason={self.reason!r}, message={self.message!r})"


class TemporaryError(ReconcileError):
    """Not ready yet; retry later. Nothing for a person to fix."""


class PermanentError(ReconcileError):
    """The input is wrong; report a condition and wait for the spec to change."""
