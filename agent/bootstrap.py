"""The node's tunnel certificate, obtained with a CertificateSigningRequest.

Why: a node's tunnel key must be bound to that node. The agent makes the key itself, in
the node's own state directory, and it never leaves the node; no Secret holds the keys
of all nodes, so a compromised node cannot take another node's identity. The agent asks
the tenant's apiserver for a certificate with a `certificates.k8s.io/v1` CSR (signer
`vpnctl.io/node`), authenticated *as its node* with the kubelet's client certificate, so
the apiserver records `system:node:<name>` as the requester. vpnctl approves and signs
only when that matches a Machine's nodeRef and the CN in the request (see
vpnctl/reconcile/csr.py); the agent learns the outcome from the CSR's status.

How, and the invariants:

- One key file (`key_path`, 0600, written atomically) that openvpn uses with `cert_path`.
  A renewal makes a *new* key in `<key_path>.next` and only replaces the live pair once
  the new certificate arrived, so openvpn keeps a matching pair throughout and the
  tunnel is not dropped while waiting for approval.
- The CSR's name is derived from its public key (`vpnctl-<node>-<hash>`): a retry, or an
  agent restarted while waiting, posts the same name, gets 409 AlreadyExists, checks the
  existing CSR carries this key and this node, and just waits for it.
- A denied or failed CSR burns its key (the file is removed): the next attempt has a new
  key and so a new CSR name. That matters for the common race where a node's agent
  starts before Cluster API has set the Machine's nodeRef (`NoMachineForNode`).
- The node's own tls-crypt-v2 client key (`tls_crypt_key_path`) comes on the CSR
  beside the certificate, sealed to the CSR's public key (`certs.key_delivery`): only
  the key this agent made opens it. It is installed with the certificate it came with
  (tls-crypt key, key, then certificate), so a renewal brings a new one. A certificate
  without a usable key beside it is not reused; a key that does not open or names
  another node burns the CSR's key like a refusal.
- Whatever comes back is checked before it is written: it chains to the tunnel CA (the
  CA openvpn trusts, from the agent's config), it is a client certificate, its key is
  ours and its CN is our node name.
- Talks to the apiserver with aiohttp directly: the agent imports neither vpnctl nor a
  Kubernetes client library (import-linter keeps it so), and it needs four calls.
  Proxies from the environment are ignored (`trust_env=False`): the tenant apiserver is
  reached the way the kubelet reaches it.

Nothing here logs: `progress` receives each step (the role logs it and shows it on
/readyz). No message contains key material.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import aiohttp
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

import certs
from agent.csr_answer import install_issued, read_small, remove, write_private
from agent.csr_answer import usable_tls_crypt_key as usable_tls_crypt_key
from agent.csr_api import ApiRequestError as ApiRequestError
from agent.csr_api import BootstrapError as BootstrapError
from agent.csr_api import BootstrapTimeout as BootstrapTimeout
from agent.csr_api import CsrApi, sealed_key, ssl_context
from agent.csr_api import CSRRefused as CSRRefused
from agent.openvpn.config import ConfigError, validate_common_name

SIGNER = "vpnctl.io/node"
USAGES = ("digital signature", "client auth")
PENDING_SUFFIX = ".next"
_WATCH_SECONDS = 60
_POLL_INTERVAL = 1.0

WallClock = Callable[[], datetime]  # the time of day, for certificate validity


# --- results -------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Obtained:
    """The node's current certificate and where it came from."""

    cert_pem: bytes
    info: certs.CertInfo
    renew_at: datetime
    source: Literal["existing", "issued"]
    csr_name: str | None = None


@dataclass(frozen=True, kw_only=True)
class Step:
    """One thing that happened, for logs and readiness: `event` is a log event name."""

    event: str
    message: str
    csr_name: str | None = None


Progress = Callable[[Step], None]


def _ignore(_step: Step) -> None:
    pass


# --- files ---------------------------------------------------------------------------------


