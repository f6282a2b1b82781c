"""When to renew a certificate.

A certificate is renewed once a fraction of its lifetime has passed (2/3 by
default, the same rule kubelet and cert-manager use), so a renewal that fails
has the remaining third of the lifetime to be retried before anything breaks.
The lifetime is the certificate's own notBefore..notAfter, so the 5-minute
backdating and a leaf capped at its CA's expiry are both accounted for.
"""

from __future__ import annotations

import math
from datetime import datetime

from certs._material import load_cert, utc
from certs.errors import PKIError

DEFAULT_RENEW_FRACTION = 2 / 3


def _check_fraction(renew_fraction: float) -> float:
    if (
        isinstance(renew_fraction, bool)
        or not isinstance(renew_fraction, int | float)
        or not math.isfinite(renew_fraction)
        or not 0 < renew_fraction <= 1
    ):
        raise PKIError(
            f"renew_fraction {renew_fraction!r} must be a number in (0, 1]: "
            "e.g. 2/3 renews after two thirds of the lifetime"
        )
    return float(renew_fraction)


def renew_at(cert_pem: bytes, *, renew_fraction: float = DEFAULT_RENEW_FRACTION) -> datetime:
    """The moment (UTC) at which `renew_fraction` of the certificate's lifetime has passed."""
    fraction = _check_fraction(renew_fraction)
    cert = load_cert(cert_pem)
    start = cert.not_valid_before_utc
    lifetime = cert.not_valid_after_utc - start
    return start + lifetime * fraction


def renewal_due(
    cert_pem: bytes, *, now: datetime, renew_fraction: float = DEFAULT_RENEW_FRACTION
) -> bool:
    """True once `renew_fraction` of the lifetime has passed, or the certificate expired."""
    now = utc(now)
    return now >= renew_at(cert_pem, renew_fraction=renew_fraction)
