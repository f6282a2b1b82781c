"""Fixtures for tests against a real kube-apiserver.

One service cluster (etcd + kube-apiserver + kube-controller-manager, CAPI CRDs and
our own CRDs) is started per session: it costs a few seconds, the first build ~20
minutes, and tests isolate themselves by namespace. Tenant clusters are cheap and
made per test by ``tenant_cluster_factory``.

Every async test in this folder runs on the session's event loop (added below), so
it shares a loop with the session fixtures; the clusters themselves are not bound to
a loop anyway.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from pathlib import Path
from typing import Unpack

import pytest
import pytest_asyncio
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config

from vpnctl.testenv import (
    Binaries,
    BuildError,
    KubeCluster,
    LaunchOptions,
    ServiceCluster,
    TenantCluster,
    ensure_binaries,
)

REPO = Path(__file__).resolve().parents[2]
_HERE = Path(__file__).resolve().parent


_BUILT = pytest.StashKey["Binaries | BuildError"]()


def _here(item: pytest.Item) -> bool:
    return item.path.resolve().is_relative_to(_HERE)


@pytest.hookimpl(trylast=True)  # after -k/-m deselection
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    session_loop = pytest.mark.asyncio(loop_scope="session")
    for item in items:
        if (
            isinstance(item, pytest.Function)
            and _here(item)
            and inspect.iscoroutinefunction(item.obj)
        ):
            item.add_marker(session_loop, append=False)
    # Build (or find) the binaries now, before any test runs: a cold build takes ~20
    # minutes, far past a test's timeout, and should show its progress live.
    if config.option.collectonly or not any(_here(item) for item in items):
        return
    capture = config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        try:
            config.stash[_BUILT] = ensure_binaries()
        except BuildError as exc:  # reported by every test that needs the binaries
            config.stash[_BUILT] = exc


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On failure, put the tail of every cluster log the test used into the report."""
    report = yield
    if report.failed and isinstance(item, pytest.Function):
        for name, value in item.funcargs.items():
            if isinstance(value, KubeCluster):
                report.sections.append((f"logs of {name}", value.logs_tail()))
            elif isinstance(value, _TenantFactory):
                for cluster in value.clusters:
                    report.sections.append((f"logs of tenant {cluster.name}", cluster.logs_tail()))
    return report


@pytest.fixture(scope="session")
def k8s_binaries(pytestconfig: pytest.Config) -> Binaries:
    """Pinned Kubernetes binaries, built at collection time (see above)."""
    built = pytestconfig.stash.get(_BUILT, None)
    if built is None:
        built = ensure_binaries()
    if isinstance(built, BuildError):
        raise built
    return built


def our_crds() -> list[Path]:
    """Our own CRDs (the Tunnel's), as the vpnctl chart's templates/crds.yaml reads them."""
    return [REPO / "charts" / "vpnctl" / "files" / "crds"]


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def service_cluster(
    k8s_binaries: Binaries, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ServiceCluster]:
    async with ServiceCluster.start(
        tmp_path_factory.mktemp("service-cluster"), k8s_binaries, crds=our_crds()
    ) as cluster:
        yield cluster


@contextlib.asynccontextmanager
async def api_client(cluster: KubeCluster) -> AsyncIterator[k8s_client.ApiClient]:
    """A kubernetes_asyncio ApiClient authenticated as the cluster's admin."""
    configuration = k8s_client.Configuration()
    await k8s_config.load_kube_config(
        config_file=str(cluster.kubeconfig_path), client_configuration=configuration
    )
    async with k8s_client.ApiClient(configuration) as api:
        yield api


@pytest_asyncio.fixture(loop_scope="session")
async def service_api(service_cluster: ServiceCluster) -> AsyncIterator[k8s_client.ApiClient]:
    async with api_client(service_cluster) as api:
        yield api


@pytest_asyncio.fixture(loop_scope="session")
async def namespace(service_cluster: ServiceCluster) -> AsyncIterator[str]:
    """A fresh namespace in the service cluster, deleted (without waiting) afterwards."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    await service_cluster.kubectl("create", "namespace", name)
    yield name
    await service_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


class _TenantFactory:
    def __init__(self, binaries: Binaries, tmp: pytest.TempPathFactory) -> None:
        self._binaries = binaries
        self._tmp = tmp
        self.clusters: list[TenantCluster] = []

    async def __call__(self, **options: Unpack[LaunchOptions]) -> TenantCluster:
        name = options.setdefault("name", f"tenant-{uuid.uuid4().hex[:6]}")
        cluster = await TenantCluster.launch(self._tmp.mktemp(name), self._binaries, **options)
        self.clusters.append(cluster)
        return cluster

    async def stop_all(self) -> None:
        for cluster in reversed(self.clusters):
            await cluster.stop()


TenantFactory = Callable[..., Awaitable[TenantCluster]]


@pytest_asyncio.fixture(loop_scope="session")
async def tenant_cluster_factory(
    k8s_binaries: Binaries, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[_TenantFactory]:
    """``await tenant_cluster_factory(name=..., netns=..., bind_address=...)`` starts a
    TenantCluster (etcd + apiserver); all are stopped after the test."""
    factory = _TenantFactory(k8s_binaries, tmp_path_factory)
    try:
        yield factory
    finally:
        await factory.stop_all()


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh, empty network namespace (root only), removed afterwards."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 for a network namespace")
    name = f"vpnctl-t-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
