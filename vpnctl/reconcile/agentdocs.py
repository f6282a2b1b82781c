"""The JSON documents the agent roles read: role configs and the server's desired state.

The agent defines these formats (agent/role_config.py, agent/desired_state.py) and
refuses unknown keys, so this module produces exactly those field names, and the unit
tests parse every document with the agent's own loader. The paths inside the documents
are where the builders in objects.py mount things; both use the constants below.

Serialisation is canonical (sorted keys, fixed indentation, trailing newline) so the same
input always gives the same bytes, and a resync with no change writes nothing.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from vpnctl.reconcile.errors import PermanentError, TemporaryError
from vpnctl.reconcile.routes import ClientRoutes, tenant_routes
from vpnctl.reconcile.settings import Settings
from vpnctl.reconcile.tenant_spec import APISERVER_COMMON_NAME, TenantSpec

# The agent's UDP echo port on the server's tunnel address (agent.role_config.DEFAULT_PROBE_PORT).
PROBE_PORT = 7947


class ServerPaths:
    """Where things are inside the server pod."""

    config_dir = "/etc/vpnctl"
    role_config = "/etc/vpnctl/server.json"
    desired = "/etc/vpnctl/desired.json"
    crl_source = "/etc/vpnctl/crl.pem"
    ca = "/etc/vpnctl/pki/ca.crt"
    cert = "/etc/vpnctl/pki/tls.crt"
    key = "/etc/vpnctl/pki/tls.key"
    tls_crypt_v2 = "/etc/vpnctl/pki/tls-crypt-v2-server.key"
    state_dir = "/run/vpnctl"
    ccd_dir = "/run/vpnctl/ccd"
    management = "/run/vpnctl/server.sock"
    crl = "/run/vpnctl/crl.pem"


class ApiserverPaths:
    """Where things are inside the hosted kube-apiserver pod (distinct from its own)."""

    config_dir = "/etc/vpnctl-apiserver"
    role_config = "/etc/vpnctl-apiserver/apiserver.json"
    ca = "/etc/vpnctl-apiserver/pki/ca.crt"
    cert = "/etc/vpnctl-apiserver/pki/tls.crt"
    key = "/etc/vpnctl-apiserver/pki/tls.key"
    tls_crypt_v2 = "/etc/vpnctl-apiserver/pki/tls-crypt-v2-client.key"
    state_dir = "/run/vpnctl-apiserver"
    management = "/run/vpnctl-apiserver/client.sock"
    # The pod's apiserver slot (downward API) and each further slot's credentials
    # (slots/<n>/...): agent/apiserver_slot.py, reconcile/apiserver_slots.py.
    slot_file = "/etc/vpnctl-apiserver/slot"
    slots_dir = "/etc/vpnctl-apiserver/slots"


class NodePaths:
    """Where things are in the node agent's pod. The state directory is on the host: the
    node's own private key is made there and never leaves the node."""

    config_dir = "/etc/vpnctl"
    role_config = "/etc/vpnctl/node.json"
    ca = "/etc/vpnctl/ca.crt"
    state_dir = "/var/lib/vpnctl"
    cert = "/var/lib/vpnctl/node.crt"
    key = "/var/lib/vpnctl/node.key"
    tls_crypt_v2 = "/var/lib/vpnctl/tls-crypt-v2-client.key"
    management = "/run/vpnctl/client.sock"
    run_dir = "/run/vpnctl"
    # The CA that verifies the tenant apiserver: every pod with a service account gets it
    # here (the kube-root-ca.crt ConfigMap), the node agent's DaemonSet pods included.
    apiserver_ca = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    # The kubelet's rotating client certificate and key, one PEM file in its pki dir.
    kubelet_client_file = "kubelet-client-current.pem"


def canonical_json(doc: Mapping[str, Any]) -> str:
    """The one serialisation of a document: same input, same bytes."""
    return json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=True) + "\n"


def _serial_text(serial: str | int | None) -> str | None:
    if serial is None:
        return None
    if isinstance(serial, int):
        return format(serial, "x")
    return serial.replace(":", "").lower()


def _serial_list(serials: Iterable[str | int]) -> list[str]:
    """Hex serials, each once, in the given order."""
    out: list[str] = []
    for s in serials:
        text = _serial_text(s)
        if text is not None and text not in out:
            out.append(text)
    return out


