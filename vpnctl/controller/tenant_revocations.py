"""The revocation passes of ``TenantReconciler`` (one of its parts, so
``controller/tenant_reconciler.py`` stays one job): the revocation book's step of every pass,
revocation while the spec is invalid, and the alarm for a CA Secret that disappeared.

Why these never wait for a valid spec or a reachable tenant: a deleted Machine must lose
its certificates and its CCD within seconds whatever else is wrong with its tenant, and
a lost CA must be a person's decision, not something vpnctl papers over.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

import certs
from vpnctl.controller.interfaces import TenantRef
from vpnctl.controller.revocation_store import (
    RevocationStep,
    RevocationStore,
    TunnelOwner,
    revoke_and_plan_crl,
)
from vpnctl.controller.tenant_api import meta_of
from vpnctl.controller.tenant_server import ServerConfig
from vpnctl.kube import CONFIG_MAP, SECRET, TUNNEL, KubeObject
from vpnctl.reconcile.errors import PermanentError
from vpnctl.reconcile.names import TenantNames
from vpnctl.reconcile.revocation_book import IssuedCert, server_config_after_revocation
from vpnctl.reconcile.secrets import read_ca_secret
from vpnctl.reconcile.tenant_spec import TenantSpec

_log = logging.getLogger(__name__)


def _config_bytes(config_map: Mapping[str, Any] | None, key: str) -> bytes | None:
    data = (config_map or {}).get("data") or {}
    value = data.get(key) if isinstance(data, Mapping) else None
    return value.encode("ascii", "replace") if isinstance(value, str) and value else None


class RevocationPasses(ServerConfig):
    """Part of ``TenantReconciler``: the revocation book's steps."""

    _book: RevocationStore

    async def _revocations(
        self,
        key: TenantRef,
        tunnel: KubeObject,
        ca: certs.Issued,
        server_cm: KubeObject | None,
        machines: Sequence[KubeObject],
        *,
        kept: Collection[str] = (),
        known: Sequence[tuple[str, str | None, int]] = (),
        revoke: Sequence[tuple[str, int]] = (),
        reported: Sequence[IssuedCert] = (),
        now: datetime,
    ) -> RevocationStep:
        """The revocation book's pass (controller/revocation_store.py) and what it tells."""
        owner = TunnelOwner(
            namespace=key.namespace, cluster=key.cluster, tunnel_uid=str(meta_of(tunnel)["uid"])
        )
        step = await revoke_and_plan_crl(
            self._book,
            tenant=key,
            owner=owner,
            ca=ca,
            current_crl_pem=_config_bytes(server_cm, "crl.pem"),
            machines=machines,
            kept=kept,
            reported=reported,
            known_serials=known,
            revoke=revoke,
            now=now,
            crl_lifetime=self._settings.crl_lifetime,
        )
        if step.created and server_cm is not None:
            await self._event(
                tunnel,
                "Warning",
                "RevocationsRecreated",
                f"ConfigMap {key.namespace}/{self._book.name(key)}, vpnctl's record of node "
                "certificates, was missing; it was re-created from the published CRL and the "
                "Tunnel's status. Certificates signed while it was missing may be unknown: "
                "restore it from a backup if you have one",
            )
        if step.crl.problem:
            await self._event(tunnel, "Warning", "CRLReissued", step.crl.problem)
        if step.newly_revoked:
            _log.info(
                "event=certificates_revoked tenant=%s serials=%s crl_number=%d",
                key,
                ",".join(format(s, "x") for s in sorted(step.newly_revoked)),
                step.crl.state.number,
            )
        return step

    async def _revoke_while_invalid(
        self,
        key: TenantRef,
        tunnel: KubeObject,
        machines: Sequence[KubeObject],
        *,
        kept: Collection[str] = (),
    ) -> None:
        """Revoke the certificates of Machines that are gone, and drop their clients from
        desired.json, while the spec cannot be planned (a tenant-wide error must not
        keep a deleted node connected)."""
        names = TenantNames.for_cluster(key.cluster)
        now = self._clock.now()
        try:
            ca = read_ca_secret(await self._get(SECRET, names.ca_secret, key.namespace), now=now)
            if ca is None:
                return  # no CA, nothing was ever signed
            server_cm = await self._get(CONFIG_MAP, names.server_config, key.namespace)
            step = await self._revocations(key, tunnel, ca, server_cm, machines, kept=kept, now=now)
        except PermanentError as exc:  # reported when the spec is valid again
            _log.warning(
                "event=revocation_skipped tenant=%s reason=%s message=%r",
                key,
                exc.reason,
                exc.message,
            )
            return
        if server_cm is None:
            return
        desired = server_config_after_revocation(
            server_cm, crl_pem=step.crl.pem, machines=machines, kept=kept
        )
        if desired is None:
            return
        await self._ensure(CONFIG_MAP, desired, live=server_cm, read=False)
        await self._kick_server_pods(key, desired)

    async def _check_no_ca_was_lost(self, tenant: TenantSpec, names: TenantNames) -> None:
        """Raise PermanentError(CASecretMissing) when the tenant had a CA (its revocation
        book names one, or a server/apiserver certificate of it exists): a CA Secret that
        disappears is an alarm, never a reason to mint a new CA in silence, which would cut
        every node off and orphan every revocation."""
        where = f"Secret {tenant.namespace}/{names.ca_secret}"
        key = TenantRef(namespace=tenant.namespace, cluster=tenant.cluster_name)
        evidence: str | None = None
        try:
            book = await self._book.read(key)
        except PermanentError:  # unreadable, but it exists: so did a CA
            book = None
            evidence = f"ConfigMap {tenant.namespace}/{names.revocations} exists"
        if book is not None and book.ca:
            evidence = f"ConfigMap {tenant.namespace}/{names.revocations} records CA {book.ca[:16]}"
        for leaf in (names.server_secret, names.apiserver_secret):
            if evidence is None and await self._get(SECRET, leaf, tenant.namespace):
                evidence = f"Secret {tenant.namespace}/{leaf} holds a certificate of it"
        if evidence is None:
            return
        error = PermanentError(
            reason="CASecretMissing",
            message=(
                f"{where}, the tenant's tunnel CA, is gone although the tenant had one "
                f"({evidence}); vpnctl does not mint a new CA in its place, which would cut "
                "off every node. Restore the Secret from a backup; to start over with a new "
                f"CA on purpose (every node gets new credentials), delete ConfigMap "
                f"{tenant.namespace}/{names.revocations} and Secrets {names.server_secret} "
                f"and {names.apiserver_secret}"
            ),
        )
        tunnel = await self._get(TUNNEL, tenant.tunnel_name, tenant.namespace)
        if tunnel is not None:
            await self._event(tunnel, "Warning", error.reason, error.message)
        raise error
