"""The tenant's own workloads on real nodes, as plain dicts: what a tenant runs that the
hosted apiserver has to reach through vpnctl's tunnel.

- **metrics-server** (``metrics_server_objects``), an aggregated API: the apiserver
  dials its Service's ClusterIP, and it dials every kubelet's InternalIP.
- **an admission webhook per node** (``admission_server.py``, shipped in a ConfigMap
  and run with ``python3`` from vpnctl's image), pinned to that node; its
  ValidatingWebhookConfiguration sends it only ConfigMaps labelled for that node, so
  a check can tell which node's path carried the call. Names and shapes are the
  lab's (``lab_objects``), so the lab's checks work unchanged.
- **a log pod per node** printing ``log_line(node, pod, k)`` for k < N, then sleeping,
  so ``kubectl logs`` shows whether every line arrived, in order;
- **a web pod per node** (busybox httpd on :8080) for exec and port-forward.

Serving certificates are issued here from a CA the caller passes
(``issue_serving_tls``); the builders themselves are deterministic, so tests check
the objects without a cluster. Every image is local (``imagePullPolicy: Never``).
"""

from __future__ import annotations

import importlib.resources
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from certs import Issued, new_server_cert
from vpnctl.lab.address_plan import WEBHOOK_PORT
from vpnctl.lab.lab_objects import (
    LOG_CONTAINER,
    WEBHOOK_LABEL,
    WEBHOOK_SERVICE_PORT,
    WORKLOAD_NAMESPACE,
)
from vpnctl.lab.realnode.admission_server import DENY_LABEL
from vpnctl.lab.realnode.metrics_server_objects import (
    metrics_server_dns_name,
    metrics_server_objects,
)
from vpnctl.lab.realnode.object_parts import (
    NOBODY,
    Object,
    ServingTLS,
    b64,
    restricted,
    tls_secret,
)

WEB_PORT = 8080
WEB_BLOB = "/www/blob"
WEBHOOK_SCRIPT = "admission_server.py"
WEBHOOK_SCRIPT_CONFIGMAP = "admission-server"
VPNCTL_UID = 65532  # the user vpnctl's image runs as
DEFAULT_LOG_LINES = 10_000
DEFAULT_BLOB_BYTES = 4 * 1024 * 1024
ATTACH_CONTAINER = "echo"
TICKER_CONTAINER = "ticker"
ATTACH_PROGRAM = 'while read -r line; do echo "got $line"; done'

_NODE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


@dataclass(frozen=True, kw_only=True)
class WorkloadImages:
    """Image references, each already imported on every node."""

    busybox: str
    metrics_server: str
    vpnctl: str  # has python3: runs the admission webhook


# --- names ------------------------------------------------------------------------------


def log_line(node: str, pod: str, k: int) -> str:
    """Line K (0-based) of the log of POD on NODE, without the newline."""
    return f"{node} {pod} line {k:08d}"


def log_pod_name(node: str) -> str:
    return f"logs-{node}"


def web_pod_name(node: str) -> str:
    return f"web-{node}"


def webhook_name(node: str) -> str:
    return f"webhook-{node}"


def webhook_dns_name(node: str) -> str:
    """The name the apiserver checks the webhook's certificate against."""
    return f"{webhook_name(node)}.{WORKLOAD_NAMESPACE}.svc"


def serving_dns_names(nodes: Sequence[str]) -> list[str]:
    return [metrics_server_dns_name(), *(webhook_dns_name(n) for n in _checked(nodes))]


def issue_serving_tls(
    nodes: Sequence[str], *, ca: Issued, now: datetime, lifetime: timedelta = timedelta(days=30)
) -> ServingTLS:
    """A serving certificate from CA for each name of ``serving_dns_names``."""
    certs = {
        name: new_server_cert(ca, common_name=name, now=now, lifetime=lifetime)
        for name in serving_dns_names(nodes)
    }
    return ServingTLS(ca_pem=ca.cert_pem, certs=certs)


def admission_server_source() -> str:
    """The webhook's program, as the ConfigMap ships it."""
    package = importlib.resources.files(__package__ or "vpnctl.lab.realnode")
    return (package / WEBHOOK_SCRIPT).read_text()


# --- everything -------------------------------------------------------------------------


