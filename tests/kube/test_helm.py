"""`helm template` output checked by the real apiserver (server-side dry run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vpnctl.testenv import KubectlError, ServiceCluster, helm_template_dry_run

pytestmark = pytest.mark.kube

_CHART = {
    "Chart.yaml": """
apiVersion: v2
name: throwaway
version: 0.1.0
""",
    "values.yaml": """
image: registry.invalid/throwaway:1
replicas: 2
extraField: false
""",
    "templates/serviceaccount.yaml": """
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ .Release.Name }}
""",
    "templates/rbac.yaml": """
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: {{ .Release.Name }}
rules:
  - apiGroups: [""]
    resources: ["configmaps"]
    verbs: ["get", "list", "watch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: {{ .Release.Name }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: {{ .Release.Name }}
subjects:
  - kind: ServiceAccount
    name: {{ .Release.Name }}
    namespace: {{ .Release.Namespace }}
""",
    "templates/deployment.yaml": """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}
  labels: {app: {{ .Release.Name }}}
spec:
  replicas: {{ .Values.replicas }}
  selector:
    matchLabels: {app: {{ .Release.Name }}}
  template:
    metadata:
      labels: {app: {{ .Release.Name }}}
    spec:
      serviceAccountName: {{ .Release.Name }}
      containers:
        - name: main
          image: {{ .Values.image }}
          {{- if .Values.extraField }}
          notAField: true
          {{- end }}
""",
    "templates/service.yaml": """
apiVersion: v1
kind: Service
metadata:
  name: {{ .Release.Name }}
spec:
  selector: {app: {{ .Release.Name }}}
  ports:
    - port: 1194
      protocol: UDP
""",
}


def _write_chart(root: Path) -> Path:
    chart = root / "throwaway"
    for rel, text in _CHART.items():
        path = chart / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.lstrip())
    return chart


async def test_helm_template_passes_server_dry_run(
    service_cluster: ServiceCluster, tmp_path: Path
) -> None:
    out = await helm_template_dry_run(
        service_cluster, _write_chart(tmp_path), release="demo", namespace="helm-check"
    )
    for kind in ("serviceaccount", "role", "rolebinding", "deployment", "service"):
        assert f"{kind}" in out.lower()
    assert "(server dry run)" in out
    # A dry run stores nothing.
    assert not await service_cluster.kubectl("get", "deployments", "-n", "helm-check", "-o", "name")


async def test_server_dry_run_rejects_unknown_fields(
    service_cluster: ServiceCluster, tmp_path: Path
) -> None:
    with pytest.raises(KubectlError, match="notAField"):
        await helm_template_dry_run(
            service_cluster,
            _write_chart(tmp_path),
            release="bad",
            namespace="helm-check",
            set_values={"extraField": "true"},
        )