def _usable_key(path: str) -> bytes | None:
    """The private key at PATH if it is one; a corrupt key is removed (it is ours alone,
    nothing else can be signed for it, and a fresh one costs a millisecond)."""
    data = read_small(path)
    if data is None:
        return None
    try:
        _public_der(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        remove(path)
        return None
    return data


def _public_der(key_pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(key_pem, password=None)
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def csr_name(*, node_name: str, key_pem: bytes) -> str:
    """`vpnctl-<node>-<first 12 hex of sha256(public key)>`: same key, same name."""
    return f"vpnctl-{node_name}-{hashlib.sha256(_public_der(key_pem)).hexdigest()[:12]}"


def _tunnel_ca(path: str) -> bytes:
    data = read_small(path)
    if data is None:
        raise BootstrapError(
            f"tunnel CA {path} does not exist; it comes with the agent's config (ConfigMap)"
        )
    try:
        certs.cert_info(data)
    except certs.PKIError as e:
        raise BootstrapError(f"tunnel CA {path}: {e}") from None
    return data


def current_certificate(
    *, cert_path: str, key_path: str, tunnel_ca_file: str, node_name: str, now: datetime
) -> certs.CertInfo | None:
    """The certificate at CERT_PATH if openvpn can use it now: it chains to the tunnel CA,
    matches the key at KEY_PATH, is valid at NOW, is a client certificate, and its CN is
    NODE_NAME. None otherwise (missing, stale, another node's, another CA's)."""
    try:
        ca = _tunnel_ca(tunnel_ca_file)
        cert, key = read_small(cert_path), read_small(key_path)
    except BootstrapError:
        return None
    if cert is None or key is None:
        return None
    try:
        info = certs.validate(cert, key_pem=key, ca_pem=ca, now=now, usage="client")
    except certs.PKIError:
        return None
    return info if info.common_name == node_name else None


# --- CSR objects -----------------------------------------------------------------------------


def _conditions(csr: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    status = csr.get("status") if isinstance(csr.get("status"), Mapping) else {}
    out: dict[str, Mapping[str, Any]] = {}
    for c in (status or {}).get("conditions") or []:
        if isinstance(c, Mapping) and c.get("status", "True") == "True":
            out[str(c.get("type"))] = c
    return out


def _is_ours(csr: Mapping[str, Any], *, node_name: str, key_pem: bytes) -> str | None:
    """Why an existing CSR of our name is not the one we made, or None when it is."""
    spec = csr.get("spec") if isinstance(csr.get("spec"), Mapping) else {}
    spec = spec or {}
    if spec.get("signerName") != SIGNER:
        return f"its signer is {spec.get('signerName')!r}, not {SIGNER}"
    if spec.get("username") != f"system:node:{node_name}":
        return f"it was created by {spec.get('username')!r}, not system:node:{node_name}"
    try:
        request = x509.load_pem_x509_csr(base64.b64decode(str(spec.get("request", ""))))
        theirs = request.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    except (ValueError, TypeError, binascii.Error):
        return "its spec.request does not parse"
    if theirs != _public_der(key_pem):
        return "it asks for another public key"
    return None


# --- the whole flow ---------------------------------------------------------------------------


async def obtain_certificate(
    *,
    server: str,
    ca_file: str,
    client_cert_file: str,
    client_key_file: str,
    node_name: str,
    key_path: str,
    cert_path: str,
    tunnel_ca_file: str,
    clock: WallClock,
    timeout: float,
    renew_fraction: float = certs.DEFAULT_RENEW_FRACTION,
    expiration_seconds: int | None = None,
    progress: Progress | None = None,
    poll_interval: float = _POLL_INTERVAL,
    tls_crypt_key_path: str | None = None,
) -> Obtained:
    """Make sure CERT_PATH/KEY_PATH hold this node's valid tunnel certificate and key.

    - `server`, `ca_file`: the tenant apiserver's URL and the CA of its serving cert.
    - `client_cert_file`, `client_key_file`: the kubelet's client credentials (one file
      may hold both, like kubelet-client-current.pem).
    - `tunnel_ca_file`: the tunnel CA; only certificates chaining to it are used.
    - `timeout`: seconds to wait for the CSR's answer (BootstrapTimeout after that;
      calling again picks the same CSR up).
    - `tls_crypt_key_path`: where the node's tls-crypt-v2 client key, delivered on the
      CSR, is written (None: not delivered; openvpn's key comes from elsewhere).

    A valid certificate is reused until `renew_fraction` of its lifetime passed; then a
    new key and CSR replace it. Raises `CSRRefused`, `BootstrapTimeout`,
    `ApiRequestError`, or `BootstrapError` (local files).
    """
    report = progress or _ignore
    try:
        validate_common_name(node_name)
    except ConfigError as e:
        raise BootstrapError(f"node name {node_name!r} cannot be a certificate CN: {e}") from None
    ca_pem = _tunnel_ca(tunnel_ca_file)
    existing = current_certificate(
        cert_path=cert_path,
        key_path=key_path,
        tunnel_ca_file=tunnel_ca_file,
        node_name=node_name,
        now=clock(),
    )
    cert_now = read_small(cert_path) if existing is not None else None
    if not usable_tls_crypt_key(tls_crypt_key_path):
        cert_now = None  # no tls-crypt-v2 key to go with it: ask for a new pair
    if cert_now is not None and existing is not None:
        due = certs.renewal_due(cert_now, now=clock(), renew_fraction=renew_fraction)
        if not due:
            return Obtained(
                cert_pem=cert_now,
                info=existing,
                renew_at=certs.renew_at(cert_now, renew_fraction=renew_fraction),
                source="existing",
            )

    # Which key to ask with: a renewal already under way, else a new one beside the
    # live pair (renewal), else the live key file (nothing valid to protect), else new.
    pending = key_path + PENDING_SUFFIX
    key_file = pending
    key_pem = _usable_key(pending)
    if key_pem is None and existing is None:
        key_file, key_pem = key_path, _usable_key(key_path)
    if key_pem is None:
        key_pem = certs.new_private_key()
        write_private(key_file, key_pem)
        report(Step(event="key_created", message=f"made a new private key at {key_file}"))

    try:
        request_pem = certs.new_csr(key_pem, common_name=node_name)
    except certs.PKIError as e:
        raise BootstrapError(f"cannot make a CSR for node {node_name!r}: {e}") from None
    name = csr_name(node_name=node_name, key_pem=key_pem)
    body: dict[str, Any] = {
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": {
            "signerName": SIGNER,
            "request": base64.b64encode(request_pem).decode("ascii"),
            "usages": list(USAGES),
        },
    }
    if expiration_seconds is not None:
        body["spec"]["expirationSeconds"] = expiration_seconds

    context = ssl_context(
        ca_file=ca_file, client_cert_file=client_cert_file, client_key_file=client_key_file
    )
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=context), trust_env=False
    ) as session:
        api = CsrApi(
            session=session, server=server, node_name=node_name, client_cert_file=client_cert_file
        )
        try:
            async with asyncio.timeout(timeout):
                issued = await _request_and_wait(
                    api,
                    body=body,
                    name=name,
                    node_name=node_name,
                    key_pem=key_pem,
                    report=report,
                    poll_interval=poll_interval,
                    need_key=tls_crypt_key_path is not None,
                )
        except TimeoutError:
            raise BootstrapTimeout(
                f"CSR {name} (signer {SIGNER}) got no answer within {timeout:g} s; is vpnctl "
                "running for this cluster, and does this node's Machine have its nodeRef? "
                "The next attempt waits for the same CSR"
            ) from None
        except CSRRefused:
            remove(key_file)
            raise

    cert_pem, info = install_issued(
        issued,
        name=name,
        key_pem=key_pem,
        key_file=key_file,
        key_path=key_path,
        cert_path=cert_path,
        ca_pem=ca_pem,
        tunnel_ca_file=tunnel_ca_file,
        node_name=node_name,
        now=clock(),
        tls_crypt_key_path=tls_crypt_key_path,
    )
    report(
        Step(
            event="certificate_issued",
            csr_name=name,
            message=f"CSR {name} was signed; certificate written to {cert_path}",
        )
    )
    return Obtained(
        cert_pem=cert_pem,
        info=info,
        renew_at=certs.renew_at(cert_pem, renew_fraction=renew_fraction),
        source="issued",
        csr_name=name,
    )


