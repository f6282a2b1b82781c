"""The Helm charts agree with the controller: what `helm template` renders is checked
against the builders in vpnctl/reconcile and the controller's RBAC needs, with no cluster.

The agent chart must render the very objects the controller installs in a tenant
cluster (names, labels, selector, config document, hash, pod spec), so an agent
installed either way is the same and the controller can take over. The vpnctl chart
must select the controller's own server pods and grant exactly what the controller
writes. Needs the pinned helm from the harness's cache (`make k8s-bins`); skips cleanly
without it.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, cast

import pytest
import yaml

from tests.support import capi
from vpnctl.api import TunnelSpecBody
from vpnctl.charts import REPO_CHARTS, find_helm
from vpnctl.cli import parse_args
from vpnctl.controller import cli as controller_cli
from vpnctl.kube import resources
from vpnctl.reconcile.agent_objects import tenant_objects
from vpnctl.reconcile.agentdocs import node_role_config, server_role_config
from vpnctl.reconcile.container_resources import (
    DEFAULT_AGENT_RESOURCES,
    DEFAULT_SERVER_RESOURCES,
    DEFAULT_SIDECAR_RESOURCES,
    ContainerResources,
    resources_from_body,
)
from vpnctl.reconcile.durations import parse_duration
from vpnctl.reconcile.names import COMPONENT_SERVER, labels
from vpnctl.reconcile.pod_security import OPENVPN_DROP_PRIVILEGES as DROP
from vpnctl.reconcile.server_policy import server_network_policy
from vpnctl.reconcile.service_objects import (
    HEALTH_PORT_NAME,
    apiserver_config_map,
    ca_secret,
    server_deployment,
    server_service,
)
from vpnctl.reconcile.settings import Settings
from vpnctl.reconcile.tenant_spec import DEFAULT_RENEGOTIATE_SECONDS, TenantSpec, parse_tenant
from vpnctl.testenv import helm_template
from vpnctl.testenv.helm import HelmError

VPNCTL_CHART = REPO_CHARTS / "vpnctl"
REPO_ROOT = REPO_CHARTS.parent
AGENT_CHART = REPO_CHARTS / "agent"
CA_PEM = (
    b"-----BEGIN CERTIFICATE-----\nbm90LWEtcmVhbC1jZXJ0aWZpY2F0ZQ==\n-----END CERTIFICATE-----\n"
)


@pytest.fixture(scope="module")
def helm() -> Path:
    found = find_helm()
    if found is None:
        pytest.skip("the pinned helm is not built; `make k8s-bins` builds it")
    return found


async def render(
    helm: Path,
    chart: Path,
    values: Mapping[str, Any],
    tmp_path: Path,
    *,
    namespace: str = "vpnctl-system",
    api_versions: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    values_file = tmp_path / f"values-{len(list(tmp_path.iterdir()))}.yaml"
    values_file.write_text(yaml.safe_dump(dict(values)))
    text = await helm_template(
        helm, chart, release="test", namespace=namespace, values_files=[values_file]
    )
    return [d for d in yaml.safe_load_all(text) if d]


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in by_kind(objects, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def canonical(value: Any) -> Any:
    """Lists of objects compared as sets (helm writes volumes in template order, the
    builders sort them); lists of scalars (command lines) keep their order."""
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        items = [canonical(v) for v in value]
        if all(isinstance(v, dict) for v in items):
            return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
        return items
    return value


def differences(got: Any, want: Any, path: str = "") -> list[str]:
    """Where two canonical documents differ, as readable paths."""
    if isinstance(got, dict) and isinstance(want, dict):
        out: list[str] = []
        for key in sorted(set(got) | set(want)):
            if key not in want:
                out.append(f"{path}.{key}: rendered but not built: {got[key]!r}")
            elif key not in got:
                out.append(f"{path}.{key}: built but not rendered: {want[key]!r}")
            else:
                out += differences(got[key], want[key], f"{path}.{key}")
        return out
    if isinstance(got, list) and isinstance(want, list) and len(got) == len(want):
        return [
            d
            for i, (g, w) in enumerate(zip(got, want, strict=True))
            for d in differences(g, w, f"{path}[{i}]")
        ]
    return [] if got == want else [f"{path}: rendered {got!r}, built {want!r}"]


def without_desired_hash(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The builders stamp a digest of the whole object (diff.py), which helm can't."""
    out = {k: v for k, v in meta.items() if k != "annotations"}
    annotations = {
        k: v for k, v in (meta.get("annotations") or {}).items() if k != "vpnctl.io/desired-hash"
    }
    if annotations:
        out["annotations"] = annotations
    return out


# --- the agent chart against tenant_objects.py -----------------------------------------------


