"""Deciding and signing node CertificateSigningRequests (signer `vpnctl.io/node`).

Why this exists: a node's tunnel key is made on the node and never leaves it, so no
Secret ever holds the keys of all nodes, and a compromised node cannot fetch another
node's key. The node asks for its certificate with a CSR, authenticated *as its node*
(the kubelet's client credentials: user `system:node:<name>`, group `system:nodes`).
The apiserver vouches for who asked; this module decides whether that requester may
have a tunnel certificate for the name in the request:

- the CSR is for our signer;
- the requester is a node, `system:node:<n>` in group `system:nodes`;
- the request parses, its self-signature verifies, and its key is one we sign;
- it asks for client auth only (digital signature / key encipherment tolerated, they
  are what kubelet-style clients ask for);
- `<n>` is not a name vpnctl keeps for its own identities (`vpnctl-apiserver`,
  `vpnctl-server`, anything starting `vpnctl-`, the tenant CA's name): a tenant admin
  can name a Node and point a Machine's nodeRef at it, and a node certificate with the
  apiserver sidecar's CN would impersonate the side that may open connections;
- its CN is exactly `<n>`: a node asks for itself, never for another node;
- a Machine of this Cluster, not being deleted, has `status.nodeRef.name == <n>`:
  a node that joined the tenant's apiserver without a Machine gets nothing.

Anything else is denied, with a CamelCase reason and a message a person can act on.
The CSR's username and groups are set by the apiserver from the authenticated identity,
so they cannot be forged by the requester; the CN inside the request can be, which is
why the two are compared.

Pure: plain dicts in, a decision or PEM out. The approve/deny/sign API calls live in the
kube layer; the loop lists CSRs with `fieldSelector=spec.signerName=vpnctl.io/node` and
acts only on those still `pending` (`csr_state`). `decide_csr` still refuses any other
signer (defence in depth), but the loop must never *deny* another signer's CSR: the
kubelet's own CSRs live in the same API.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import certs
from vpnctl.api import CAPI_CLUSTER_NAME_LABEL
from vpnctl.reconcile.names import RESERVED_NAME_PREFIX, SERVER_COMMON_NAME, TenantNames
from vpnctl.reconcile.tenant_spec import APISERVER_COMMON_NAME

NODE_SIGNER = "vpnctl.io/node"
NODE_USER_PREFIX = "system:node:"
NODES_GROUP = "system:nodes"
REQUIRED_USAGE = "client auth"
ALLOWED_USAGES = frozenset({"client auth", "digital signature", "key encipherment"})
# What the Kubernetes API accepts as the smallest spec.expirationSeconds (10 minutes).
MIN_EXPIRATION = timedelta(seconds=600)
_ACCEPTED_CURVES = (ec.SECP256R1, ec.SECP384R1)
_MIN_RSA_BITS = 2048

DenyReason = Literal[
    "WrongSigner",
    "MalformedRequest",
    "RequesterNotANode",
    "ReservedName",
    "ForbiddenUsages",
    "CommonNameMismatch",
    "NoMachineForNode",
]
APPROVED_REASON = "NodeHasMachine"
CSRState = Literal["pending", "approved", "issued", "denied", "failed"]


@dataclass(frozen=True, kw_only=True)
class CSRDecision:
    """What to do with one CSR.

    `reason` goes to the Approved/Denied condition's `reason`, `message` to its message.
    `node_name` is the node the requester authenticated as, when it is one (None for a
    requester that is not a node); for an approval it is also the certificate's CN.
    `machine` names the Machine that vouched for an approval.
    """

    approve: bool
    reason: str
    message: str
    node_name: str | None = None
    machine: str | None = None


def _deny(reason: DenyReason, message: str, *, node: str | None = None) -> CSRDecision:
    return CSRDecision(approve=False, reason=reason, message=message, node_name=node)


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _describe(csr: Mapping[str, Any]) -> str:
    name = _mapping(csr.get("metadata")).get("name")
    return f"CSR {name}" if isinstance(name, str) and name else "the CSR"


def request_pem(csr: Mapping[str, Any]) -> bytes:
    """spec.request decoded (the API carries the PEM base64-encoded in JSON).

    Raises `certs.MalformedMaterial` when it is missing or not base64.
    """
    raw = _mapping(csr.get("spec")).get("request")
    if not isinstance(raw, str) or not raw:
        raise certs.MalformedMaterial(f"{_describe(csr)} has no spec.request")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise certs.MalformedMaterial(
            f"{_describe(csr)} spec.request is not base64 (the API's encoding of the PEM)"
        ) from None


def _check_key(pem: bytes) -> str | None:
    """Why the request's public key is not one we sign, or None when it is fine."""
    key = x509.load_pem_x509_csr(pem).public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        if isinstance(key.curve, _ACCEPTED_CURVES):
            return None
        return f"an ECDSA key on curve {key.curve.name}; use P-256 or P-384"
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size >= _MIN_RSA_BITS:
            return None
        return f"a {key.key_size}-bit RSA key; use at least {_MIN_RSA_BITS} bits or ECDSA P-256"
    return f"a {type(key).__name__}; only ECDSA and RSA keys are signed"


