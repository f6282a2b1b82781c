"""Reading back the Secrets a tenant's tunnel depends on, and saying what is wrong with them.

Two kinds, two policies:

- CAPI's `<cluster>-kubeconfig` Secret (how vpnctl reaches the tenant cluster). Missing is
  temporary (CAPI writes it once the control plane is up); malformed or refused (anything
  beyond inline credentials, see `vpnctl.reconcile.kubeconfig`) is permanent until the
  Secret changes.
- Our own PKI Secrets. A missing one is simply issued. A *corrupt* CA or tls-crypt-v2
  server key is reported and never replaced: every node's certificate and client key
  hangs off them, so re-issuing silently would cut every node off, and the old material
  may only be damaged in transit (a bad restore, a hand edit) and recoverable. A person
  decides: restore it, or delete the Secret to start over. A leaf certificate (server,
  apiserver client) under a working CA is cheap to re-issue, so it is only classified.

Nothing here puts key material in a message or a repr.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import certs
from vpnctl.reconcile.errors import PermanentError, TemporaryError
from vpnctl.reconcile.kubeconfig import Kubeconfig, KubeconfigRejected, parse_kubeconfig
from vpnctl.reconcile.service_objects import TLS_CERT, TLS_CRYPT_V2_SERVER, TLS_KEY

KUBECONFIG_KEY = "value"


def kubeconfig_secret_name(cluster_name: str) -> str:
    """CAPI's name for the admin kubeconfig of a Cluster."""
    return f"{cluster_name}-kubeconfig"


@dataclass(frozen=True, kw_only=True)
class TenantKubeconfig:
    """A validated kubeconfig for the tenant cluster. Holds credentials: never log it."""

    text: str = field(repr=False)
    server: str
    context: str
    credentials: Kubeconfig = field(repr=False)


def _where(secret: Mapping[str, Any], fallback: str) -> str:
    meta = secret.get("metadata") or {}
    return f"Secret {meta.get('namespace', '?')}/{meta.get('name', fallback)}"


class _BadData(Exception):
    """A data key is missing or not base64; the message says which, without the value."""


def _data(secret: Mapping[str, Any], key: str) -> bytes:
    data = secret.get("data")
    raw = data.get(key) if isinstance(data, Mapping) else None
    if not isinstance(raw, str) or not raw:
        raise _BadData(f"has no key {key!r}")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise _BadData(f"key {key!r} is not valid base64") from None


def parse_kubeconfig_secret(
    secret: Mapping[str, Any] | None, *, namespace: str, cluster_name: str
) -> TenantKubeconfig:
    """The tenant's kubeconfig from CAPI's Secret (key `value`).

    TemporaryError(WaitingForKubeconfig) when the Secret does not exist yet;
    PermanentError(InvalidKubeconfig) when it cannot be used, naming what is missing.
    """
    name = kubeconfig_secret_name(cluster_name)
    where = f"Secret {namespace}/{name}"
    if secret is None:
        raise TemporaryError(
            reason="WaitingForKubeconfig",
            message=(
                f"{where} does not exist yet; Cluster API writes it once the control plane "
                "is up, and the agent is installed then"
            ),
        )
    fix = "Cluster API rewrites it when it is deleted; delete it to have it regenerated"

    def bad(what: str) -> PermanentError:
        return PermanentError(reason="InvalidKubeconfig", message=f"{where} {what}; {fix}")

    try:
        raw = _data(secret, KUBECONFIG_KEY)
    except _BadData as exc:
        raise bad(str(exc)) from None
    try:
        credentials = parse_kubeconfig(raw)
    except KubeconfigRejected as exc:
        raise bad(f"is refused: {exc}") from None
    # parse_kubeconfig checked that the bytes are UTF-8.
    return TenantKubeconfig(
        text=raw.decode("utf-8"),
        server=credentials.server,
        context=credentials.context,
        credentials=credentials,
    )


# --- our PKI ----------------------------------------------------------------------------


