"""Real Kubernetes control planes as local processes: etcd, kube-apiserver and
kube-controller-manager, with client-certificate authentication.

``ServiceCluster`` is the cluster vpnctl runs against (with the controller-manager,
whose garbage collector, namespace controller and CSR signer we rely on, and the
Cluster API CRDs). ``TenantCluster`` is a separate etcd and apiserver per tenant,
optionally inside a lab network namespace and listening on an address there.

Readiness is observed, never slept for: the apiserver's ``/readyz`` with the admin
certificate, the controller-manager's ``/healthz`` and then the ``default``
ServiceAccount its controllers create. While waiting, every process is checked, so a
crash fails fast with the tail of its log instead of a timeout.

This module runs kubectl rather than importing kubernetes_asyncio: only ``vpnctl.kube``
may import the client library.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import ipaddress
import json
import shutil
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self, Unpack

import yaml

from vpnctl.testenv import local_probes, recorded_cluster
from vpnctl.testenv.build import Binaries
from vpnctl.testenv.cluster_options import (
    DEFAULT_SERVICE_CIDR,
    START_TIMEOUT,
    KubectlError,
    LaunchOptions,
)
from vpnctl.testenv.cluster_pki import (
    ClusterPKI,
    FrontProxyPKI,
    write_cluster_pki,
    write_front_proxy_pki,
    write_kubeconfig,
)
from vpnctl.testenv.local_probes import (
    first_service_ip,
    http_get,
    https_probe,
    is_ip,
    run_checked,
    run_short,
)
from vpnctl.testenv.procs import (
    ManagedProcess,
    check_all_running,
    environ_without_proxies,
    netns_argv,
    start_registered,
)

ClusterStartError = local_probes.ClusterStartError  # these three are imported from here
free_ports = local_probes.free_ports
stop_recorded_cluster = recorded_cluster.stop_recorded_cluster

_POLL = 0.2


class KubeCluster:
    """One running control plane. Create with ``start()`` (async context manager) or
    ``launch()`` + ``stop()``; don't call the constructor."""

    default_name: ClassVar[str] = "cluster"
    default_controller_manager: ClassVar[bool] = True
    default_capi_crds: ClassVar[bool] = False

    def __init__(
        self,
        *,
        name: str,
        root: Path,
        owns_root: bool,
        binaries: Binaries,
        netns: str | None,
        bind_address: str,
        port: int,
        service_cidr: str,
        pki: ClusterPKI,
        die_with_parent: bool,
        apiserver_extra_args: Sequence[str] = (),
        front_proxy: FrontProxyPKI | None = None,
    ) -> None:
        self.name = name
        self.root = root
        self.binaries = binaries
        self.netns = netns
        self.bind_address = bind_address
        self.port = port
        self.service_cidr = service_cidr
        self.pki = pki
        self.front_proxy = front_proxy  # set when launched with aggregation=True
        self.logs_dir = root / "logs"
        host = "127.0.0.1" if bind_address in ("0.0.0.0", "") else bind_address
        self.host = host
        self.server_url = f"https://{host}:{port}"
        self.kubeconfig_path = write_kubeconfig(
            root / "kubeconfig",
            server=self.server_url,
            ca=pki.ca.cert,
            client=pki.admin,
            cluster_name=name,
        )
        self._owns_root = owns_root
        self._die_with_parent = die_with_parent
        self._apiserver_extra_args = tuple(apiserver_extra_args)
        self.processes: dict[str, ManagedProcess] = {}

    # --- what callers use -----------------------------------------------------------

    @property
    def ca_pem(self) -> bytes:
        return self.pki.ca_pem

    @property
    def log_paths(self) -> dict[str, Path]:
        return {name: p.log_path for name, p in self.processes.items()}

    def logs_tail(self, lines: int = 30) -> str:
        """The last lines of every component's log, for a failed test's report."""
        return "\n".join(
            f"--- {self.name}/{name} ({p.log_path}) ---\n{p.log_tail(lines)}"
            for name, p in self.processes.items()
        )

    def state(self) -> dict[str, Any]:
        """What another process (``vpnctl lab down``) needs to find and stop this
        cluster; also written to ``<workdir>/cluster.json`` once it is ready."""
        return {
            "name": self.name,
            "server_url": self.server_url,
            "kubeconfig": str(self.kubeconfig_path),
            "netns": self.netns,
            "pids": {name: p.pid for name, p in self.processes.items()},
            "logs": {name: str(path) for name, path in self.log_paths.items()},
        }

    def kubectl_argv(self, *args: str) -> list[str]:
        """The full command line of a kubectl call against this cluster (netns aware)."""
        return netns_argv(
            self.netns,
            [str(self.binaries.kubectl), "--kubeconfig", str(self.kubeconfig_path), *args],
        )

    async def kubectl(
        self,
        *args: str,
        input: str | bytes | None = None,
        check: bool = True,
        timeout: float = 120.0,
    ) -> str:
        """Run kubectl as the cluster admin and return its stdout.

        Raises ``KubectlError`` (with stderr) on a non-zero exit when ``check``.
        """
        argv = self.kubectl_argv(*args)
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=environ_without_proxies(),
        )
        data = input.encode() if isinstance(input, str) else input
        try:
            out, err = await asyncio.wait_for(proc.communicate(data), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise KubectlError(args, -1, "", f"timed out after {timeout}s") from None
        stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
        if check and proc.returncode != 0:
            raise KubectlError(args, proc.returncode or -1, stdout, stderr)
        return stdout

    async def apply_crds(self, paths: Sequence[Path], *, timeout: float = 60.0) -> list[str]:
        """Server-side apply CRD manifests (files or folders) and wait until every
        CRD in them is Established. Returns the CRD names."""
        names: list[str] = []
        for path in paths:
            files = (
                sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml"))
                if path.is_dir()
                else [path]
            )
            for file in files:
                for doc in yaml.safe_load_all(file.read_text()):
                    if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                        names.append(doc["metadata"]["name"])
            # Server-side: CAPI's CRDs are too big for the last-applied annotation.
            await self.kubectl(
                "apply", "--server-side", "--force-conflicts", "-f", str(path), timeout=timeout
            )
        if names:
            await self.kubectl(
                "wait",
                "--for=condition=Established",
                f"--timeout={int(timeout)}s",
                *(f"crd/{n}" for n in names),
                timeout=timeout + 10,
            )
        return names

    # --- lifecycle ------------------------------------------------------------------

    @classmethod
    async def launch(
        cls, workdir: Path | None, binaries: Binaries, **options: Unpack[LaunchOptions]
    ) -> Self:
        """Start etcd, kube-apiserver (and kube-controller-manager), wait until they
        are ready, install CRDs, and return the running cluster. See ``LaunchOptions``.

        ``workdir`` holds PKI, kubeconfig, logs and etcd data; it is kept (minus the
        etcd data) after ``stop()`` so logs survive. With ``None`` a temporary
        folder is used and removed on stop.
        """
        name = options.get("name", cls.default_name)
        controller_manager = options.get("controller_manager", cls.default_controller_manager)
        scheduler = options.get("scheduler", False)
        if scheduler and binaries.kube_scheduler is None:
            raise ClusterStartError("scheduler=True needs binaries built with with_nodes=True")
        crds = list(options.get("crds", ()))
        if options.get("capi_crds", cls.default_capi_crds):
            crds.insert(0, binaries.capi_crds)
        netns = options.get("netns")
        bind_address = options.get("bind_address", "127.0.0.1")
        port = options.get("port")
        service_cidr = options.get("service_cidr", DEFAULT_SERVICE_CIDR)
        extra_sans = options.get("extra_sans", ())
        die_with_parent = options.get("die_with_parent", True)
        start_timeout = options.get("start_timeout", START_TIMEOUT)

        owns_root = workdir is None
        root = Path(tempfile.mkdtemp(prefix=f"vpnctl-{name}-")) if workdir is None else workdir
        root.mkdir(parents=True, exist_ok=True)
        if port is None:
            port = free_ports(1)[0]
        ips = [first_service_ip(service_cidr), *extra_sans]
        if bind_address not in ("0.0.0.0", ""):
            ips.insert(0, bind_address)
        ip_sans = [s for s in ips if is_ip(s)]
        dns_sans = [s for s in ips if not is_ip(s)]
        pki = write_cluster_pki(
            root / "pki", cluster_name=name, apiserver_ips=ip_sans, apiserver_dns=dns_sans
        )
        front_proxy = (
            write_front_proxy_pki(root / "pki", cluster_name=name)
            if options.get("aggregation", False)
            else None
        )
        cluster = cls(
            name=name,
            root=root,
            owns_root=owns_root,
            binaries=binaries,
            netns=netns,
            bind_address=bind_address,
            port=port,
            service_cidr=service_cidr,
            pki=pki,
            die_with_parent=die_with_parent,
            apiserver_extra_args=options.get("apiserver_extra_args", ()),
            front_proxy=front_proxy,
        )
        try:
            await cluster._start(
                controller_manager=controller_manager,
                scheduler=scheduler,
                timeout=start_timeout,
                crds=crds,
            )
            (root / "cluster.json").write_text(json.dumps(cluster.state(), indent=2))
        except BaseException:
            await cluster.stop()
            raise
        return cluster

    @classmethod
    @contextlib.asynccontextmanager
    async def start(
        cls, workdir: Path | None, binaries: Binaries, **options: Unpack[LaunchOptions]
    ) -> AsyncIterator[Self]:
        """``async with ServiceCluster.start(workdir, binaries) as sc:``; stops on exit."""
        cluster = await cls.launch(workdir, binaries, **options)
        try:
            yield cluster
        finally:
            await cluster.stop()

    async def stop(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL) and remove the etcd data; the
        whole working folder goes too when we created it. Idempotent."""
        procs = self.processes
        # kcm and apiserver first, together; etcd last so they can shut down cleanly.
        try:
            await asyncio.gather(
                *(p.stop() for name, p in procs.items() if name != "etcd"),
            )
        finally:
            if "etcd" in procs:
                await procs["etcd"].stop()
            for p in procs.values():
                p.kill_now()
            shutil.rmtree(self.root / "etcd-data", ignore_errors=True)
            if self._owns_root:
                shutil.rmtree(self.root, ignore_errors=True)

    def kill_now(self) -> None:
        """Synchronous teardown for atexit-style finalizers."""
        for p in self.processes.values():
            p.kill_now()

    # --- internals ------------------------------------------------------------------

    def _process(self, name: str, argv: Sequence[str]) -> ManagedProcess:
        return start_registered(
            self.processes,
            name,
            argv,
            log_path=self.logs_dir / f"{name}.log",
            netns=self.netns,
            cwd=self.root,
            die_with_parent=self._die_with_parent,
        )

    async def _start(
        self,
        *,
        controller_manager: bool,
        scheduler: bool = False,
        timeout: float,
        crds: Sequence[Path] = (),
    ) -> None:
        deadline = time.monotonic() + timeout
        if self.netns:
            # The namespace's loopback carries etcd's traffic; it starts down.
            await run_checked(["ip", "-n", self.netns, "link", "set", "lo", "up"])
            # Ports picked in our namespace are as good as any in a fresh one.
        etcd_port, peer_port, kcm_port, scheduler_port = free_ports(4)
        self._start_etcd(etcd_port, peer_port)
        if not self.netns:
            # Inside a netns the apiserver's own readyz covers etcd; out here, waiting
            # spares its log a page of connection-refused noise.
            await self._wait_etcd(etcd_port, deadline)
        self._start_apiserver(etcd_port)
        await self._wait_apiserver(deadline)
        if crds:
            # Before the controller manager: its garbage collector maps owner kinds at
            # start and only rediscovers every ~30 s, so a Tunnel owned by a Cluster would
            # not be collected until then.
            await self.apply_crds(crds)
        if controller_manager:
            self._start_controller_manager(kcm_port)
            await self._wait_controller_manager(kcm_port, deadline)
        if scheduler:  # observed by what it does: pods get a node
            self._start_scheduler(scheduler_port)

    def _start_scheduler(self, port: int) -> None:
        assert self.binaries.kube_scheduler is not None
        kubeconfig = write_kubeconfig(
            self.root / "scheduler.kubeconfig",
            server=self.server_url,
            ca=self.pki.ca.cert,
            client=self.pki.scheduler,
            cluster_name=self.name,
            user="system:kube-scheduler",
        )
        self._process(
            "kube-scheduler",
            [
                str(self.binaries.kube_scheduler),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={self.root / 'scheduler-certs'}",
                "--leader-elect=false",
                "--profiling=false",
            ],
        )

    def _start_etcd(self, client_port: int, peer_port: int) -> None:
        data = self.root / "etcd-data"
        shutil.rmtree(data, ignore_errors=True)
        client = f"http://127.0.0.1:{client_port}"
        peer = f"http://127.0.0.1:{peer_port}"
        self._process(
            "etcd",
            [
                str(self.binaries.etcd),
                f"--name={self.name}",
                f"--data-dir={data}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster={self.name}={peer}",
                "--initial-cluster-state=new",
                # Test data: durability buys nothing and fsync costs seconds.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )

    def _start_apiserver(self, etcd_port: int) -> None:
        pki = self.pki
        loopback = ipaddress.ip_address(self.host).is_loopback
        args = [
            str(self.binaries.kube_apiserver),
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            f"--bind-address={self.bind_address}",
            f"--secure-port={self.port}",
            f"--advertise-address={self.host}",
            f"--cert-dir={self.root / 'apiserver-certs'}",
            f"--tls-cert-file={pki.apiserver.cert}",
            f"--tls-private-key-file={pki.apiserver.key}",
            f"--client-ca-file={pki.ca.cert}",
            f"--kubelet-client-certificate={pki.apiserver_kubelet_client.cert}",
            f"--kubelet-client-key={pki.apiserver_kubelet_client.key}",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={self.service_cidr}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            "--allow-privileged=true",
            "--profiling=false",
            # Endpoints may not point at loopback; on a real address keep the default.
            f"--endpoint-reconciler-type={'none' if loopback else 'lease'}",
            *self._aggregation_args(),
            *self._apiserver_extra_args,
        ]
        self._process("kube-apiserver", args)

    def _aggregation_args(self) -> list[str]:
        """The front-proxy flags; --enable-aggregator-routing is left at its default
        (off), so the apiserver dials an APIService's Service by ClusterIP."""
        fp = self.front_proxy
        if fp is None:
            return []
        return [
            f"--requestheader-client-ca-file={fp.ca.cert}",
            f"--requestheader-allowed-names={fp.client_name}",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={fp.client.cert}",
            f"--proxy-client-key-file={fp.client.key}",
        ]

    def _start_controller_manager(self, port: int) -> None:
        pki = self.pki
        kubeconfig = write_kubeconfig(
            self.root / "controller-manager.kubeconfig",
            server=self.server_url,
            ca=pki.ca.cert,
            client=pki.controller_manager,
            cluster_name=self.name,
            user="system:kube-controller-manager",
        )
        args = [
            str(self.binaries.kube_controller_manager),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={self.root / 'controller-manager-certs'}",
            "--controllers=*",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki.sa_key}",
            f"--root-ca-file={pki.ca.cert}",
            f"--cluster-signing-cert-file={pki.ca.cert}",
            f"--cluster-signing-key-file={pki.ca.key}",
            f"--service-cluster-ip-range={self.service_cidr}",
            f"--cluster-name={self.name}",
            # One replica: waiting for a lease only slows the start.
            "--leader-elect=false",
            "--profiling=false",
        ]
        self._process("kube-controller-manager", args)

    def _check_alive(self) -> None:
        check_all_running(
            self.processes.values(), owner=f"cluster {self.name!r}", error=ClusterStartError
        )

    def _timeout_error(self, component: str, last: str) -> ClusterStartError:
        proc = self.processes[component]
        return ClusterStartError(
            f"cluster {self.name!r}: {component} not ready in time (last probe: {last}); "
            f"last lines of {proc.log_path}:\n{proc.log_tail()}"
        )

    async def _poll(
        self, component: str, deadline: float, probe: Callable[[], Awaitable[str | None]]
    ) -> None:
        """Run ``probe`` every ``_POLL`` s until it returns None (ready); otherwise it
        returns what it saw, which the timeout error quotes."""
        while True:
            self._check_alive()
            last = await probe()
            if last is None:
                return
            if time.monotonic() > deadline:
                raise self._timeout_error(component, last)
            await asyncio.sleep(_POLL)

    async def _wait_etcd(self, port: int, deadline: float) -> None:
        async def healthy() -> str | None:
            try:
                status, body = await asyncio.to_thread(http_get, "127.0.0.1", port, "/health")
            except (OSError, http.client.HTTPException) as exc:
                return f"{type(exc).__name__}: {exc}"
            if status == 200 and '"health":"true"' in body:
                return None
            return f"HTTP {status}: {body[:200]}"

        await self._poll("etcd", deadline, healthy)

    async def _wait_apiserver(self, deadline: float) -> None:
        if self.netns:

            async def ready_in_netns() -> str | None:
                code, out = await run_short(self.kubectl_argv("get", "--raw=/readyz"))
                if code == 0:
                    return None
                return out.strip().splitlines()[-1] if out.strip() else f"exit {code}"

            await self._poll("kube-apiserver", deadline, ready_in_netns)
            return
        context = ssl.create_default_context(cafile=str(self.pki.ca.cert))
        context.load_cert_chain(str(self.pki.admin.cert), str(self.pki.admin.key))
        await self._poll(
            "kube-apiserver",
            deadline,
            lambda: https_probe(self.host, self.port, "/readyz", context),
        )

    async def _wait_controller_manager(self, port: int, deadline: float) -> None:
        if not self.netns:
            # Its serving certificate is self-signed into --cert-dir: liveness only.
            insecure = ssl.create_default_context()
            insecure.check_hostname = False
            insecure.verify_mode = ssl.CERT_NONE
            await self._poll(
                "kube-controller-manager",
                deadline,
                lambda: https_probe("127.0.0.1", port, "/healthz", insecure),
            )

        # /healthz is up before the controllers run; the default ServiceAccount shows
        # they do (and pods can't be created in "default" without it).
        async def default_service_account() -> str | None:
            code, out = await run_short(
                self.kubectl_argv("get", "serviceaccount", "default", "-n", "default", "-o", "name")
            )
            return None if code == 0 else out.strip() or f"exit {code}"

        await self._poll("kube-controller-manager", deadline, default_service_account)


class ServiceCluster(KubeCluster):
    """The cluster vpnctl runs against: controller-manager on, CAPI CRDs installed."""

    default_name = "service"
    default_controller_manager = True
    default_capi_crds = True


class TenantCluster(KubeCluster):
    """A tenant's own etcd and apiserver (own CA), optionally in ``netns`` on
    ``bind_address``. No controller-manager unless ``controller_manager=True``."""

    default_name = "tenant"
    default_controller_manager = False
    default_capi_crds = False
