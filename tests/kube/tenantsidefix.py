"""One way to build the real ``KubeTenantSide`` for tests against a real apiserver.

Four test modules built it with the same settings (seeded rng, the system clock, short
request timeouts and backoff so a test sees retries within seconds); they differ only in
the node certificate lifetime, the budgets, the issuance recorder and the registry.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import random
from collections.abc import AsyncIterator

from prometheus_client import CollectorRegistry

from vpnctl.controller.budgets import Budgets
from vpnctl.controller.csr_signer import IssuedRecorder
from vpnctl.controller.tenant_side import KubeTenantSide
from vpnctl.kube import SystemClock


@contextlib.asynccontextmanager
async def real_tenant_side(
    *,
    registry: CollectorRegistry | None = None,
    node_cert_lifetime: dt.timedelta = dt.timedelta(days=7),
    budgets: Budgets | None = None,
    recorder: IssuedRecorder | None = None,
) -> AsyncIterator[KubeTenantSide]:
    async with KubeTenantSide(
        registry=registry or CollectorRegistry(),
        clock=SystemClock(),
        rng=random.Random(7),
        node_cert_lifetime=node_cert_lifetime,
        request_timeout=5.0,
        backoff_cap=2.0,
        budgets=budgets,
        recorder=recorder,
    ) as side:
        yield side
