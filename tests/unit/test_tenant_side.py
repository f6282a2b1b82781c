"""The pure parts of the tenant side, its supervisor, and what it does without a tenant.

The behaviour against tenant apiservers (install, drift repair, CSRs, cleanup) is in
tests/kube/test_tenant_side.py.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
import random

import pytest
from prometheus_client import CollectorRegistry

import certs
from tests.support import kubeconfigs
from tests.support.logfmt import parse_record
from vpnctl.controller.budgets import Budgets, TenantBudget
from vpnctl.controller.interfaces import TenantRef
from vpnctl.controller.tenant_csr_loop import CsrLoop
from vpnctl.controller.tenant_install import (
    REASON_APPLY_FAILED,
    REASON_KUBECONFIG_INVALID,
    REASON_REFUSED,
    REASON_UNREACHABLE,
    result_for_error,
)
from vpnctl.controller.tenant_side import KubeTenantSide
from vpnctl.controller.tenant_state import FailedPasses, TenantCalls, TenantState
from vpnctl.controller.tenant_tasks import TenantTasks
from vpnctl.kube import (
    CLUSTER_ROLE,
    CONFIG_MAP,
    DAEMON_SET,
    NAMESPACE,
    Forbidden,
    Invalid,
    Kube,
    KubeObject,
    ManualClock,
    TooManyRequests,
    TransportError,
    Unauthorized,
)
from vpnctl.kube.retry import backoff
from vpnctl.kube.watch import Store, WatchMetrics
from vpnctl.reconcile.agent_objects import tenant_objects
from vpnctl.reconcile.names import labels
from vpnctl.reconcile.node_certs import SignedCert, issued_certificate, signed_report
from vpnctl.reconcile.revocation_book import IssuedCert
from vpnctl.reconcile.settings import Settings
from vpnctl.reconcile.tenant_refs import (
    KNOWN_RESOURCES,
    ObjectRef,
    WatchSpec,
    desired_by_ref,
    drifted,
    label_selector,
    object_ref,
    resource_for,
    watch_specs,
)

SETTINGS = Settings(agent_image="registry.example/vpnctl:1")
TENANT = TenantRef(namespace="tenant-a", cluster="tenant-a")
SERVER_KEY = certs.new_tls_crypt_v2_server_key()
CERT = b"-----BEGIN CERTIFICATE-----\nnot-a-real-cert\n-----END CERTIFICATE-----\n"


def agent_objects() -> list[KubeObject]:
    return list(
        tenant_objects(
            cluster_name="tenant-a", settings=SETTINGS, role_config={"v": 1}, ca_pem=CERT
        )
    )


# --- object bookkeeping ----------------------------------------------------------------------


def test_every_agent_object_has_a_known_resource_and_a_ref() -> None:
    refs = [object_ref(o) for o in agent_objects()]
    assert [str(r) for r in refs] == [
        "Namespace vpnctl-system",
        "ServiceAccount vpnctl-system/vpnctl-node-agent",
        "ConfigMap vpnctl-system/vpnctl-node-agent",
        "DaemonSet vpnctl-system/vpnctl-node-agent",
    ]
    assert all(r.res in KNOWN_RESOURCES for r in refs)
    assert resource_for({"apiVersion": "apps/v1", "kind": "DaemonSet"}) == DAEMON_SET


def test_an_unknown_kind_is_refused_with_where_to_add_it() -> None:
    with pytest.raises(ValueError, match=r"batch/v1/Job.*KNOWN_RESOURCES"):
        resource_for({"apiVersion": "batch/v1", "kind": "Job"})
    # Same kind, another group version: not the same resource.
    with pytest.raises(ValueError, match="apps/v1beta2/DaemonSet"):
        resource_for({"apiVersion": "apps/v1beta2", "kind": "DaemonSet"})


def test_desired_by_ref_keeps_the_apply_order_and_refuses_bad_input() -> None:
    objects = agent_objects()
    by_ref = desired_by_ref(reversed(objects))
    assert [r.res.kind for r in by_ref] == [o["kind"] for o in reversed(objects)]
    with pytest.raises(ValueError, match="twice"):
        desired_by_ref([objects[0], objects[0]])
    with pytest.raises(ValueError, match=r"needs metadata\.namespace"):
        object_ref({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}})
    with pytest.raises(ValueError, match="is cluster-scoped"):
        object_ref(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "namespace": "y"}}
        )
    with pytest.raises(ValueError, match=r"no metadata\.name"):
        object_ref({"apiVersion": "v1", "kind": "Namespace", "metadata": {}})


def test_one_watch_per_kind_in_its_namespace() -> None:
    specs = watch_specs(object_ref(o) for o in agent_objects())
    assert len(specs) == 4
    assert WatchSpec(NAMESPACE, None) in specs
    assert WatchSpec(DAEMON_SET, "vpnctl-system") in specs
    # A kind in two namespaces is watched in all of them; cluster-scoped ones as such.
    specs = watch_specs(
        [
            ObjectRef(CONFIG_MAP, "a", "x"),
            ObjectRef(CONFIG_MAP, "b", "x"),
            ObjectRef(CLUSTER_ROLE, "", "r"),
        ]
    )
    assert set(specs) == {WatchSpec(CONFIG_MAP, None), WatchSpec(CLUSTER_ROLE, None)}


def test_the_label_selector_selects_what_the_builders_label() -> None:
    selector = label_selector("tenant-a")
    wanted = dict(term.split("=") for term in selector.split(","))
    for obj in agent_objects():
        assert wanted.items() <= obj["metadata"]["labels"].items(), obj["kind"]
    built = labels(cluster_name="tenant-a", component="node-agent")
    assert wanted.items() <= built.items()
    assert label_selector("tenant-b") != selector
    # `helm install` of the agent chart sets managed-by to Helm on what it creates: the
    # controller still selects those objects (tests/kube/test_agent_chart_install.py).
    assert wanted.items() <= {**built, "app.kubernetes.io/managed-by": "Helm"}.items()


def test_drift_is_an_absent_or_edited_object_and_unknown_ones_wait() -> None:
    desired = desired_by_ref(agent_objects())
    refs = list(desired)
    _ns, sa, cm, ds = refs
    edited_cm = {**desired[cm], "data": {"node.json": "{}"}}
    live: dict[ObjectRef, KubeObject | None] = {
        sa: None,  # deleted
        cm: edited_cm,
        ds: {**desired[ds], "status": {"numberReady": 3}},  # server additions are fine
        # ns: its watch has not listed yet
    }
    assert drifted(desired, live) == [sa, cm]
    assert drifted(desired, {}) == []


# --- API errors become results ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "reason", "words"),
    [
        (TransportError("connection refused", method="GET", path="/api"), REASON_UNREACHABLE,
         "did not answer"),
        (TooManyRequests("slow down", status=429), REASON_UNREACHABLE, "did not answer"),
        (Unauthorized("no", status=401), REASON_REFUSED, "refused the credentials"),
        (Forbidden("no", status=403), REASON_REFUSED, "refused the credentials"),
        (Invalid("bad", status=422), REASON_APPLY_FAILED, "failed"),
    ],
)  # fmt: skip
def test_api_errors_map_to_install_results(error: Exception, reason: str, words: str) -> None:
    assert isinstance(error, TransportError | TooManyRequests | Unauthorized | Forbidden | Invalid)
    result = result_for_error(error, tenant=TENANT, server="https://198.18.0.1:6443")
    assert not result.installed
    assert result.reason == reason
    assert words in result.message
    assert "tenant-a/tenant-a" in result.message
    if reason != REASON_APPLY_FAILED:
        assert "Secret tenant-a/tenant-a-kubeconfig" in result.message
        assert "https://198.18.0.1:6443" in result.message


# --- serials of signed node certificates ------------------------------------------------------

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def issued_csr(cert_pem: bytes | str) -> KubeObject:
    encoded = cert_pem if isinstance(cert_pem, str) else base64.b64encode(cert_pem).decode()
    return {"metadata": {"name": "c"}, "status": {"certificate": encoded}}


def test_an_issued_csr_yields_the_node_and_serial_only_for_our_ca() -> None:
    tunnel_ca, other_ca = ca(), ca()
    leaf = certs.new_client_cert(
        tunnel_ca, common_name="node-1", now=NOW, lifetime=dt.timedelta(days=7)
    )
    info = certs.cert_info(leaf.cert_pem)
    # status.certificate may hold a chain: the leaf comes first.
    found = issued_certificate(
        issued_csr(leaf.cert_pem + tunnel_ca.cert_pem), ca_pem=tunnel_ca.cert_pem, now=NOW
    )
    assert found == SignedCert(
        node="node-1",
        serial=format(info.serial, "x"),
        not_before=info.not_before,
        not_after=info.not_after,
    )
    assert found.serial == found.serial.lower()
    assert issued_certificate(issued_csr(leaf.cert_pem), ca_pem=other_ca.cert_pem, now=NOW) is None
    later = NOW + dt.timedelta(days=8)
    assert (
        issued_certificate(issued_csr(leaf.cert_pem), ca_pem=tunnel_ca.cert_pem, now=later) is None
    )
    for broken in ("!!not base64", base64.b64encode(b"no pem here").decode(), ""):
        assert issued_certificate(issued_csr(broken), ca_pem=tunnel_ca.cert_pem, now=NOW) is None
    assert issued_certificate({"metadata": {}}, ca_pem=tunnel_ca.cert_pem, now=NOW) is None


def test_the_signed_report_is_oldest_first_without_expired_ones() -> None:
    day = dt.timedelta(days=1)
    newer = SignedCert(node="node-1", serial="b2", not_before=NOW, not_after=NOW + 7 * day)
    older = SignedCert(node="node-2", serial="a1", not_before=NOW - day, not_after=NOW + day)
    gone = SignedCert(node="node-3", serial="c3", not_before=NOW - 9 * day, not_after=NOW)
    assert signed_report([newer, gone, older], now=NOW) == (("node-2", "a1"), ("node-1", "b2"))


# --- the supervisor (TenantTasks) -----------------------------------------------------------


def supervisor(clock: ManualClock, *, max_crashes: int = 3) -> TenantTasks:
    rng = random.Random(3)
    return TenantTasks(
        clock=clock,
        backoff=lambda n: backoff(attempt=n, base=1.0, cap=8.0, rng=rng),
        max_crashes=max_crashes,
        stable_after=60.0,
    )


async def test_a_crashing_task_is_logged_restarted_with_backoff_and_unhealthy(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock(autoadvance=True)
    sup = supervisor(clock)
    calls = 0
    running = asyncio.Event()

    async def body() -> None:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise RuntimeError(f"boom {calls}")
        running.set()
        await asyncio.Event().wait()

    caplog.set_level(logging.ERROR, logger="vpnctl.controller.tenant_tasks")
    async with asyncio.TaskGroup() as group:
        task = sup.spawn(group, "tenant x/y repair", body)
        await running.wait()
        assert calls == 4
        assert sup.crashes(task) == 3
        # Doubling from 1 s, jittered to [50 %, 100 %].
        assert len(clock.sleeps) == 3
        for attempt, slept in enumerate(clock.sleeps, start=1):
            assert 0.5 * 2 ** (attempt - 1) <= slept <= 2 ** (attempt - 1)
        assert not sup.healthy()  # three crashes in a row, and not stable since
        clock.advance(61)
        assert sup.healthy()  # it has run for a minute now
        task.cancel()
        sup.discard(task)
    crashes = [r for r in caplog.records if "event=tenant_task_crashed" in r.getMessage()]
    assert len(crashes) == 3
    assert all(r.exc_info is not None for r in crashes)  # the traceback is there
    assert "task='tenant x/y repair'" in crashes[0].getMessage()


async def test_a_task_that_returns_counts_as_a_crash_and_a_stable_run_resets_the_count() -> None:
    clock = ManualClock(autoadvance=True)
    sup = supervisor(clock, max_crashes=2)
    calls = 0
    second = asyncio.Event()

    async def body() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            clock.advance(120)  # ran long and well, then stopped
            return
        second.set()
        await asyncio.Event().wait()

    async with asyncio.TaskGroup() as group:
        task = sup.spawn(group, "t", body)
        await second.wait()
        assert sup.crashes(task) == 1  # a fresh streak: the first run was stable
        assert sup.healthy()
        task.cancel()
        sup.discard(task)


async def test_a_task_ended_behind_the_supervisors_back_is_unhealthy() -> None:
    sup = supervisor(ManualClock())

    async def forever() -> None:
        await asyncio.Event().wait()

    async with asyncio.TaskGroup() as group:
        task = sup.spawn(group, "t", forever)
        await asyncio.sleep(0)
        assert sup.healthy()
        task.cancel()
    assert not sup.healthy()
    sup.discard(task)
    assert sup.healthy()


# --- KubeTenantSide without a tenant -----------------------------------------------------------


def tenant_side(registry: CollectorRegistry | None = None) -> KubeTenantSide:
    return KubeTenantSide(
        registry=registry or CollectorRegistry(),
        clock=ManualClock(autoadvance=True),
        rng=random.Random(1),
        node_cert_lifetime=dt.timedelta(days=30),
    )


def ca() -> certs.Issued:
    return certs.new_ca(
        common_name="tenant-a-vpn-ca",
        now=dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
        lifetime=dt.timedelta(days=365),
    )


async def test_outside_its_context_it_refuses_work_and_is_unhealthy() -> None:
    ts = tenant_side()
    assert not ts.healthy()
    with pytest.raises(RuntimeError, match="async with"):
        await ts.ensure(
            tenant=TENANT,
            kubeconfig_text="",
            desired_objects=[],
            ca=ca(),
            machines=[],
            tls_crypt_server_key=SERVER_KEY,
        )
    async with ts:
        assert ts.healthy()
        assert ts.repairs(TENANT) == 0
        assert not ts.synced(TENANT)
        assert ts.task_names(TENANT) == []
    assert not ts.healthy()
    with pytest.raises(RuntimeError, match="only once"):
        await ts.__aenter__()


async def test_a_malformed_kubeconfig_is_a_result_and_starts_nothing() -> None:
    async with tenant_side() as ts:
        result = await ts.ensure(
            tenant=TENANT,
            kubeconfig_text="apiVersion: v1\nclusters: []\ncontexts: []\nusers: []\n",
            desired_objects=agent_objects(),
            ca=ca(),
            machines=[],
            tls_crypt_server_key=SERVER_KEY,
        )
        assert not result.installed
        assert result.reason == REASON_KUBECONFIG_INVALID
        assert "Secret tenant-a/tenant-a-kubeconfig: current-context is missing" in result.message
        assert ts.task_names(TENANT) == []
        assert ts.healthy()


async def test_an_unknown_kind_in_the_desired_set_is_our_bug_not_a_tenant_problem() -> None:
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "namespace": "n"}}
    async with tenant_side() as ts:
        with pytest.raises(ValueError, match="KNOWN_RESOURCES"):
            await ts.ensure(
                tenant=TENANT,
                kubeconfig_text="",
                desired_objects=[job],
                ca=ca(),
                machines=[],
                tls_crypt_server_key=SERVER_KEY,
            )


async def test_cleanup_without_a_kubeconfig_lets_the_cluster_go() -> None:
    async with tenant_side() as ts:
        assert await ts.cleanup(tenant=TENANT, kubeconfig_text=None)
        # A kubeconfig that can't be used: not done, the caller asks again later.
        assert not await ts.cleanup(tenant=TENANT, kubeconfig_text="::not yaml")


def test_metrics_are_registered_on_the_given_registry() -> None:
    registry = CollectorRegistry()
    tenant_side(registry)
    names = {m.name for m in registry.collect()}
    assert {"vpnctl_tenant_repairs", "vpnctl_tenant_csrs", "vpnctl_watch_restarts"} <= names
    with pytest.raises(ValueError, match="node_cert_lifetime"):
        KubeTenantSide(
            registry=CollectorRegistry(),
            clock=ManualClock(),
            rng=random.Random(1),
            node_cert_lifetime=dt.timedelta(0),
        )


# --- the CSR loop's pass ----------------------------------------------------------------------


async def test_a_csr_of_another_signer_that_reaches_the_pass_is_never_decided() -> None:
    """The apiserver filters by signer (a field selector); should one slip through anyway,
    the pass neither spends the tenant's decision budget on it nor writes to it."""
    clock = ManualClock(autoadvance=True)
    rng = random.Random(1)
    calls = TenantCalls(
        clock=clock,
        rng=rng,
        watch_metrics=WatchMetrics(CollectorRegistry()),
        request_timeout=1.0,
        request_attempts=1,
        watch_timeout_seconds=60,
        backoff_base=0.5,
        backoff_cap=1.0,
    )
    loop = CsrLoop(
        calls=calls,
        registry=CollectorRegistry(),
        node_cert_lifetime=dt.timedelta(days=30),
        recorder=None,
    )
    text = kubeconfigs.dump(kubeconfigs.valid(kubeconfigs.material()))
    async with await Kube.from_kubeconfig_text(text, name="t") as kube:
        state = TenantState(
            ref=TENANT,
            kubeconfig_text=text,
            kube=kube,
            ca=ca(),
            # One decision a minute: a second one would raise OverBudget.
            budget=TenantBudget(
                Budgets(csr_decisions_per_minute=1), tenant=str(TENANT), clock=clock, rng=rng
            ),
        )
        others = [
            {
                "metadata": {"name": f"kubelet-{i}", "uid": f"u{i}", "resourceVersion": "1"},
                "spec": {"signerName": "kubernetes.io/kube-apiserver-client", "request": ""},
                "status": {},
            }
            for i in range(3)
        ]
        assert await loop.decide_csrs(state, others) == set()
        assert (state.signed, state.denied) == (0, 0)
        assert state.budget is not None
        assert state.budget.degraded() is None
        state.budget.take_csr_decision()  # the one decision of the minute is still there
        for csr in others:
            state.csr_backlog.changed("MODIFIED", csr)
        store = Store()
        for csr in others:
            store.upsert(csr)
        assert state.csr_backlog.take(store) == []  # marked decided: not looked at again


