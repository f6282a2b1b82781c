"""Installing the node agent in a tenant cluster: apply what differs, in order.

Each desired object is read from a synced watch cache when one covers it (a resync with
nothing changed sends no request), else GET; only an object that ``needs_update`` is
written (server-side apply, field manager ``vpnctl``). Drift repair
(``tenant_repair``) uses the same reads and writes.

``result_for_error`` maps an API error to the AgentInstalled condition. It stays here
rather than in ``vpnctl.reconcile`` because it is about the kube layer's error classes
and builds the controller's ``TenantSideResult``.
"""

from __future__ import annotations

from vpnctl.controller.interfaces import TenantRef, TenantSideResult
from vpnctl.controller.tenant_state import TenantCalls, TenantState
from vpnctl.kube import (
    ApiError,
    Forbidden,
    KubeObject,
    TooManyRequests,
    TransportError,
    Unauthorized,
)
from vpnctl.reconcile.diff import needs_update
from vpnctl.reconcile.tenant_refs import ObjectRef, covers

FIELD_MANAGER = "vpnctl"

# Reasons of TenantSideResult (they become the AgentInstalled condition's reason).
REASON_INSTALLED = "Installed"
REASON_UNREACHABLE = "TenantUnreachable"  # transport trouble, 5xx, 429 after retries
REASON_KUBECONFIG_INVALID = "KubeconfigInvalid"  # the Secret's text is no usable kubeconfig
REASON_REFUSED = "TenantRefused"  # 401/403: the kubeconfig's credentials may not do it
REASON_APPLY_FAILED = "AgentApplyFailed"  # any other refusal (422, a terminating namespace)


def result_for_error(exc: ApiError, *, tenant: TenantRef, server: str) -> TenantSideResult:
    """The install state for an API error met while installing (retries already spent)."""
    secret = f"Secret {tenant.namespace}/{tenant.cluster}-kubeconfig"
    if isinstance(exc, TransportError | TooManyRequests):
        reason = REASON_UNREACHABLE
        message = (
            f"the tenant apiserver {server} of Cluster {tenant} did not answer ({exc}); "
            f"the agent is installed as soon as it does: check that the control plane "
            f"runs and that {secret} points at it"
        )
    elif isinstance(exc, Unauthorized | Forbidden):
        reason = REASON_REFUSED
        message = (
            f"the tenant apiserver {server} of Cluster {tenant} refused the credentials "
            f"of {secret} ({exc}); they need to be the cluster admin's, as Cluster API "
            "writes them"
        )
    else:
        reason = REASON_APPLY_FAILED
        message = (
            f"installing the node agent in the tenant cluster of Cluster {tenant} failed "
            f"({exc}); it is retried, and this clears once the tenant cluster accepts it"
        )
    return TenantSideResult(installed=False, reason=reason, message=message)


def cached(state: TenantState, ref: ObjectRef) -> tuple[bool, KubeObject | None]:
    """(known, object) from a synced watch cache that covers ``ref``."""
    for spec, watcher in state.watchers.items():
        if covers(spec, ref) and watcher.synced.is_set():
            return True, watcher.store.get(ref.name, ref.namespace or None)
    return False, None


async def read(calls: TenantCalls, state: TenantState, ref: ObjectRef) -> KubeObject | None:
    return await calls.retrying(lambda: state.kube.get(ref.res, ref.name, ref.namespace or None))


async def apply(calls: TenantCalls, state: TenantState, ref: ObjectRef, obj: KubeObject) -> None:
    await calls.retrying(lambda: state.kube.apply(ref.res, obj, field_manager=FIELD_MANAGER))


async def apply_all(calls: TenantCalls, state: TenantState) -> int:
    """Apply what differs, in order; returns how many objects were written."""
    written = 0
    for ref, obj in state.desired.items():
        known, cached_obj = cached(state, ref)
        if known and not needs_update(cached_obj, obj):
            continue
        live = await read(calls, state, ref)
        if not needs_update(live, obj):
            continue
        await apply(calls, state, ref, obj)
        written += 1
    return written