def tenant(
    *,
    protocol: Literal["udp", "tcp"] = "udp",
    port: int = 1194,
    renegotiate_seconds: int | None = None,
    tunnel_cidr: str,
) -> TenantSpec:
    t = capi.lab_tenant()
    spec: TunnelSpecBody = {
        "clusterName": "tenant-a",
        "tunnelCIDR": tunnel_cidr,
        "transport": {"protocol": protocol, "port": port},
    }
    if renegotiate_seconds is not None:
        spec["transport"]["renegotiateSeconds"] = renegotiate_seconds
    return parse_tenant(
        tunnel=capi.tunnel(spec=spec),
        cluster=t.cluster,
        machines=t.machines,
        nodes=t.nodes,
    )


API_SERVER = "https://203.0.113.10:6443"  # the tenant apiserver as the nodes reach it

CASES = {
    "defaults": dict(
        settings=Settings(agent_image="registry.example/vpnctl:1.0.0"),
        tenant=dict(tunnel_cidr="100.127.255.0/24"),
        remotes=[("203.0.113.7", 1194)],
        values={"image": {"repository": "registry.example/vpnctl", "tag": "1.0.0"}},
    ),
    "everything-changed": dict(
        settings=Settings(
            agent_image="registry.example/vpnctl:2.0.0",
            image_pull_policy="Always",
            image_pull_secrets=("regcred", "mirror"),
            tenant_namespace="tunnels",
            node_health_port=9300,
            kubelet_pki_dir="/var/lib/k0s/kubelet/pki",
            node_priority_class="tenant-critical",
            tun_resource="squat.ai/tun",
            agent_resources=ContainerResources(
                requests=(("cpu", "20m"), ("memory", "128Mi")), limits=(("memory", "1Gi"),)
            ),
        ),
        tenant=dict(protocol="tcp", port=443, renegotiate_seconds=600, tunnel_cidr="10.250.0.0/24"),
        remotes=[("vpn.example", 443), ("203.0.113.9", 31194)],
        values={
            "image": {"repository": "registry.example/vpnctl", "tag": "2.0.0"},
            "imagePullSecrets": ["regcred", "mirror"],
            "healthPort": 9300,
            "kubeletPkiDir": "/var/lib/k0s/kubelet/pki",
            "priorityClassName": "tenant-critical",
            "tunResource": "squat.ai/tun",
            "namespace": {"create": True},
            "resources": {
                "requests": {"cpu": "20m", "memory": "128Mi"},
                "limits": {"memory": "1Gi"},
            },
        },
    ),
    "host-tun": dict(
        settings=Settings(agent_image="registry.example/vpnctl:1.0.0", tun_host_path=True),
        tenant=dict(tunnel_cidr="100.127.255.0/24"),
        remotes=[("203.0.113.7", 1194)],
        values={
            "image": {"repository": "registry.example/vpnctl", "tag": "1.0.0"},
            "tunHostPath": True,
        },
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
async def test_agent_chart_renders_what_the_controller_installs(
    helm: Path, tmp_path: Path, case: dict[str, Any]
) -> None:
    settings: Settings = case["settings"]
    t = tenant(**case["tenant"])
    role = node_role_config(
        tenant=t, settings=settings, remotes=case["remotes"], bootstrap_server=API_SERVER
    )
    built = tenant_objects(
        cluster_name="tenant-a", settings=settings, role_config=role, ca_pem=CA_PEM
    )
    if not case["values"].get("namespace", {}).get("create"):
        # The chart goes into an existing namespace unless asked (namespace.create); the
        # controller makes its own.
        built = tuple(o for o in built if o["kind"] != "Namespace")
    values = {
        **case["values"],
        "clusterName": "tenant-a",
        "apiServer": API_SERVER,
        "caCert": CA_PEM.decode(),
        "server": {
            "protocol": t.spec.transport.protocol,
            "remotes": [{"host": h, "port": p} for h, p in case["remotes"]],
            "tunnelIP": str(t.spec.server_ip),
        },
    }
    if t.spec.transport.renegotiate_seconds != DEFAULT_RENEGOTIATE_SECONDS:
        values["server"]["renegotiateSeconds"] = t.spec.transport.renegotiate_seconds
    if settings.image_pull_policy != "IfNotPresent":
        values["image"]["pullPolicy"] = settings.image_pull_policy
    rendered = await render(
        helm, AGENT_CHART, values, tmp_path, namespace=settings.tenant_namespace
    )

    assert sorted((o["kind"], o["metadata"]["name"]) for o in rendered) == sorted(
        (o["kind"], o["metadata"]["name"]) for o in built
    )
    for want in built:
        got = one(rendered, want["kind"], want["metadata"]["name"])
        where = f"{want['kind']} {want['metadata']['name']}"
        assert got["apiVersion"] == want["apiVersion"], where
        assert got["metadata"] == without_desired_hash(want["metadata"]), where
        body = {k: v for k, v in want.items() if k not in ("metadata", "apiVersion", "kind")}
        got_body = {k: v for k, v in got.items() if k not in ("metadata", "apiVersion", "kind")}
        # Everything: DaemonSet spec (selector, labels, config hash, command, env, ports,
        # probes, capabilities, volumes, tolerations...), ConfigMap data (node.json byte
        # for byte), Role rules, RoleBinding subjects.
        diffs = differences(canonical(got_body), canonical(body))
        assert not diffs, f"{where}:\n" + "\n".join(diffs)


async def test_agent_chart_pod_is_confined_and_makes_its_own_tun(
    helm: Path, tmp_path: Path
) -> None:
    """No host /proc/sys (a writable one is a container escape), no hostPath for tun by
    default (the agent makes it with MKNOD), seccomp RuntimeDefault, no RBAC at all."""
    values = yaml.safe_load((AGENT_CHART / "ci" / "example-values.yaml").read_text())
    rendered = await render(helm, AGENT_CHART, values, tmp_path)
    assert not {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"} & {
        o["kind"] for o in rendered
    }
    pod = one(rendered, "DaemonSet")["spec"]["template"]
    container = pod["spec"]["containers"][0]
    host_paths = {v["hostPath"]["path"] for v in pod["spec"]["volumes"] if "hostPath" in v}
    assert host_paths == {"/var/lib/vpnctl", "/var/lib/kubelet/pki"}
    assert not [m for m in container["volumeMounts"] if "proc" in m["mountPath"]]
    assert container["resources"] == DEFAULT_AGENT_RESOURCES.body()
    assert pod["spec"]["hostNetwork"] is True
    assert container["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {
        "add": sorted(["MKNOD", "NET_ADMIN", *DROP]),
        "drop": ["ALL"],
    }
    assert container["command"] == [
        "python", "-m", "agent", "node", "--config", "/etc/vpnctl/node.json",
    ]  # fmt: skip

    values["tunHostPath"] = True
    pod = one(await render(helm, AGENT_CHART, values, tmp_path), "DaemonSet")["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert {"name": "dev-net-tun", "mountPath": "/dev/net/tun"} in container["volumeMounts"]
    assert container["securityContext"]["capabilities"]["add"] == sorted(["NET_ADMIN", *DROP])


async def test_agent_chart_installs_into_an_existing_namespace(helm: Path, tmp_path: Path) -> None:
    """No Namespace object by default: one in the chart fails `helm install` into a
    namespace that exists, and with --create-namespace (issue 15, item 5)."""
    for name in ("example-values.yaml", "custom-values.yaml"):
        values = yaml.safe_load((AGENT_CHART / "ci" / name).read_text())
        rendered = await render(helm, AGENT_CHART, values, tmp_path, namespace="tenant-ns")
        assert not by_kind(rendered, "Namespace"), name
        assert {o["metadata"]["namespace"] for o in rendered} == {"tenant-ns"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"clusterName": ""}, "clusterName is required"),
        ({"caCert": ""}, "caCert is required"),
        ({"apiServer": ""}, "apiServer is required"),
        ({"apiServer": "http://203.0.113.10:6443"}, "is not an https URL without a path"),
        ({"apiServer": "https://203.0.113.10:6443/api"}, "is not an https URL without a path"),
        ({"caCert": "LS0tLS1CRUdJTi..."}, "caCert is not a PEM certificate"),
        ({"server": {"remotes": []}}, "server.remotes is required"),
        ({"server": {"remotes": [{"host": "x", "port": "1194"}]}}, "/server/remotes/0/port"),
        (
            {"server": {"protocol": "sctp", "remotes": [{"host": "x", "port": 1}]}},
            "at '/server/protocol': value must be one of 'udp', 'tcp'",
        ),
    ],
)
async def test_agent_chart_refuses_incomplete_values(
    helm: Path, tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    values = yaml.safe_load((AGENT_CHART / "ci" / "example-values.yaml").read_text())
    values.update(change)
    with pytest.raises(HelmError, match=re.escape(message)):
        await render(helm, AGENT_CHART, values, tmp_path)


# --- the vpnctl chart ------------------------------------------------------------------------


def controller(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objects, "Deployment", "test-vpnctl")


def controller_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The controller Deployment's container, whatever fullnameOverride names it."""
    (deployment,) = [
        d
        for d in by_kind(objects, "Deployment")
        if d["spec"]["selector"]["matchLabels"].get("app.kubernetes.io/component") == "controller"
    ]
    (container,) = [
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "controller"
    ]
    return cast(dict[str, Any], container)


VPNCTL_VALUE_SETS = {
    "defaults": None,
    **{p.name: p for p in sorted((VPNCTL_CHART / "ci").glob("*.yaml"))},
}


def test_the_ci_values_are_all_here() -> None:
    # A new file in ci/ joins the parametrization below by itself; these are known.
    assert {"custom-values.yaml", "namespaced-values.yaml"} <= set(VPNCTL_VALUE_SETS)


@pytest.mark.parametrize("values_file", VPNCTL_VALUE_SETS.values(), ids=VPNCTL_VALUE_SETS.keys())
async def test_the_rendered_command_line_is_what_the_real_parser_accepts(
    helm: Path, tmp_path: Path, values_file: Path | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 11: the controller's command, args and env, as rendered, parsed by the
    parser `vpnctl` itself runs (vpnctl.cli.parse_args, the console script's), then
    turned into the settings `vpnctl run` starts with, as run() does before it connects."""
    values: dict[str, Any] = yaml.safe_load(values_file.read_text()) if values_file else {}
    objects = await render(helm, VPNCTL_CHART, values, tmp_path, namespace="vpnctl-system")
    container = controller_container(objects)
    c = values.get("controller", {})

    # `vpnctl` is the console script whose main() parses with parse_args.
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert container["command"] == ["vpnctl"]
    assert scripts["vpnctl"] == "vpnctl.cli:main"
    # The environment the pod gets, where it is given by value or by the downward API.
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    monkeypatch.setenv("POD_NAMESPACE", "vpnctl-system")
    monkeypatch.setenv("POD_NAME", "test-vpnctl-0")
    for name, var in env.items():
        if "value" in var:
            monkeypatch.setenv(name, var["value"])

    args = parse_args(container["args"])  # argparse exits 2 on what `vpnctl` would reject
    assert args.cmd == "run"
    settings = controller_cli.settings_from_args(args)
    controller_cli.budgets_from_args(args)
    parse_duration(args.node_cert_lifetime)

    # Scope: every namespace unless controller.namespace names one.
    confined = c.get("namespace") or "*"
    assert settings.namespace == (None if confined == "*" else confined)
    # The ports the pod declares are the ones the controller listens on.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert (settings.metrics_host, settings.metrics_port) == ("0.0.0.0", ports["http-metrics"])
    assert (settings.health_host, settings.health_port) == ("0.0.0.0", ports["http-health"])
    assert settings.metrics_port != settings.health_port
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "http-health"
    # The agent image: controller.agentImage, else the controller's own.
    assert settings.tenant.build.agent_image == (c.get("agentImage") or container["image"])
    # The rollout of a new agent image: controller.imageRollout.
    rollout = c.get("imageRollout", {})
    assert settings.tenant.image_rollout.max_rolling == rollout.get("maxRolling", 1)
    assert settings.tenant.image_rollout.deadline == parse_duration(
        rollout.get("deadline", "10m")
    )
    # Two replicas elect a leader; the lease is in the release namespace.
    assert settings.leader_elect == c.get("leaderElection", {}).get("enabled", True)
    assert settings.lease_namespace == "vpnctl-system"
    # Requests and limits of the tenants' containers: tenantResources, else the defaults.
    build = settings.tenant.build
    for component, default in (
        ("server", DEFAULT_SERVER_RESOURCES),
        ("sidecar", DEFAULT_SIDECAR_RESOURCES),
        ("agent", DEFAULT_AGENT_RESOURCES),
    ):
        wanted = values.get("tenantResources", {}).get(component)
        got = getattr(build, f"{component}_resources")
        assert got == (resources_from_body(wanted) if wanted else default), component
    for flag in c.get("extraArgs", []):
        assert flag in container["args"]
    if "--log-level=DEBUG" in c.get("extraArgs", []):
        assert args.log_level == "DEBUG"


async def test_metrics_port_and_extra_args_reach_the_command_line(
    helm: Path, tmp_path: Path
) -> None:
    values = {"controller": {"extraArgs": ["--log-level=DEBUG"], "metricsPort": 9000}}
    container = controller_container(await render(helm, VPNCTL_CHART, values, tmp_path))
    assert container["args"][-1] == "--log-level=DEBUG"
    assert "--metrics-address=:9000" in container["args"]
    assert {"name": "http-metrics", "containerPort": 9000, "protocol": "TCP"} in container["ports"]
    settings = controller_cli.settings_from_args(parse_args(container["args"]))
    assert settings.metrics_port == 9000

    values = {"controller": {"args": ["run", "--once"], "replicas": 1}}
    container = controller_container(await render(helm, VPNCTL_CHART, values, tmp_path))
    assert container["args"] == ["run", "--once"]


async def test_two_replicas_need_leader_election(helm: Path, tmp_path: Path) -> None:
    values: dict[str, Any] = {"controller": {"leaderElection": {"enabled": False}}}
    with pytest.raises(HelmError, match=r"enable leader election or set controller\.replicas to 1"):
        await render(helm, VPNCTL_CHART, values, tmp_path)
    values = {"controller": {"leaderElection": {"enabled": False}, "replicas": 1}}
    container = controller(await render(helm, VPNCTL_CHART, values, tmp_path))["spec"]["template"][
        "spec"
    ]["containers"][0]
    assert "--leader-elect" not in container["args"]


async def test_controller_runs_unprivileged(helm: Path, tmp_path: Path) -> None:
    deployment = controller(await render(helm, VPNCTL_CHART, {}, tmp_path))
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = pod["containers"][0]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # The agent image is a flag (--agent-image), not an environment variable nobody reads.
    assert not [name for name in env if name.startswith("VPNCTL_")]


def allows(rules: list[dict[str, Any]], *, group: str, resource: str, verb: str) -> bool:
    return any(
        group in r.get("apiGroups", [])
        and resource in r.get("resources", [])
        and verb in r.get("verbs", [])
        and not r.get("resourceNames")
        for r in rules
    )


def _plural(api_version: str, kind: str) -> resources.Resource:
    known = [
        v
        for v in vars(resources).values()
        if isinstance(v, resources.Resource) and v.kind == kind and v.api_version == api_version
    ]
    assert known, f"{api_version} {kind} is not in vpnctl.kube.resources"
    return known[0]


def _service_side_objects() -> Iterator[dict[str, Any]]:
    t = tenant(tunnel_cidr="198.18.8.0/24")
    settings = Settings(agent_image="i")
    yield ca_secret(tenant=t, cert_pem=CA_PEM, key_pem=b"k")
    yield apiserver_config_map(tenant=t, role_config={})
    yield server_deployment(
        tenant=t, settings=settings, role_config=server_role_config(tenant=t, settings=settings)
    )
    yield server_service(tenant=t)
    yield server_network_policy(tenant=t, settings=settings)


async def test_controller_rbac_is_what_the_controller_calls(helm: Path, tmp_path: Path) -> None:
    """Issue 9, item 6: no update or delete it never uses. By default (every namespace
    watched) a ClusterRole; tests/kube/test_rbac.py runs the controller under it."""
    objects = await render(helm, VPNCTL_CHART, {}, tmp_path)
    role = one(objects, "ClusterRole", "test-vpnctl")
    assert "namespace" not in role["metadata"]
    rules = role["rules"]
    binding = one(objects, "ClusterRoleBinding", "test-vpnctl")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "test-vpnctl",
    }  # fmt: skip
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "test-vpnctl", "namespace": "vpnctl-system"}
    ]
    # Every kind the builders make in tenant namespaces: read, watched where the controller
    # watches it, and server-side applied (create + patch); never updated or deleted.
    for obj in _service_side_objects():
        res = _plural(obj["apiVersion"], obj["kind"])
        for verb in ("get", "create", "patch"):
            assert allows(rules, group=res.group, resource=res.plural, verb=verb), (res, verb)
        assert not allows(rules, group=res.group, resource=res.plural, verb="delete"), res
        # Updated only where a read-modify-write needs optimistic locking: ConfigMaps (the
        # revocation book, vpnctl/controller/revocation_store.py).
        updated = res == resources.CONFIG_MAP
        assert allows(rules, group=res.group, resource=res.plural, verb="update") == updated, res
    for res in (resources.SECRET, resources.CONFIG_MAP, resources.SERVICE, resources.DEPLOYMENT):
        for verb in ("list", "watch"):
            assert allows(rules, group=res.group, resource=res.plural, verb=verb), (res, verb)
    for verb in ("get", "list", "watch"):
        for res in (resources.CLUSTER, resources.MACHINE):
            assert allows(rules, group=res.group, resource=res.plural, verb=verb)
    # Cluster lifecycle is not ours: no writes to CAPI objects.
    for verb in ("create", "patch", "update", "delete"):
        assert not allows(rules, group="cluster.x-k8s.io", resource="clusters", verb=verb)
    for verb in ("create", "patch", "delete"):
        assert allows(rules, group="vpnctl.io", resource="tunnels", verb=verb)
    assert not allows(rules, group="vpnctl.io", resource="tunnels", verb="update")
    assert allows(rules, group="vpnctl.io", resource="tunnels/status", verb="patch")
    assert not allows(rules, group="vpnctl.io", resource="tunnels/status", verb="update")
    assert allows(rules, group="vpnctl.io", resource="tunnels/finalizers", verb="update")
    for verb in ("get", "create", "update"):  # vpnctl.kube.events: dedup by name
        assert allows(rules, group="", resource="events", verb=verb)
    assert not [r for r in rules if "events.k8s.io" in r["apiGroups"]]
    # Least privilege: no wildcards.
    for rule in rules:
        assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"], rule
    # Server pods: listed (metrics) and annotated (kubelet refreshes their config at once).
    for verb in ("list", "patch"):
        assert allows(rules, group="", resource="pods", verb=verb)
    for verb in ("get", "create", "update", "delete"):
        assert not allows(rules, group="", resource="pods", verb=verb)
    # Cluster-wide: the controller's role and reading the service cluster's networks.
    cluster_roles = {r["metadata"]["name"]: r for r in by_kind(objects, "ClusterRole")}
    ours = {n: r for n, r in cluster_roles.items() if "-capi-" not in n}
    assert set(ours) == {"test-vpnctl", "test-vpnctl-networks"}
    assert ours["test-vpnctl-networks"]["rules"] == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]},
        {"apiGroups": ["networking.k8s.io"], "resources": ["servicecidrs"], "verbs": ["list"]},
    ]
    assert not allows(rules, group="coordination.k8s.io", resource="leases", verb="get")
    # Leases only in the release namespace.
    leases = one(objects, "Role", "test-vpnctl-leases")
    assert leases["metadata"]["namespace"] == "vpnctl-system"
    for verb in ("get", "create", "update"):
        assert allows(leases["rules"], group="coordination.k8s.io", resource="leases", verb=verb)


async def test_controller_namespace_drives_args_and_rbac_scope(helm: Path, tmp_path: Path) -> None:
    """Every namespace by default (and with "*"): no --namespace, a ClusterRole. A named
    namespace: --namespace=NAME and the same rules as a Role there, nothing cluster-wide
    but the networks' read."""
    everywhere = await render(helm, VPNCTL_CHART, {}, tmp_path)
    rules = one(everywhere, "ClusterRole", "test-vpnctl")["rules"]
    for unconfined in ({}, {"controller": {"namespace": "*"}}):
        objects = await render(helm, VPNCTL_CHART, unconfined, tmp_path)
        assert not [a for a in controller_container(objects)["args"] if "--namespace" in a]
        assert one(objects, "ClusterRole", "test-vpnctl")["rules"] == rules
        assert one(objects, "ClusterRoleBinding", "test-vpnctl")["roleRef"]["kind"] == (
            "ClusterRole"
        )
        assert not [o for o in by_kind(objects, "Role") if o["metadata"]["name"] == "test-vpnctl"]

    values: dict[str, Any] = {"controller": {"namespace": "tenants"}}
    objects = await render(helm, VPNCTL_CHART, values, tmp_path)
    assert one(objects, "Role", "test-vpnctl")["metadata"]["namespace"] == "tenants"
    assert one(objects, "Role", "test-vpnctl")["rules"] == rules
    assert one(objects, "RoleBinding", "test-vpnctl")["metadata"]["namespace"] == "tenants"
    assert one(objects, "Role", "test-vpnctl-leases")["metadata"]["namespace"] == "vpnctl-system"
    assert "--namespace=tenants" in controller_container(objects)["args"]
    ours = {r["metadata"]["name"] for r in by_kind(objects, "ClusterRole")}
    assert {n for n in ours if "-capi-" not in n} == {"test-vpnctl-networks"}


async def test_reserved_cidrs_and_metrics_namespaces_in_values(helm: Path, tmp_path: Path) -> None:
    values: dict[str, Any] = {
        "reservedCIDRs": ["10.96.0.0/12", "10.244.0.0/16"],
        "controller": {"metricsAllowNamespaces": ["monitoring"]},
    }
    objects = await render(helm, VPNCTL_CHART, values, tmp_path)
    args = controller(objects)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[-3:] == [
        "--reserved-cidr=10.96.0.0/12",
        "--reserved-cidr=10.244.0.0/16",
        "--metrics-allow-namespace=monitoring",
    ]
    assert "--no-detect-reserved-cidrs" not in args
    objects = await render(helm, VPNCTL_CHART, {"detectReservedCIDRs": False}, tmp_path)
    args = controller(objects)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--no-detect-reserved-cidrs" in args
    assert not [o for o in by_kind(objects, "ClusterRole") if "networks" in o["metadata"]["name"]]
    with pytest.raises(HelmError, match="/reservedCIDRs/0"):
        await render(helm, VPNCTL_CHART, {"reservedCIDRs": ["the pods"]}, tmp_path)


MONITORING = {"monitoring": {"enabled": True}}


async def test_monitoring_is_off_by_default(helm: Path, tmp_path: Path) -> None:
    objects = await render(helm, VPNCTL_CHART, {}, tmp_path)
    assert not [o for o in objects if o["apiVersion"].startswith("monitoring.coreos.com/")]


async def test_pod_monitor_selects_the_controllers_server_pods(helm: Path, tmp_path: Path) -> None:
    objects = await render(helm, VPNCTL_CHART, MONITORING, tmp_path)
    monitor = one(objects, "PodMonitor")
    server_pod_labels = labels(cluster_name="any", component=COMPONENT_SERVER)
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= server_pod_labels.items()
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == [HEALTH_PORT_NAME]
    # ... and not the controller's own pods.
    pod_labels = controller(objects)["spec"]["template"]["metadata"]["labels"]
    assert not selector.items() <= pod_labels.items()


async def test_service_monitor_scrapes_the_controller(helm: Path, tmp_path: Path) -> None:
    objects = await render(helm, VPNCTL_CHART, MONITORING, tmp_path)
    monitor = one(objects, "ServiceMonitor")
    service = one(objects, "Service", "test-vpnctl-metrics")
    pod = controller(objects)["spec"]["template"]
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    port_names = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["http-metrics"]
    assert service["spec"]["ports"][0]["targetPort"] in port_names
    # The tenant label is tenant_namespace: nothing relies on honorLabels.
    assert "honorLabels" not in monitor["spec"]["endpoints"][0]


ALERTS = {
    "VpnctlControllerDown",
    "VpnctlNoLeader",
    "VpnctlTunnelNotReady",
    "VpnctlServerScrapeFailing",
    "VpnctlNodeDisconnected",
    "VpnctlKubeletUnreachable",
    "VpnctlCertificateExpiring",
    "VpnctlCRLExpiring",
    "VpnctlReconcileErrors",
    "VpnctlWatchRestarts",
}


def alert_rules(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    rule = one(objects, "PrometheusRule")
    return {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}


async def test_prometheus_rule_alerts(helm: Path, tmp_path: Path) -> None:
    alerts = alert_rules(await render(helm, VPNCTL_CHART, MONITORING, tmp_path))
    assert set(alerts) == ALERTS
    assert alerts["VpnctlTunnelNotReady"]["for"] == "5m"
    assert "< 7 * 86400" in alerts["VpnctlCertificateExpiring"]["expr"]
    runbook = (REPO_CHARTS.parent / "docs" / "runbook.md").read_text()
    for name, rule in alerts.items():
        # Every alert has a runbook section of its own name (GitHub's anchor: lower case).
        assert rule["annotations"]["runbook_url"].endswith(f"/docs/runbook.md#{name.lower()}")
        assert f"\n## {name}\n" in runbook, f"docs/runbook.md has no section {name}"
        assert rule["labels"]["severity"] == "warning"
        assert rule["annotations"]["summary"]
        if name in ("VpnctlControllerDown", "VpnctlNoLeader"):
            continue  # about the controller as a whole: no label to name
        assert "{{ $labels" in json.dumps(rule["annotations"]) or "{{ $value" in json.dumps(
            rule["annotations"]
        )

    values = {
        "monitoring": {
            "enabled": True,
            "prometheusRule": {
                "disabled": ["VpnctlWatchRestarts"],
                "certificateExpiryDays": 14,
                "tunnelNotReadyFor": "10m",
                "additionalLabels": {"team": "platform"},
                "controllerJob": "kube-prometheus/vpnctl",
                "runbookURL": "https://wiki.example/vpnctl",
            },
        }
    }
    alerts = alert_rules(await render(helm, VPNCTL_CHART, values, tmp_path))
    assert set(alerts) == ALERTS - {"VpnctlWatchRestarts"}
    assert "< 14 * 86400" in alerts["VpnctlCertificateExpiring"]["expr"]
    assert alerts["VpnctlTunnelNotReady"]["for"] == "10m"
    assert alerts["VpnctlNodeDisconnected"]["labels"] == {"severity": "warning", "team": "platform"}
    assert 'job="kube-prometheus/vpnctl"' in alerts["VpnctlControllerDown"]["expr"]
    assert 'job="kube-prometheus/vpnctl"' in alerts["VpnctlNoLeader"]["expr"]
    assert (
        alerts["VpnctlCRLExpiring"]["annotations"]["runbook_url"]
        == "https://wiki.example/vpnctl#vpnctlcrlexpiring"
    )


def _exported_names(registry: Any) -> set[str]:
    names: set[str] = set()
    for family in registry.collect():
        names.add(family.name)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        if family.type == "histogram":
            names |= {f"{family.name}_{s}" for s in ("bucket", "sum", "count")}
    return names


async def test_alerts_read_metrics_that_exist(helm: Path, tmp_path: Path) -> None:
    metrics = pytest.importorskip("vpnctl.controller.metrics")
    from prometheus_client import CollectorRegistry

    from agent.roles.server_metrics import ServerMetrics

    registry = CollectorRegistry()
    metrics.ControllerMetrics(registry=registry)
    ServerMetrics(registry=registry)
    exported = _exported_names(registry)

    alerts = alert_rules(await render(helm, VPNCTL_CHART, MONITORING, tmp_path))
    used = {m for r in alerts.values() for m in re.findall(r"\bvpnctl_[a-z_]+", r["expr"])}
    assert used, "the alerts read no vpnctl metric"
    assert used <= exported, f"alerts read metrics nobody exports: {sorted(used - exported)}"


# --- values.schema.json ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"controller": {"replicas": "two"}},
            "at '/controller/replicas': got string, want integer",
        ),
        ({"controller": {"replica": 2}}, "additional properties 'replica' not allowed"),
        ({"controller": {"metricsPort": 70000}}, "/controller/metricsPort"),
        ({"image": {"repository": "x", "pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"capi": {"bootstrap": {"rules": [{"verbs": ["get"]}]}}}, "/capi/bootstrap/rules/0"),
        ({"monitoring": {"prometheusRule": {"disabled": ["NoSuchAlert"]}}}, "/disabled/0"),
        ({"tenantResources": {"agent": {"limits": {"memory": "lots"}}}}, "/agent/limits/memory"),
        ({"tenantResources": {"agent": {"limits": {"gpu": 1}}}}, "additional properties 'gpu'"),
    ],
)
async def test_vpnctl_schema_rejects_bad_values(
    helm: Path, tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(HelmError, match=re.escape(message)):
        await render(helm, VPNCTL_CHART, values, tmp_path)


# --- Cluster API -----------------------------------------------------------------------------


async def test_capi_core_only_by_default_providers_when_their_image_is_set(
    helm: Path, tmp_path: Path
) -> None:
    objects = await render(helm, VPNCTL_CHART, {}, tmp_path)
    deployments = {d["metadata"]["name"]: d for d in by_kind(objects, "Deployment")}
    assert set(deployments) == {"test-vpnctl", "capi-controller-manager"}
    core = deployments["capi-controller-manager"]
    assert core["metadata"]["namespace"] == "capi-system"
    container = core["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.k8s.io/cluster-api/cluster-api-controller:v1.8.4"
    assert "--leader-elect" in container["args"]

    values = yaml.safe_load((VPNCTL_CHART / "ci" / "custom-values.yaml").read_text())
    objects = await render(helm, VPNCTL_CHART, values, tmp_path)
    deployments = {d["metadata"]["name"]: d for d in by_kind(objects, "Deployment")}
    assert set(deployments) == {
        "vpnctl-ctl",
        "capi-controller-manager",
        "capi-kubeadm-bootstrap-manager",
        "capi-hosted-control-plane-manager",
        "capi-openstack-infrastructure-manager",
    }
    assert deployments["capi-openstack-infrastructure-manager"]["metadata"]["namespace"] == (
        "capo-system"
    )
    namespaces = {n["metadata"]["name"] for n in by_kind(objects, "Namespace")}
    assert namespaces == {"capi-custom", "capo-system"}
    # Each provider's ServiceAccount is bound to its ClusterRole holding its rules.
    role = one(objects, "ClusterRole", "vpnctl-ctl-capi-kubeadm-bootstrap-manager")
    assert allows(role["rules"], group="bootstrap.cluster.x-k8s.io", resource="*", verb="update")
    # Everything namespaced says where it goes (kubectl apply -f of the output works too).
    for obj in objects:
        if obj["kind"] not in {
            "Namespace",
            "ClusterRole",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
        }:
            assert obj["metadata"].get("namespace"), (obj["kind"], obj["metadata"]["name"])

    objects = await render(helm, VPNCTL_CHART, {"capi": {"enabled": False}}, tmp_path)
    assert not [o for o in objects if "capi" in o["metadata"]["name"]]


async def test_a_provider_needs_a_name(helm: Path, tmp_path: Path) -> None:
    values = {"capi": {"infrastructure": {"image": "registry.example/capx:1"}}}
    with pytest.raises(HelmError, match=re.escape("capi.infrastructure.name is required")):
        await render(helm, VPNCTL_CHART, values, tmp_path)


TUNNEL_CRD_FILE = VPNCTL_CHART / "files" / "crds" / "tunnels.vpnctl.io.yaml"


async def test_tunnel_crd_is_a_template_kept_on_uninstall(helm: Path, tmp_path: Path) -> None:
    # Not from crds/ (which helm never upgrades): rendered even without --include-crds.
    text = await helm_template(
        helm, VPNCTL_CHART, release="test", namespace="vpnctl-system", include_crds=False
    )
    crds = by_kind([d for d in yaml.safe_load_all(text) if d], "CustomResourceDefinition")
    assert [c["metadata"]["name"] for c in crds] == ["tunnels.vpnctl.io"]
    (crd,) = crds
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    labels = crd["metadata"]["labels"]
    assert labels["clusterctl.cluster.x-k8s.io"] == ""  # clusterctl move's discovery
    assert labels["app.kubernetes.io/instance"] == "test"
    # The very schema of the file the tests, the lab and `kubectl apply` read.
    source = yaml.safe_load(TUNNEL_CRD_FILE.read_text())
    assert crd["spec"] == source["spec"]
    assert not (VPNCTL_CHART / "crds").exists(), "a crds/ copy would be installed twice"


async def test_crds_install_false_renders_no_crd(helm: Path, tmp_path: Path) -> None:
    objects = await render(helm, VPNCTL_CHART, {"crds": {"install": False}}, tmp_path)
    assert not by_kind(objects, "CustomResourceDefinition")
    assert by_kind(objects, "Deployment")
    with pytest.raises(HelmError, match="/crds/install"):
        await render(helm, VPNCTL_CHART, {"crds": {"install": "yes"}}, tmp_path)