def test_a_certificate_just_signed_is_reported_and_recorded_as_issued() -> None:
    at = dt.datetime(2030, 1, 2, tzinfo=dt.UTC)
    cert = IssuedCert(
        serial=0xAB12, node="node-1", machine="md-1", not_after=at + dt.timedelta(days=1)
    )
    signed = SignedCert.of(cert, not_before=at)
    assert signed == SignedCert(
        node="node-1", serial="ab12", not_before=at, not_after=cert.not_after, machine="md-1"
    )
    assert signed.issued() == cert
    assert signed_report([signed], now=at) == (("node-1", "ab12"),)


# --- the Node watch's pure parts ----------------------------------------------------------------


def test_a_cached_node_keeps_only_what_the_plan_reads() -> None:
    from vpnctl.controller.tenant_nodes import slim_node
    from vpnctl.reconcile.tenant_members import node_facts

    big: KubeObject = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "n1", "resourceVersion": "7", "labels": {"a": "b"},
                     "managedFields": [{"manager": "kubelet"}] * 50},
        "spec": {"podCIDR": "198.19.65.0/24", "podCIDRs": ["198.19.65.0/24"],
                 "taints": [{"key": "k"}]},
        "status": {"images": [{"names": ["x" * 200]}] * 50, "conditions": [{"type": "Ready"}],
                   "addresses": [{"type": "InternalIP", "address": "198.19.0.11"}],
                   "daemonEndpoints": {"kubeletEndpoint": {"Port": 10251}}},
    }  # fmt: skip
    slim = slim_node(big)
    assert slim_node(slim) == slim
    assert set(slim["metadata"]) == {"name", "resourceVersion"}
    assert set(slim["spec"]) == {"podCIDR", "podCIDRs"}
    assert set(slim["status"]) == {"addresses", "daemonEndpoints"}
    assert node_facts([slim]) == node_facts([big])  # type: ignore[list-item]
    # Junk in any field: a slim junk object, never an exception.
    assert slim_node({"metadata": 3, "spec": [], "status": "x"})["spec"] == {}