def workload_objects(
    nodes: Sequence[str],
    *,
    images: WorkloadImages,
    tls: ServingTLS,
    log_lines: int = DEFAULT_LOG_LINES,
    blob_bytes: int = DEFAULT_BLOB_BYTES,
) -> list[Object]:
    """Every object, in create order: namespace, metrics-server, the webhook program,
    then per node its log pod, web pod and webhook."""
    nodes = _checked(nodes)
    missing = [n for n in serving_dns_names(nodes) if n not in tls.certs]
    if missing:
        raise ValueError(f"no serving certificate for {missing}: use issue_serving_tls()")
    out: list[Object] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": WORKLOAD_NAMESPACE}},
        *metrics_server_objects(image=images.metrics_server, tls=tls),
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": WEBHOOK_SCRIPT_CONFIGMAP, "namespace": WORKLOAD_NAMESPACE},
            "data": {WEBHOOK_SCRIPT: admission_server_source()},
        },
    ]
    for node in nodes:
        out.append(log_pod(node, image=images.busybox, lines=log_lines))
        out.append(web_pod(node, image=images.busybox, blob_bytes=blob_bytes))
        out += webhook_objects(node, image=images.vpnctl, tls=tls)
    return out


def as_list(objects: Sequence[Object]) -> Object:
    """One ``v1/List``, for a single ``kubectl apply -f -``."""
    return {"apiVersion": "v1", "kind": "List", "items": list(objects)}


# --- per node ---------------------------------------------------------------------------


def log_pod(node: str, *, image: str, lines: int = DEFAULT_LOG_LINES) -> Object:
    """Prints ``log_line(node, <pod>, k)`` for k in 0..LINES-1, then sleeps. A second
    container, ``TICKER_CONTAINER``, prints ``log_line(node, <pod>, k)`` for k = 0, 1, ...
    once a second for ever: a log to follow (``kubectl logs -f``)."""
    if lines < 0:
        raise ValueError(f"lines must be >= 0, got {lines}")
    name = log_pod_name(_checked([node])[0])
    # log_line's format, in awk's printf; node and pod names are DNS labels, safe here.
    program = (
        f'BEGIN {{ for (k = 0; k < {lines}; k++) printf "%s %s line %08d\\n", '
        f'"{node}", "{name}", k }}'
    )
    pod = _pod(
        name,
        node,
        labels={"app": "logs"},
        container={
            "name": LOG_CONTAINER,
            "image": image,
            "imagePullPolicy": "Never",
            "command": ["/bin/sh", "-c", f"awk '{program}' && exec sleep 2147483647"],
            "securityContext": restricted(NOBODY),
        },
    )
    ticker = (
        f"k=0; while true; do printf '%s %s line %08d\\n' {node} {name} $k; "
        "k=$((k + 1)); sleep 1; done"
    )
    pod["spec"]["containers"].append(
        {
            "name": TICKER_CONTAINER,
            "image": image,
            "imagePullPolicy": "Never",
            "command": ["/bin/sh", "-c", ticker],
            "securityContext": restricted(NOBODY),
        }
    )
    return pod


def web_pod(node: str, *, image: str, blob_bytes: int = DEFAULT_BLOB_BYTES) -> Object:
    """busybox httpd on :8080 serving ``/blob`` (``WEB_BLOB`` in the pod, BLOB_BYTES
    random bytes); its log's first line is ``serving-<pod>``. A second container,
    ``ATTACH_CONTAINER``, keeps its stdin open and answers each line ``got <line>``,
    for ``kubectl attach -i``."""
    name = web_pod_name(_checked([node])[0])
    root = WEB_BLOB.rsplit("/", 1)[0]
    serve = (
        f"mkdir -p {root} && head -c {int(blob_bytes)} /dev/urandom > {WEB_BLOB} && "
        f"echo serving-$(hostname) && exec httpd -f -p {WEB_PORT} -h {root}"
    )
    pod = _pod(
        name,
        node,
        labels={"app": name},
        container={
            "name": "main",
            "image": image,
            "imagePullPolicy": "Never",
            "command": ["/bin/sh", "-c", serve],
            "ports": [{"name": "http", "containerPort": WEB_PORT, "protocol": "TCP"}],
            "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 1},
        },
    )
    pod["spec"]["containers"].append(
        {
            "name": ATTACH_CONTAINER,
            "image": image,
            "imagePullPolicy": "Never",
            "command": ["/bin/sh", "-c", ATTACH_PROGRAM],
            "stdin": True,
            "securityContext": restricted(NOBODY),
        }
    )
    return pod