def _corrupt(where: str, what: str, *, material: str) -> PermanentError:
    return PermanentError(
        reason="CorruptPKISecret",
        message=(
            f"{where} {what}. The {material} is never re-issued over an existing Secret, "
            f"because every node depends on it: restore the Secret from a backup, or delete "
            f"it to issue a new {material} (every node then gets new credentials)"
        ),
    )


def read_ca_secret(secret: Mapping[str, Any] | None, *, now: datetime) -> certs.Issued | None:
    """The tenant CA from its Secret; None when there is none yet (issue one).

    PermanentError(CorruptPKISecret) when the Secret exists but is not a usable CA;
    PermanentError(CAExpired) when it is a CA whose validity is over.
    """
    if secret is None:
        return None
    where = _where(secret, "CA")

    try:
        cert_pem, key_pem = _data(secret, TLS_CERT), _data(secret, TLS_KEY)
    except _BadData as exc:
        raise _corrupt(where, str(exc), material="CA") from None
    try:
        certs.validate(cert_pem, key_pem=key_pem, now=now, usage="ca")
    except certs.Expired as exc:
        raise PermanentError(
            reason="CAExpired",
            message=(
                f"{where} holds a CA that is no longer valid ({exc}); delete the Secret to "
                "issue a new CA (every node then gets new credentials)"
            ),
        ) from None
    except certs.PKIError as exc:
        raise _corrupt(where, f"is not a usable CA: {exc}", material="CA") from None
    return certs.Issued(cert_pem=cert_pem, key_pem=key_pem)


def read_tls_crypt_server_key(secret: Mapping[str, Any] | None, *, now: datetime) -> bytes | None:
    """The tls-crypt-v2 server key; None when there is none yet (generate one).

    Checked by wrapping a throwaway client key with it, which fails on a corrupt key.
    """
    if secret is None:
        return None
    where = _where(secret, "tls-crypt-v2")
    try:
        key = _data(secret, TLS_CRYPT_V2_SERVER)
        certs.new_tls_crypt_v2_client_key(key, now=now)
    except _BadData as exc:
        raise _corrupt(where, str(exc), material="tls-crypt-v2 server key") from None
    except certs.PKIError as exc:
        raise _corrupt(
            where, f"is not a tls-crypt-v2 server key: {exc}", material="tls-crypt-v2 server key"
        ) from None
    return key


LeafState = Literal["Valid", "Missing", "Invalid", "RenewalDue"]


@dataclass(frozen=True, kw_only=True)
class LeafCheck:
    """What to do about a leaf certificate Secret (server, apiserver client)."""

    state: LeafState
    issued: certs.Issued | None  # the material when it is usable (Valid or RenewalDue)
    message: str

    @property
    def needs_issue(self) -> bool:
        return self.state != "Valid"


def check_leaf_secret(
    secret: Mapping[str, Any] | None,
    *,
    ca_pem: bytes,
    now: datetime,
    usage: Literal["server", "client"],
    renew_fraction: float,
) -> LeafCheck:
    """Classify a leaf certificate's Secret against the tenant CA: keep, renew or re-issue.

    Invalid covers everything a new certificate fixes: unreadable, a key that does not
    match, signed by another CA, expired, the wrong usage.
    """
    if secret is None:
        return LeafCheck(state="Missing", issued=None, message="not issued yet")
    where = _where(secret, usage)
    try:
        cert_pem, key_pem = _data(secret, TLS_CERT), _data(secret, TLS_KEY)
        info = certs.validate(cert_pem, key_pem=key_pem, ca_pem=ca_pem, now=now, usage=usage)
    except _BadData as exc:
        return LeafCheck(state="Invalid", issued=None, message=f"{where} {exc}")
    except certs.PKIError as exc:
        return LeafCheck(state="Invalid", issued=None, message=f"{where}: {exc}")
    issued = certs.Issued(cert_pem=cert_pem, key_pem=key_pem)
    if certs.renewal_due(cert_pem, now=now, renew_fraction=renew_fraction):
        return LeafCheck(
            state="RenewalDue",
            issued=issued,
            message=f"{where}: {info.common_name} expires {info.not_after:%Y-%m-%dT%H:%M:%SZ}",
        )
    return LeafCheck(state="Valid", issued=issued, message=f"{where}: valid")