def _belongs(machine: Mapping[str, Any], *, cluster_name: str) -> bool:
    spec = _mapping(machine.get("spec"))
    if spec.get("clusterName") is not None:
        return bool(spec.get("clusterName") == cluster_name)
    labels = _mapping(_mapping(machine.get("metadata")).get("labels"))
    return labels.get(CAPI_CLUSTER_NAME_LABEL) == cluster_name


def reserved_for(name: str, *, cluster_name: str) -> str | None:
    """What NAME is reserved for in Cluster CLUSTER_NAME's PKI, or None for a free name."""
    if name == APISERVER_COMMON_NAME:
        return "the apiserver sidecar's certificate"
    if name == SERVER_COMMON_NAME:
        return "the openvpn server's certificate"
    if name == TenantNames.for_cluster(cluster_name).ca_secret:
        return "the tenant CA"
    if name.startswith(RESERVED_NAME_PREFIX):
        return f"vpnctl's own identities (every name starting {RESERVED_NAME_PREFIX!r})"
    return None


def machine_for_node(
    machines: Sequence[Mapping[str, Any]], *, node: str, cluster_name: str
) -> str | None:
    """The name of a live Machine of CLUSTER_NAME whose status.nodeRef names NODE."""
    found = []
    for machine in machines:
        meta = _mapping(machine.get("metadata"))
        if meta.get("deletionTimestamp") or not _belongs(machine, cluster_name=cluster_name):
            continue
        ref = _mapping(_mapping(machine.get("status")).get("nodeRef"))
        if ref.get("kind", "Node") == "Node" and ref.get("name") == node:
            found.append(str(meta.get("name", "")))
    return min(found) if found else None


