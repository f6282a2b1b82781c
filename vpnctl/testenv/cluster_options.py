"""What a local control plane is started with (``LaunchOptions``, the defaults) and the
error its kubectl raises; ``vpnctl.testenv.cluster`` starts it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TypedDict

# Inside the lab's address plan (198.18.0.0/15, RFC 2544). Service IPs are virtual,
# but keeping them in the plan means nothing ever points outside it.
DEFAULT_SERVICE_CIDR = "198.19.255.0/24"
START_TIMEOUT = 120.0


class KubectlError(RuntimeError):
    def __init__(self, argv: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(
            f"kubectl {' '.join(argv)} exited {returncode}: {stderr.strip() or stdout.strip()}"
        )


class LaunchOptions(TypedDict, total=False):
    """Keyword options of ``launch()`` and ``start()``; defaults per class."""

    name: str  # used in file names, the CA's name and the kubeconfig context
    controller_manager: bool  # also run kube-controller-manager
    scheduler: bool  # also run kube-scheduler (needs Binaries.kube_scheduler); False
    capi_crds: bool  # install the Cluster API CRDs
    crds: Sequence[Path]  # more CRD files or folders to install (ours)
    netns: str | None  # run every process inside this network namespace
    bind_address: str  # the apiserver's listen address (127.0.0.1)
    port: int | None  # the apiserver's port (a free one)
    service_cidr: str  # DEFAULT_SERVICE_CIDR
    extra_sans: Sequence[str]  # more IPs or names in the serving certificate
    die_with_parent: bool  # PR_SET_PDEATHSIG; False for the lab (True)
    start_timeout: float  # seconds for everything to be ready (START_TIMEOUT)
    # More kube-apiserver flags, appended last (a repeated flag wins), e.g. the lab's
    # --kubelet-certificate-authority. ()
    apiserver_extra_args: Sequence[str]
    # The aggregation layer: a front-proxy CA and client certificate, so an APIService
    # (metrics-server) can be served. The apiserver dials the Service's ClusterIP
    # (--enable-aggregator-routing stays off), as a hosted apiserver reaches it through
    # vpnctl's tunnel. (False)
    aggregation: bool
