"""metrics-server as the tenant runs it: an aggregated API (``v1beta1.metrics.k8s.io``)
behind a Service, which the apiserver dials by ClusterIP (aggregator routing off) and
which dials every kubelet by InternalIP, verifying the kubelet's serving certificate
with the tenant CA (the service account's ``ca.crt``). ``kubectl top`` needs both paths.
"""

from __future__ import annotations

from collections.abc import Mapping

from vpnctl.lab.realnode.object_parts import (
    NOBODY,
    Object,
    ServingTLS,
    b64,
    restricted,
    tls_secret,
)

METRICS_NAMESPACE = "kube-system"
METRICS_SERVER = "metrics-server"
METRICS_PORT = 4443  # in the pod; the Service listens on 443
METRICS_APISERVICE = "v1beta1.metrics.k8s.io"
METRICS_LABELS = {"k8s-app": METRICS_SERVER}
# The tenant CA as every pod sees it; it also issued the kubelets' serving certificates.
SERVICE_ACCOUNT_CA = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"


def metrics_server_dns_name() -> str:
    return f"{METRICS_SERVER}.{METRICS_NAMESPACE}.svc"


def metrics_server_objects(*, image: str, tls: ServingTLS) -> list[Object]:
    """ServiceAccount, RBAC, TLS Secret, Deployment, Service and APIService.

    RBAC, in upstream's meaning: read pods and nodes and the kubelets' metrics; review
    tokens and access (auth-delegator) and read the apiserver's front-proxy CA
    (``extension-apiserver-authentication`` in kube-system), which an aggregated API
    server needs to trust the apiserver's calls; and a reader role of the metrics API
    aggregated into view, edit and admin.
    """
    ns = METRICS_NAMESPACE
    sa = {"kind": "ServiceAccount", "name": METRICS_SERVER, "namespace": ns}
    meta = {"namespace": ns, "labels": METRICS_LABELS}
    secret = f"{METRICS_SERVER}-tls"
    rbac = "rbac.authorization.k8s.io/v1"
    read = ["get", "list", "watch"]
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": METRICS_SERVER, **meta},
        },
        {
            "apiVersion": rbac,
            "kind": "ClusterRole",
            "metadata": {"name": "vpnctl:metrics-server", "labels": METRICS_LABELS},
            "rules": [
                {"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]},
                {"apiGroups": [""], "resources": ["pods", "nodes"], "verbs": read},
            ],
        },
        {
            "apiVersion": rbac,
            "kind": "ClusterRole",
            "metadata": {
                "name": "vpnctl:metrics-reader",
                "labels": {
                    **METRICS_LABELS,
                    "rbac.authorization.k8s.io/aggregate-to-view": "true",
                    "rbac.authorization.k8s.io/aggregate-to-edit": "true",
                    "rbac.authorization.k8s.io/aggregate-to-admin": "true",
                },
            },
            "rules": [
                {
                    "apiGroups": ["metrics.k8s.io"],
                    "resources": ["pods", "nodes"],
                    "verbs": read,
                }
            ],
        },
        _binding("ClusterRoleBinding", "vpnctl:metrics-server", "vpnctl:metrics-server", sa),
        _binding(
            "ClusterRoleBinding",
            "vpnctl:metrics-server:auth-delegator",
            "system:auth-delegator",
            sa,
        ),
        _binding(
            "RoleBinding",
            "vpnctl:metrics-server:auth-reader",
            "extension-apiserver-authentication-reader",
            sa,
            namespace="kube-system",
        ),
        tls_secret(secret, ns, tls.certs[metrics_server_dns_name()]),
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": METRICS_SERVER, **meta},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": METRICS_LABELS},
                "template": {
                    "metadata": {"labels": METRICS_LABELS},
                    "spec": {
                        "serviceAccountName": METRICS_SERVER,
                        "terminationGracePeriodSeconds": 1,
                        "containers": [_metrics_server_container(image)],
                        "volumes": [
                            {"name": "tmp", "emptyDir": {}},
                            {"name": "tls", "secret": {"secretName": secret}},
                        ],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": METRICS_SERVER, **meta},
            "spec": {
                "selector": METRICS_LABELS,
                "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": "https"}],
            },
        },
        {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": METRICS_APISERVICE, "labels": METRICS_LABELS},
            "spec": {
                "group": "metrics.k8s.io",
                "version": "v1beta1",
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
                "service": {"name": METRICS_SERVER, "namespace": ns, "port": 443},
                "caBundle": b64(tls.ca_pem),
            },
        },
    ]


def _metrics_server_container(image: str) -> Object:
    return {
        "name": METRICS_SERVER,
        "image": image,
        "imagePullPolicy": "Never",
        "command": ["/metrics-server"],
        "args": [
            "--cert-dir=/tmp",
            f"--secure-port={METRICS_PORT}",
            "--tls-cert-file=/tls/tls.crt",
            "--tls-private-key-file=/tls/tls.key",
            "--kubelet-preferred-address-types=InternalIP",
            "--kubelet-use-node-status-port",
            f"--kubelet-certificate-authority={SERVICE_ACCOUNT_CA}",
            "--metric-resolution=15s",
        ],
        "ports": [{"name": "https", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        # /readyz turns ready once a first scrape is stored: only then does the
        # Service (and so the APIService) send requests to it.
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "https", "scheme": "HTTPS"},
            "periodSeconds": 2,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/livez", "port": "https", "scheme": "HTTPS"},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "securityContext": restricted(NOBODY),
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "tls", "mountPath": "/tls", "readOnly": True},
        ],
    }


def _binding(
    kind: str, name: str, role: str, subject: Mapping[str, str], *, namespace: str | None = None
) -> Object:
    meta: Object = {"name": name, "labels": METRICS_LABELS}
    if namespace is not None:
        meta["namespace"] = namespace
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": meta,
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole" if kind == "ClusterRoleBinding" else "Role",
            "name": role,
        },
        "subjects": [dict(subject)],
    }