async def _request_and_wait(
    api: CsrApi,
    *,
    body: Mapping[str, Any],
    name: str,
    node_name: str,
    key_pem: bytes,
    report: Progress,
    poll_interval: float,
    need_key: bool = False,
) -> dict[str, Any]:
    """Create the CSR (or find ours) and wait until it is answered (with its sealed key
    if NEED_KEY); the CSR as issued."""
    while True:
        created, obj = await api.create(body)
        if created:
            report(
                Step(
                    event="csr_created",
                    csr_name=name,
                    message=f"created CSR {name}; waiting for vpnctl to approve it",
                )
            )
        else:
            found = await api.get(name)
            if found is None:
                continue  # deleted between our POST and GET: create it again
            obj = found
            problem = _is_ours(obj, node_name=node_name, key_pem=key_pem)
            if problem is not None:
                raise CSRRefused(
                    csr_name=name,
                    outcome="Failed",
                    reason="NameTaken",
                    message=f"a CSR named {name} exists but is not this node's: {problem}",
                )
            report(
                Step(
                    event="csr_found",
                    csr_name=name,
                    message=f"CSR {name} exists already; waiting for vpnctl to answer",
                )
            )
        result = await _wait_answer(
            api, obj, name=name, poll_interval=poll_interval, need_key=need_key, report=report
        )
        if result is not None:
            return result
        report(
            Step(
                event="csr_vanished",
                csr_name=name,
                message=f"CSR {name} was deleted before it was answered; creating it again",
            )
        )


