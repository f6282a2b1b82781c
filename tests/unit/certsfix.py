"""The clock and the tenant CA that the certs tests (issuing, validating) share.

Import what a module uses (``from .certsfix import NOW, ca``); ``ca`` is module-scoped,
so each importing module makes its own CA once.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

import certs
from certs import Issued

NOW = datetime(2026, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)
YEAR = timedelta(days=365)


@pytest.fixture(scope="module")
def ca() -> Issued:
    return certs.new_ca(common_name="tenant-a-ca", now=NOW, lifetime=10 * YEAR)