def webhook_objects(node: str, *, image: str, tls: ServingTLS) -> list[Object]:
    """The webhook pod pinned to NODE, its TLS Secret and Service, and the
    ValidatingWebhookConfiguration that sends it ConfigMaps labelled for NODE."""
    name = webhook_name(_checked([node])[0])
    ns = WORKLOAD_NAMESPACE
    secret = f"{name}-tls"
    container = {
        "name": "webhook",
        "image": image,
        "imagePullPolicy": "Never",
        "command": [
            "python3",
            f"/webhook/{WEBHOOK_SCRIPT}",
            f"--port={WEBHOOK_PORT}",
            "--cert=/tls/tls.crt",
            "--key=/tls/tls.key",
        ],
        "ports": [{"name": "https", "containerPort": WEBHOOK_PORT, "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {"path": "/healthz", "port": "https", "scheme": "HTTPS"},
            "periodSeconds": 1,
        },
        "securityContext": restricted(VPNCTL_UID),
        "volumeMounts": [
            {"name": "program", "mountPath": "/webhook", "readOnly": True},
            {"name": "tls", "mountPath": "/tls", "readOnly": True},
        ],
    }
    pod = _pod(name, node, labels={"app": name}, container=container)
    pod["spec"]["volumes"] = [
        {"name": "program", "configMap": {"name": WEBHOOK_SCRIPT_CONFIGMAP}},
        {"name": "tls", "secret": {"secretName": secret}},
    ]
    return [
        tls_secret(secret, ns, tls.certs[webhook_dns_name(node)]),
        pod,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "selector": {"app": name},
                "ports": [
                    {
                        "name": "https",
                        "port": WEBHOOK_SERVICE_PORT,
                        "protocol": "TCP",
                        "targetPort": "https",
                    }
                ],
            },
        },
        validating_webhook(node, ca_pem=tls.ca_pem),
    ]


def validating_webhook(node: str, *, ca_pem: bytes) -> Object:
    """Sends the webhook behind NODE every ConfigMap labelled `lab.vpnctl.io/webhook:
    <node>`; fails closed, so an unreachable webhook is a refused request."""
    name = webhook_name(node)
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": f"lab-{name}"},
        "webhooks": [
            {
                "name": f"{name}.lab.vpnctl.io",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Fail",
                "timeoutSeconds": 5,
                "objectSelector": {"matchLabels": {WEBHOOK_LABEL: node}},
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["configmaps"],
                        "scope": "Namespaced",
                    }
                ],
                "clientConfig": {
                    "service": {
                        "name": name,
                        "namespace": WORKLOAD_NAMESPACE,
                        "path": "/validate",
                        "port": WEBHOOK_SERVICE_PORT,
                    },
                    "caBundle": b64(ca_pem),
                },
            }
        ],
    }


def review_object(node: str, *, name: str, deny: bool = False) -> Object:
    """A ConfigMap the webhook behind NODE reviews; DENY labels it to be refused."""
    labels = {WEBHOOK_LABEL: node}
    if deny:
        labels[DENY_LABEL] = "true"
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": WORKLOAD_NAMESPACE, "labels": labels},
        "data": {"node": node},
    }


# --- helpers ----------------------------------------------------------------------------


def _checked(nodes: Sequence[str]) -> list[str]:
    bad = [n for n in nodes if len(n) > 50 or not _NODE_NAME.fullmatch(n)]
    if bad:
        raise ValueError(
            f"node names {bad} are not DNS labels of at most 50 characters (lowercase "
            "letters, digits and '-'); they name pods and are written into a shell command"
        )
    if len(set(nodes)) != len(nodes):
        raise ValueError(f"node names repeat: {list(nodes)}")
    return list(nodes)


def _pod(name: str, node: str, *, labels: Mapping[str, str], container: Object) -> Object:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": WORKLOAD_NAMESPACE, "labels": dict(labels)},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 1,
            "containers": [container],
        },
    }
