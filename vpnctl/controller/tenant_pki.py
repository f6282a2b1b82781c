"""A tenant's PKI Secrets: the CA, the tls-crypt-v2 server key, the server certificate
and the apiserver sidecar's client certificate and tls-crypt-v2 client key.

The CA and the tls-crypt-v2 server key are only ever *created* (POST), never
overwritten: a corrupt one is reported (PKIReady=False CorruptPKISecret) and left for a
person, and so is a CA Secret that disappeared (CASecretMissing,
``tenant_revocations``): no new CA is minted in its place. Leaf certificates are kept
while valid and renewed with the same CA once due. The rules themselves, which need no
I/O, are in ``controller/pki_decisions.py`` and ``reconcile/secrets.py``.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeVar

import certs
from vpnctl.controller import pki_decisions as pki
from vpnctl.controller.tenant_revocations import RevocationPasses
from vpnctl.kube import SECRET, AlreadyExists, KubeObject
from vpnctl.reconcile.errors import TemporaryError
from vpnctl.reconcile.names import SERVER_COMMON_NAME, TenantNames
from vpnctl.reconcile.secrets import (
    check_leaf_secret,
    read_ca_secret,
    read_tls_crypt_server_key,
)
from vpnctl.reconcile.service_objects import (
    TLS_CRYPT_V2_CLIENT,
    apiserver_client_secret,
    ca_secret,
    tls_crypt_secret,
)
from vpnctl.reconcile.service_objects import (
    server_secret as server_secret_object,
)
from vpnctl.reconcile.tenant_spec import APISERVER_COMMON_NAME, TenantSpec

_log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class TenantPKI:
    """What the rest of the pass needs of a tenant's PKI once it is in place."""

    ca: certs.Issued
    tls_crypt_server_key: bytes = field(repr=False)  # for the nodes' own client keys
    apiserver_serial: str  # hex, for desired.json: the sidecar's client is always allowed
    not_after: Mapping[str, datetime]  # role -> expiry, for the metrics
    renew_at: datetime  # the earliest renewal of a leaf certificate


def _decode(secret: Mapping[str, Any] | None, key: str) -> bytes | None:
    data = (secret or {}).get("data") or {}
    raw = data.get(key) if isinstance(data, Mapping) else None
    if not isinstance(raw, str):
        return None
    try:
        return base64.b64decode(raw, validate=True)
    except ValueError:
        return None


def client_secret_maker(
    tenant: TenantSpec,
    ca: certs.Issued,
    tc_key: bytes,
    *,
    now: datetime,
    slot: int = 0,
    holder_uid: str | None = None,
) -> Callable[[certs.Issued, KubeObject | None], KubeObject]:
    """How an apiserver client's Secret is made from its new leaf: the live Secret's
    tls-crypt-v2 client key is kept while it still fits the server key, else a new one."""

    def client_secret(leaf: certs.Issued, live: KubeObject | None) -> KubeObject:
        client_key = _decode(live, TLS_CRYPT_V2_CLIENT)
        if client_key is None or not pki.tls_crypt_client_key_fits(tc_key, client_key):
            client_key = certs.new_tls_crypt_v2_client_key(tc_key, now=now)
        return apiserver_client_secret(
            tenant=tenant,
            cert_pem=leaf.cert_pem,
            key_pem=leaf.key_pem,
            ca_pem=ca.cert_pem,
            tls_crypt_v2_client_key=client_key,
            slot=slot,
            holder_uid=holder_uid,
        )

    return client_secret