def decide_csr(
    csr: Mapping[str, Any], *, machines: Sequence[Mapping[str, Any]], cluster_name: str
) -> CSRDecision:
    """Approve CSR only for a node asking for itself, vouched for by a Machine of the
    Cluster; see the module docstring for every rule. `machines` are the Machines of
    the Cluster's namespace (others are ignored by `spec.clusterName`)."""
    what = _describe(csr)
    spec = _mapping(csr.get("spec"))
    signer = spec.get("signerName")
    if signer != NODE_SIGNER:
        return _deny(
            "WrongSigner",
            f"{what} is for signer {signer!r}, not {NODE_SIGNER}; vpnctl signs only its own",
        )

    username = spec.get("username")
    groups = spec.get("groups")
    groups = [g for g in groups if isinstance(g, str)] if isinstance(groups, list) else []
    if (
        not isinstance(username, str)
        or not username.startswith(NODE_USER_PREFIX)
        or not username[len(NODE_USER_PREFIX) :]
        or NODES_GROUP not in groups
    ):
        return _deny(
            "RequesterNotANode",
            f"{what} was created by {username!r} (groups {', '.join(groups) or 'none'}), not "
            f"by a node ({NODE_USER_PREFIX}<name> in group {NODES_GROUP}); the node agent "
            "must authenticate with the kubelet's client certificate",
        )
    node = username[len(NODE_USER_PREFIX) :]
    reserved = reserved_for(node, cluster_name=cluster_name)
    if reserved is not None:
        return _deny(
            "ReservedName",
            f"{what} was created by node {node}, a name reserved for {reserved}; vpnctl "
            "never signs a node certificate in that name, whatever Machine names the node: "
            "rename the Node",
            node=node,
        )

    common_name: str | None = None
    bad_name: str | None = None
    try:
        pem = request_pem(csr)
        try:
            common_name, _organization = certs.csr_info(pem)  # O is ignored when signing
        except certs.InvalidName as e:  # parsed and verified, but the CN is no node name
            bad_name = str(e)
        bad_key = _check_key(pem)
    except ValueError as e:  # certs.PKIError is one
        return _deny(
            "MalformedRequest",
            f"{what} from node {node} has an unusable spec.request: {e}",
            node=node,
        )
    if bad_key is not None:
        return _deny("MalformedRequest", f"{what} from node {node} requests {bad_key}", node=node)

    usages = spec.get("usages")
    usages = usages if isinstance(usages, list) else []
    extra = sorted({str(u) for u in usages} - ALLOWED_USAGES)
    if extra or REQUIRED_USAGE not in usages:
        asked = ", ".join(map(str, usages)) or "none"
        return _deny(
            "ForbiddenUsages",
            f"{what} from node {node} asks for usages [{asked}]; a tunnel client certificate "
            f"is for {REQUIRED_USAGE!r} only (plus 'digital signature', 'key encipherment')",
            node=node,
        )

    if common_name != node:
        asked = f"CN={common_name}" if common_name is not None else f"a bad CN ({bad_name})"
        return _deny(
            "CommonNameMismatch",
            f"{what} was created by node {node} but asks for {asked}; a node may only ask "
            f"for a certificate in its own name, CN={node}",
            node=node,
        )

    machine = machine_for_node(machines, node=node, cluster_name=cluster_name)
    if machine is None:
        return _deny(
            "NoMachineForNode",
            f"{what}: no Machine of Cluster {cluster_name} (not being deleted) has "
            f"status.nodeRef {node}; only nodes that Cluster API made get a tunnel "
            "certificate (a new node retries with a new request once its Machine has "
            "its nodeRef)",
            node=node,
        )
    return CSRDecision(
        approve=True,
        reason=APPROVED_REASON,
        message=f"node {node} is the nodeRef of Machine {machine} of Cluster {cluster_name}",
        node_name=node,
        machine=machine,
    )


def csr_state(csr: Mapping[str, Any]) -> CSRState:
    """Where a CSR stands: denied/failed (final), issued (has a certificate), approved
    (waiting for the signer), or pending (undecided)."""
    status = _mapping(csr.get("status"))
    kinds = {
        c.get("type")
        for c in status.get("conditions") or []
        if isinstance(c, Mapping) and c.get("status", "True") == "True"
    }
    if "Denied" in kinds:
        return "denied"
    if "Failed" in kinds:
        return "failed"
    if status.get("certificate"):
        return "issued"
    if "Approved" in kinds:
        return "approved"
    return "pending"


def certificate_lifetime(csr: Mapping[str, Any], *, lifetime: timedelta) -> timedelta:
    """LIFETIME, shortened to spec.expirationSeconds when the requester asked for less
    (never below the API's 10-minute minimum)."""
    requested = _mapping(csr.get("spec")).get("expirationSeconds")
    if isinstance(requested, bool) or not isinstance(requested, int):
        return lifetime
    return min(lifetime, max(timedelta(seconds=requested), MIN_EXPIRATION))


def sign_node_csr(
    ca: certs.Issued, csr: Mapping[str, Any], *, now: datetime, lifetime: timedelta
) -> bytes:
    """The client certificate PEM for an approved node CSR, signed by the tunnel CA.

    Only the CN and the public key are taken from the request (certs.sign_csr), so the
    certificate is a tunnel client certificate whatever else was asked for. The result
    is what goes, base64-encoded, into status.certificate. Raises `certs.PKIError`.
    """
    return certs.sign_csr(
        ca,
        request_pem(csr),
        now=now,
        lifetime=certificate_lifetime(csr, lifetime=lifetime),
        usage="client",
    )