def server_desired_state(
    *,
    clients: Sequence[ClientRoutes],
    apiserver_serial: str | int | Sequence[str | int] | None,
    replica_serials: Mapping[str, str | int | Sequence[str | int]] | None = None,
) -> dict[str, Any]:
    """The server's desired state (agent.desired_state.parse_desired's format).

    `clients` is routes.client_routes' result: the apiserver entry (no machine) and the
    nodes. The apiserver entry is null when there is none; then nothing can open
    connections through the tunnel, which is the safe default.

    `serials` pins identities: the server admits a client only with a certificate whose
    serial is listed for its common name (and not revoked), so a CA-valid certificate
    for a name we did not sign is refused. For nodes they are the serials recorded when
    signing (`Allocation.serials`); `apiserver_serial` is the sidecar's current serial, or
    a sequence (oldest first, current last) to keep a renewed one's predecessor admitted
    until the sidecar has the new certificate.

    There is one apiserver client per held slot (apiserver_slots.py): the first goes to
    `apiserver`, the others to `apiserver_replicas`. Slot 0's serials are
    `apiserver_serial`; each other slot's are in `replica_serials` by common name (none
    yet: it admits nobody). `apiserver_replicas` is left out when empty, so a
    single-replica tenant's document is the one agents before it read.
    """

    def serial_list(raw: str | int | Sequence[str | int] | None) -> list[str]:
        if isinstance(raw, Sequence) and not isinstance(raw, str):
            return _serial_list(raw)
        return _serial_list([] if raw is None else [raw])

    apiservers: list[dict[str, Any]] = []
    nodes: list[dict[str, Any]] = []
    for client in clients:
        if client.machine is None:
            serials = serial_list(
                apiserver_serial
                if client.common_name == APISERVER_COMMON_NAME
                else (replica_serials or {}).get(client.common_name)
            )
            apiservers.append(
                {
                    "common_name": client.common_name,
                    "ifconfig_ip": str(client.tunnel_ip),
                    "push_routes": [str(n) for n in client.push_routes],
                    "serial": serials[-1] if serials else None,
                    "serials": serials,
                }
            )
            continue
        kubelet = None if client.kubelet is None else f"{client.kubelet[0]}:{client.kubelet[1]}"
        serial = _serial_text(client.serial)
        nodes.append(
            {
                "common_name": client.common_name,
                "ifconfig_ip": str(client.tunnel_ip),
                "iroutes": [str(n) for n in client.iroutes],
                "push_routes": [str(n) for n in client.push_routes],
                "kubelet": kubelet,
                "serial": serial,
                "serials": _serial_list([*client.serials, *([serial] if serial else [])]),
            }
        )
    doc: dict[str, Any] = {
        "apiserver": apiservers[0] if apiservers else None,
        "clients": sorted(nodes, key=lambda c: str(c["common_name"])),
    }
    if len(apiservers) > 1:
        doc["apiserver_replicas"] = apiservers[1:]
    return doc


def server_role_config(*, tenant: TenantSpec, settings: Settings) -> dict[str, Any]:
    """server.json: what `python -m agent server --config` reads at start."""
    spec = tenant.spec
    p = ServerPaths
    return {
        "health_address": f"0.0.0.0:{settings.server_health_port}",
        "state_dir": p.state_dir,
        "openvpn": {
            "proto": spec.transport.protocol,
            "port": spec.transport.port,
            "tunnel_cidr": str(spec.tunnel_cidr),
            "ca": p.ca,
            "cert": p.cert,
            "key": p.key,
            "tls_crypt_v2": p.tls_crypt_v2,
            "ccd_dir": p.ccd_dir,
            "management": p.management,
            "crl": p.crl,
            "reneg_sec": spec.transport.renegotiate_seconds,
        },
        "desired_path": p.desired,
        "crl_source": p.crl_source,
        "probe_port": PROBE_PORT,
        "firewall": True,
    }


def _client_role_config(
    *,
    tenant: TenantSpec,
    remotes: Sequence[tuple[str, int]],
    health_port: int,
    paths: type[ApiserverPaths] | type[NodePaths],
) -> dict[str, Any]:
    """What the two client roles' configs share; PATHS are where that role's pod keeps
    its state, credentials and management socket."""
    spec = tenant.spec
    return {
        "health_address": f"0.0.0.0:{health_port}",
        "state_dir": paths.state_dir,
        "openvpn": {
            "proto": spec.transport.protocol,
            "remotes": [[host, port] for host, port in remotes],
            "ca": paths.ca,
            "cert": paths.cert,
            "key": paths.key,
            "tls_crypt_v2": paths.tls_crypt_v2,
            "management": paths.management,
            # The same as the server's: whichever end has the shorter interval decides.
            "reneg_sec": spec.transport.renegotiate_seconds,
        },
        "probe": {"target": f"{spec.server_ip}:{PROBE_PORT}"},
    }