async def _wait_answer(
    api: CsrApi,
    obj: dict[str, Any],
    *,
    name: str,
    poll_interval: float,
    need_key: bool = False,
    report: Progress = _ignore,
) -> dict[str, Any] | None:
    """Wait on OBJ (the CSR as last seen) until it has a certificate (and, if NEED_KEY,
    a sealed key) and return it, or it is refused (raised). None when it disappeared."""
    told = False
    while True:
        conditions = _conditions(obj)
        for outcome in ("Denied", "Failed"):
            if outcome in conditions:
                c = conditions[outcome]
                raise CSRRefused(
                    csr_name=name,
                    outcome=outcome,
                    reason=str(c.get("reason") or ""),
                    message=str(c.get("message") or ""),
                )
        status = obj.get("status") if isinstance(obj.get("status"), dict) else {}
        certificate = (status or {}).get("certificate")
        if isinstance(certificate, str) and certificate:
            if not need_key or sealed_key(obj) is not None:
                return obj
            if not told:
                told = True
                report(
                    Step(
                        event="tls_crypt_key_waiting",
                        csr_name=name,
                        message=(
                            f"CSR {name} was signed but carries no tls-crypt-v2 client key "
                            "(annotation vpnctl.io/tls-crypt-v2-client-key) yet; waiting for "
                            "vpnctl to add it (an older vpnctl never does: upgrade it)"
                        ),
                    )
                )
        rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        try:
            change = await api.watch(name, resource_version=rv, seconds=_WATCH_SECONDS)
        except ApiRequestError:
            change = None
            await asyncio.sleep(poll_interval)  # watch refused or broke: poll instead
        if change is not None and change[0] != "DELETED":
            obj = change[1]
            continue
        fresh = await api.get(name)
        if fresh is None:
            return None
        obj = fresh