async def test_a_failed_pass_logs_its_error_as_one_value(caplog: pytest.LogCaptureFixture) -> None:
    """The error of a failed repair pass is one logfmt value, however it is worded."""
    from telemetry.logs import LogfmtFormatter

    clock = ManualClock(autoadvance=True)
    calls = TenantCalls(
        clock=clock, rng=random.Random(1), watch_metrics=WatchMetrics(CollectorRegistry()),
        request_timeout=1.0, request_attempts=1, watch_timeout_seconds=60,
        backoff_base=0.5, backoff_cap=1.0,
    )  # fmt: skip
    passes = FailedPasses(
        calls=calls, wakeup=asyncio.Event(), tenant=TENANT, event="tenant_repair_failed"
    )
    error = "Server said 'no': quota exceeded; retry=later"
    with caplog.at_level(logging.WARNING, logger="vpnctl.controller.tenant_state"):
        await passes.failed(error=error)
    (record,) = caplog.records
    fields = parse_record(LogfmtFormatter().format(record))
    assert fields["event"] == "tenant_repair_failed"
    assert (fields["tenant"], fields["failures"], fields["error"]) == (
        "tenant-a/tenant-a",
        "1",
        error,
    )
    assert "retry" not in fields  # the error's text forged no key
    assert clock.sleeps  # and the loop backed off