def apiserver_role_config(
    *, tenant: TenantSpec, settings: Settings, service_name: str
) -> dict[str, Any]:
    """apiserver.json. The sidecar sits in the tenant's namespace of the service cluster,
    so it reaches the server through the Service's cluster DNS name, whatever the
    Service's type.

    `routes` are the tenant's networks the hosted apiserver reaches through the tunnel
    (routes.tenant_routes: pods, services, extra routes, and each node address none of
    those cover). One owner per route: the apiserver role keeps them on its tun (proto
    211) and puts back one deleted by hand within a second, without a reconnect; the
    server pushes the apiserver none (its `push_routes` is empty), so its CCD, and its
    connection, do not change when nodes come and go."""
    doc = _client_role_config(
        tenant=tenant,
        remotes=[(f"{service_name}.{tenant.namespace}.svc", tenant.spec.transport.port)],
        health_port=settings.apiserver_health_port,
        paths=ApiserverPaths,
    )
    doc["routes"] = [str(net) for net in tenant_routes(tenant)]
    doc["slot"] = {"file": ApiserverPaths.slot_file, "dir": ApiserverPaths.slots_dir}
    return doc


def node_bootstrap_config(*, server: str, settings: Settings) -> dict[str, Any]:
    """node.json's `bootstrap` section (agent/bootstrap.py): the node makes its own key and
    asks the tenant apiserver at SERVER for its certificate, authenticated as its node
    with the kubelet's client certificate (from `settings.kubelet_pki_dir`).

    SERVER is the apiserver as the nodes reach it: the server of CAPI's
    `<cluster>-kubeconfig`, which is the Cluster's controlPlaneEndpoint, the address the
    kubelets themselves use. PermanentError when it is not an https URL without a path
    (the agent would refuse the config).
    """
    parsed = urllib.parse.urlsplit(server)
    try:
        port_ok = parsed.port is None or 0 < parsed.port < 65536
    except ValueError:
        port_ok = False
    if (
        parsed.scheme != "https"
        or not parsed.hostname
        or parsed.path not in ("", "/")
        or not port_ok
    ):
        raise PermanentError(
            reason="InvalidKubeconfig",
            message=(
                f"the tenant apiserver address {server!r} (the server of the cluster's "
                "kubeconfig Secret) is not an https URL without a path, like "
                "https://203.0.113.10:6443; the node agents could not ask it for their "
                "certificates; fix the kubeconfig Secret"
            ),
        )
    pki_dir = settings.kubelet_pki_dir.rstrip("/")
    client = f"{pki_dir}/{NodePaths.kubelet_client_file}"
    return {
        "server": server.rstrip("/"),
        "ca": NodePaths.apiserver_ca,
        "client_cert": client,
        "client_key": client,
    }


def node_role_config(
    *,
    tenant: TenantSpec,
    settings: Settings,
    remotes: Sequence[tuple[str, int]],
    bootstrap_server: str | None = None,
) -> dict[str, Any]:
    """node.json, the same for every node of the tenant (the node's name comes from the
    pod's NODE_NAME). `remotes` are where the nodes reach the server from outside: see
    `service_remotes`. With `bootstrap_server` (the tenant apiserver's URL, see
    `node_bootstrap_config`), each node obtains its certificate with a CSR; without it,
    something else must put `NodePaths.cert` and `.key` on the node."""
    if not remotes:
        raise TemporaryError(
            reason="WaitingForServerAddress",
            message=(
                f"the server Service of Tunnel {tenant.key} has no external address yet; "
                "the nodes are configured once it has one"
            ),
        )
    doc = _client_role_config(
        tenant=tenant, remotes=remotes, health_port=settings.node_health_port, paths=NodePaths
    )
    if bootstrap_server is not None:
        doc["bootstrap"] = node_bootstrap_config(server=bootstrap_server, settings=settings)
    return doc


def service_remotes(
    service: Mapping[str, Any], *, node_addresses: Sequence[str] = ()
) -> tuple[tuple[str, int], ...]:
    """Where tenant nodes dial the server, from the server Service as the apiserver has it.

    - LoadBalancer: each `status.loadBalancer.ingress` IP or hostname, on the port.
    - NodePort: each of `node_addresses` (the service cluster's nodes, from the
      controller's settings) on the node port.
    - ClusterIP: the cluster IP on the port; only useful when the tenant's nodes share a
      network with the service cluster (the lab).
    Empty while none is known yet.
    """
    spec = service.get("spec") or {}
    ports = spec.get("ports") or []
    if not ports:
        return ()
    port = ports[0]
    kind = spec.get("type", "ClusterIP")
    out: list[tuple[str, int]] = []
    if kind == "LoadBalancer":
        for ingress in (service.get("status") or {}).get("loadBalancer", {}).get("ingress") or []:
            host = ingress.get("ip") or ingress.get("hostname")
            if isinstance(host, str) and host:
                out.append((host, int(port["port"])))
    elif kind == "NodePort":
        node_port = port.get("nodePort")
        if isinstance(node_port, int):
            out += [(addr, node_port) for addr in node_addresses]
    else:
        cluster_ip = spec.get("clusterIP")
        if isinstance(cluster_ip, str) and cluster_ip and cluster_ip != "None":
            out.append((cluster_ip, int(port["port"])))
    return tuple(sorted(set(out)))