class PKIIssuance(RevocationPasses):
    """Part of ``TenantReconciler``: reads, creates and renews the PKI Secrets."""

    async def _ensure_pki(
        self, tenant: TenantSpec, names: TenantNames, *, now: datetime
    ) -> TenantPKI:
        lifetimes = tenant.spec.certificates

        ca = read_ca_secret(await self._get(SECRET, names.ca_secret, tenant.namespace), now=now)
        if ca is None:
            await self._check_no_ca_was_lost(tenant, names)
            new = certs.new_ca(common_name=names.ca_secret, now=now, lifetime=lifetimes.ca)
            body = ca_secret(tenant=tenant, cert_pem=new.cert_pem, key_pem=new.key_pem)
            ca = await self._create_once(body, lambda s: read_ca_secret(s, now=now))

        tc_secret = await self._get(SECRET, names.tls_crypt_secret, tenant.namespace)
        tc_key = read_tls_crypt_server_key(tc_secret, now=now)
        if tc_key is None:
            body = tls_crypt_secret(tenant=tenant, server_key=certs.new_tls_crypt_v2_server_key())
            tc_key = await self._create_once(body, lambda s: read_tls_crypt_server_key(s, now=now))

        # The server certificate: kept while valid, renewed (same CA) once due.
        def new_server() -> certs.Issued:
            service = f"{names.service}.{tenant.namespace}.svc"
            return certs.new_server_cert(
                ca,
                common_name=SERVER_COMMON_NAME,
                dns_names=[service, f"{service}.cluster.local"],
                now=now,
                lifetime=lifetimes.server,
            )

        def server_secret(leaf: certs.Issued, live: KubeObject | None) -> KubeObject:
            return server_secret_object(
                tenant=tenant,
                cert_pem=leaf.cert_pem,
                key_pem=leaf.key_pem,
                ca_pem=ca.cert_pem,
                tls_crypt_v2_key=tc_key,
            )

        server = await self._ensure_leaf(
            tenant, names.server_secret, ca, "server", new_server, server_secret, now=now
        )

        # The apiserver sidecar's client certificate and tls-crypt-v2 client key.
        def new_client() -> certs.Issued:
            return certs.new_client_cert(
                ca, common_name=APISERVER_COMMON_NAME, now=now, lifetime=lifetimes.client
            )

        client = await self._ensure_leaf(
            tenant, names.apiserver_secret, ca, "apiserver", new_client,
            client_secret_maker(tenant, ca, tc_key, now=now), now=now,
        )  # fmt: skip

        infos = {
            pki.CA: certs.cert_info(ca.cert_pem),
            pki.SERVER: certs.cert_info(server.cert_pem),
            pki.APISERVER: certs.cert_info(client.cert_pem),
        }
        renew_at = min(
            certs.renew_at(c.cert_pem, renew_fraction=lifetimes.renew_fraction)
            for c in (server, client)
        )
        return TenantPKI(
            ca=ca,
            tls_crypt_server_key=tc_key,
            apiserver_serial=format(infos[pki.APISERVER].serial, "x"),
            not_after={role: info.not_after for role, info in infos.items()},
            renew_at=renew_at,
        )

    async def _ensure_leaf(
        self,
        tenant: TenantSpec,
        name: str,
        ca: certs.Issued,
        role: Literal["server", "apiserver"],
        issue: Callable[[], certs.Issued],
        secret: Callable[[certs.Issued, KubeObject | None], KubeObject],
        *,
        now: datetime,
        reissue: Callable[[KubeObject | None], str | None] = lambda _live: None,
    ) -> certs.Issued:
        """Keep the leaf certificate in Secret NAME while valid, else ISSUE one, and apply
        the Secret that SECRET builds from it and the live Secret; returns the leaf.
        REISSUE says why a valid one must be replaced all the same (None: it need not)."""
        live = await self._get(SECRET, name, tenant.namespace)
        check = check_leaf_secret(
            live,
            ca_pem=ca.cert_pem,
            now=now,
            usage="server" if role == "server" else "client",
            renew_fraction=tenant.spec.certificates.renew_fraction,
        )
        leaf = check.issued
        why_again = reissue(live)
        if check.needs_issue or leaf is None or why_again is not None:
            leaf = issue()
            why = check.message if why_again is None or check.needs_issue else why_again
            _log.info(
                "event=certificate_issued tenant=%s role=%s secret=%s why=%r",
                tenant.key,
                role,
                name,
                why,
            )
        await self._ensure(SECRET, secret(leaf, live), live=live, read=False)
        return leaf

    async def _create_once(
        self, body: KubeObject, read: Callable[[KubeObject | None], T | None]
    ) -> T:
        """Create a Secret that must never be overwritten; if someone (another replica,
        a restore) created it first, use theirs, checked like any other."""
        meta = body["metadata"]
        created: KubeObject | None
        try:
            created = await self._call(lambda: self._api.create(SECRET, body))
            self._count("create", SECRET)
            _log.info("event=secret_created object=%s/%s", meta["namespace"], meta["name"])
        except AlreadyExists:
            created = await self._get(SECRET, meta["name"], meta["namespace"])
        value = read(created)
        if value is None:  # deleted again right away: the next pass creates it
            raise TemporaryError(
                reason="PKISecretVanished",
                message=f"Secret {meta['namespace']}/{meta['name']} vanished after creation",
            )
        return value
