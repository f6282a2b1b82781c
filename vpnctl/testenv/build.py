"""Build the real Kubernetes binaries the tests and the lab run, from Go modules.

There is no Docker here and release-binary downloads don't work, so kind, k3d and
setup-envtest are out. What does work is the Go module proxy, so we do what a user's
``go install`` would: build pinned versions from source, once, and cache the result
outside the repository keyed by version (``<cache>/k8s/<component>-<version>/``).

A cache entry is written to a temporary sibling directory and renamed into place, so
an interrupted build never leaves a half entry behind, and a warm run only stats
files. A file lock serialises concurrent builders (``make k8s-bins`` and pytest).

Users who already have binaries skip the build, as the ecosystem does it:
``KUBEBUILDER_ASSETS`` (a folder with kube-apiserver, etcd and kubectl) wins, then
binaries on ``PATH`` that report the pinned version.

Why Kubernetes 1.34: it is the last minor whose kubelet still starts on a cgroup v1
host by default (1.35 flips ``failCgroupV1`` to true), and this machine has only
cgroup v1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from vpnctl.testenv.gobuild import BuildError as BuildError  # re-exported
from vpnctl.testenv.gobuild import GoBuilder, Progress, fmt_elapsed
from vpnctl.testenv.pinned_versions import (
    CAPI_PACKAGES,
    CLUSTER_API_VERSION,
    CONTROLLER_TOOLS_VERSION,
    ETCD_VERSION,
    HELM_VERSION,
    KONNECTIVITY_VERSION,
    KUBERNETES_VERSION,
    METRICS_SERVER_VERSION,
    STAGING_MODULES,
    STAGING_VERSION,
)


@dataclass(frozen=True, kw_only=True)
class Binaries:
    """Resolved paths of everything the test environment runs."""

    kube_apiserver: Path
    kube_controller_manager: Path
    kubectl: Path
    etcd: Path
    helm: Path
    controller_gen: Path
    # Folder of generated cluster.x-k8s.io CRD manifests, one YAML file per CRD.
    capi_crds: Path
    # What a real tenant node and its control plane add (``with_nodes``).
    kubelet: Path | None = None
    kube_proxy: Path | None = None
    kube_scheduler: Path | None = None
    metrics_server: Path | None = None
    # The Konnectivity peer (``with_konnectivity``).
    konnectivity_server: Path | None = None
    konnectivity_agent: Path | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {
            f.name: (str(v) if (v := getattr(self, f.name)) is not None else None)
            for f in fields(self)
        }


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$VPNCTL_CACHE/k8s``, by default ``~/.cache/vpnctl/k8s``."""
    env = os.environ if env is None else env
    root = env.get("VPNCTL_CACHE") or str(Path.home() / ".cache" / "vpnctl")
    return Path(root) / "k8s"


def _stderr_progress(message: str) -> None:
    print(f"[k8s-bins] {message}", file=sys.stderr, flush=True)


def ensure_binaries(
    *,
    cache_dir: Path | None = None,
    with_kubelet: bool = False,
    with_nodes: bool = False,
    with_konnectivity: bool = False,
    progress: Progress | None = None,
    env: Mapping[str, str] | None = None,
) -> Binaries:
    """Return paths to every binary at its pinned version, building only what is missing.

    ``with_kubelet`` adds the kubelet; ``with_nodes`` adds everything a real tenant
    node and its control plane run: kubelet, kube-proxy, kube-scheduler and
    metrics-server; ``with_konnectivity`` adds the Konnectivity server and agent
    (``KONNECTIVITY_VERSION``; under a minute on the Go build cache the others warmed,
    minutes from an empty one). Blocking, and up to ~25 minutes on a cold 2-core machine;
    async callers wrap it in ``asyncio.to_thread``. Raises ``BuildError`` with the tail
    of the failing log.
    """
    return _Builder(
        cache_dir=cache_dir or default_cache_dir(env),
        progress=progress or _stderr_progress,
        env=dict(os.environ if env is None else env),
    ).ensure(with_kubelet=with_kubelet, with_nodes=with_nodes, with_konnectivity=with_konnectivity)


# --- resolution ------------------------------------------------------------------------


def _version_output(binary: Path, args: Sequence[str]) -> str:
    try:
        done = subprocess.run(
            [str(binary), *args], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout + done.stderr


def _reports_version(component: str, binary: Path) -> bool:
    """Whether a binary found outside our cache is the version we pin."""
    if component in _KUBE_CMDS and component != "kubectl":
        return f"Kubernetes {KUBERNETES_VERSION}" in _version_output(binary, ["--version"])
    if component == "kubectl":
        out = _version_output(binary, ["version", "--client", "-o", "json"])
        try:
            return bool(json.loads(out)["clientVersion"]["gitVersion"] == KUBERNETES_VERSION)
        except (ValueError, KeyError, TypeError):
            return False
    if component == "etcd":
        # Any 3.5 or 3.6 serves a 1.34 apiserver; don't rebuild for a patch difference.
        match = re.search(r"etcd Version: (\d+)\.(\d+)\.", _version_output(binary, ["--version"]))
        return match is not None and (match[1], match[2]) in (("3", "5"), ("3", "6"))
    if component == "helm":
        out = _version_output(binary, ["version", "--short"])
        return out.strip().startswith(HELM_VERSION)
    if component == "metrics-server":
        return _version_output(binary, ["--version"]).strip() == METRICS_SERVER_VERSION
    if component == "controller-gen":
        return CONTROLLER_TOOLS_VERSION in _version_output(binary, ["--version"])
    return False


_PINNED = {
    "kube-apiserver": KUBERNETES_VERSION,
    "kube-controller-manager": KUBERNETES_VERSION,
    "kubectl": KUBERNETES_VERSION,
    "kubelet": KUBERNETES_VERSION,
    "kube-proxy": KUBERNETES_VERSION,
    "kube-scheduler": KUBERNETES_VERSION,
    "metrics-server": METRICS_SERVER_VERSION,
    "etcd": ETCD_VERSION,
    "helm": HELM_VERSION,
    "controller-gen": CONTROLLER_TOOLS_VERSION,
    # Found only in our cache: _reports_version knows no version flag of theirs.
    "konnectivity-server": KONNECTIVITY_VERSION,
    "konnectivity-agent": KONNECTIVITY_VERSION,
}
_ENVTEST_ASSETS = ("kube-apiserver", "etcd", "kubectl")
_KUBE_CMDS = (
    "kube-apiserver",
    "kube-controller-manager",
    "kubectl",
    "kubelet",
    "kube-proxy",
    "kube-scheduler",
)
# What ``with_nodes`` adds: the node's programs and the control plane's scheduler.
_NODE_CMDS = ("kubelet", "kube-proxy", "kube-scheduler")
_KONNECTIVITY_CMDS = ["konnectivity-server", "konnectivity-agent"]


class _Builder(GoBuilder):
    """Resolution and the recipe of each component; the Go plumbing is inherited."""

    # - where things are

    def cached(self, component: str) -> Path | None:
        path = self.entry(component, _PINNED[component]) / component
        return path if os.access(path, os.X_OK) else None

    def envtest_asset(self, component: str) -> Path | None:
        """The user's envtest binaries win: that is what KUBEBUILDER_ASSETS means."""
        assets = self.env.get("KUBEBUILDER_ASSETS")
        if assets and component in _ENVTEST_ASSETS:
            path = Path(assets) / component
            if os.access(path, os.X_OK):
                return path
        return None

    def on_path(self, component: str) -> Path | None:
        found = shutil.which(component, path=self.env.get("PATH", ""))
        if found and _reports_version(component, Path(found)):
            return Path(found)
        return None

    def resolve(self, component: str) -> Path | None:
        return self.envtest_asset(component) or self.cached(component) or self.on_path(component)

    # - the whole job

    def ensure(
        self, *, with_kubelet: bool, with_nodes: bool = False, with_konnectivity: bool = False
    ) -> Binaries:
        started = time.monotonic()
        wanted = [
            "kube-apiserver",
            "kube-controller-manager",
            "kubectl",
            "etcd",
            "helm",
            "controller-gen",
        ]
        optional: list[str] = []
        if with_kubelet or with_nodes:
            optional.append("kubelet")
        if with_nodes:
            optional += ["kube-proxy", "kube-scheduler", "metrics-server"]
        if with_konnectivity:
            optional += _KONNECTIVITY_CMDS
        found = {c: self.resolve(c) for c in wanted + optional}
        crds = self._cached_crds()
        if all(found.values()) and crds:
            return self._binaries(found, crds)

        self.cache.mkdir(parents=True, exist_ok=True)
        with self._lock():
            # Another builder may have finished while we waited for the lock.
            found = {c: self.resolve(c) for c in wanted + optional}
            # One go build for every missing Kubernetes command: they share packages.
            missing_kube = [c for c in _KUBE_CMDS if c in found and not found[c]]
            if missing_kube:
                self._build_kubernetes(missing_kube)
            if not found["etcd"]:
                self._build_etcd()
            if not found["helm"]:
                self._build_helm()
            if not found["controller-gen"]:
                self._build_controller_gen()
            if "metrics-server" in found and not found["metrics-server"]:
                self._build_metrics_server()
            if any(c in found and not found[c] for c in _KONNECTIVITY_CMDS):
                self._build_konnectivity()
            found = {c: self.resolve(c) for c in wanted + optional}
            crds = self._cached_crds()
            if not crds:
                gen = found["controller-gen"]
                assert gen is not None
                crds = self._generate_capi_crds(gen)
        still_missing = [c for c, p in found.items() if p is None]
        if still_missing:
            raise BuildError(f"built, but still can't find {still_missing} in {self.cache}")
        self.progress(f"all binaries ready in {fmt_elapsed(time.monotonic() - started)}")
        return self._binaries(found, crds)

    @staticmethod
    def _binaries(found: dict[str, Path | None], crds: Path) -> Binaries:
        def get(name: str) -> Path:
            path = found[name]
            assert path is not None
            return path

        return Binaries(
            kube_apiserver=get("kube-apiserver"),
            kube_controller_manager=get("kube-controller-manager"),
            kubectl=get("kubectl"),
            etcd=get("etcd"),
            helm=get("helm"),
            controller_gen=get("controller-gen"),
            capi_crds=crds,
            kubelet=found.get("kubelet"),
            kube_proxy=found.get("kube-proxy"),
            kube_scheduler=found.get("kube-scheduler"),
            metrics_server=found.get("metrics-server"),
            konnectivity_server=found.get("konnectivity-server"),
            konnectivity_agent=found.get("konnectivity-agent"),
        )

    # - the components

    def _build_kubernetes(self, commands: Sequence[str]) -> None:
        v = KUBERNETES_VERSION
        major, minor, _ = v.removeprefix("v").split(".")
        replaces = "\n".join(
            f"\tk8s.io/{m} => k8s.io/{m} {STAGING_VERSION}" for m in STAGING_MODULES
        )
        go_mod = (
            "module vpnctl.local/k8sbuild\n\ngo 1.24.0\n\ngodebug default=go1.24\n\n"
            f"require k8s.io/kubernetes {v}\n\nreplace (\n{replaces}\n)\n"
        )
        src = self._wrapper_module(
            f"kubernetes-{v}", go_mod, {"tools.go": "//go:build tools\n\npackage tools\n"}
        )
        ldflags = [
            "-s",
            "-w",
        ]
        for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
            ldflags += [
                f"-X {pkg}.gitVersion={v}",
                f"-X {pkg}.gitMajor={major}",
                f"-X {pkg}.gitMinor={minor}",
                f"-X {pkg}.gitTreeState=clean",
            ]
        with self._tmpdir("kubernetes") as out:
            self._go_build(
                "kubernetes",
                v,
                src=src,
                ldflags=" ".join(ldflags),
                output=f"{out}/",
                packages=[f"k8s.io/kubernetes/cmd/{c}" for c in commands],
                what=f"go build {' '.join(commands)}",
            )
            self._install({c: out / c for c in commands}, v)

    def _build_etcd(self) -> None:
        v = ETCD_VERSION
        modules = ("server/v3", "api/v3", "client/pkg/v3", "client/v3", "pkg/v3")
        requires = "".join(f"\tgo.etcd.io/etcd/{m} {v}\n" for m in modules)
        go_mod = f"module vpnctl.local/etcdbuild\n\ngo 1.24.0\n\nrequire (\n{requires})\n"
        main = (
            "// etcd's own main package lives in a module with replace directives,\n"
            "// so this is the same two lines in a module of our own.\n"
            'package main\n\nimport (\n\t"os"\n\n'
            '\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\n'
            "func main() { etcdmain.Main(os.Args) }\n"
        )
        src = self._wrapper_module(f"etcd-{v}", go_mod, {"main.go": main})
        with self._tmpdir("etcd") as out:
            self._go_build(
                "etcd", v, src=src, ldflags="-s -w", output=str(out / "etcd"), packages=["."]
            )
            self._install({"etcd": out / "etcd"}, v)

    def _build_helm(self) -> None:
        v = HELM_VERSION
        # helm's Makefile stamps its version (and the k8s version it templates for by
        # default) with -X; a plain `go install` would report "v3.x-dirty"-ish values.
        ldflags = " ".join(
            [
                "-s -w",
                f"-X helm.sh/helm/v3/internal/version.version={v}",
                "-X helm.sh/helm/v3/internal/version.gitTreeState=clean",
            ]
        )
        self._go_install("helm", "helm.sh/helm/v3/cmd/helm", v, ldflags)

    def _build_controller_gen(self) -> None:
        self._go_install(
            "controller-gen",
            "sigs.k8s.io/controller-tools/cmd/controller-gen",
            CONTROLLER_TOOLS_VERSION,
            "-s -w",
        )

    def _build_metrics_server(self) -> None:
        # `go install pkg@version` refuses it (replace directives in its go.mod), so a
        # wrapper module requires it and builds the command, as the note on it says.
        v = METRICS_SERVER_VERSION
        src = self._wrapper_module(
            f"metrics-server-{v}",
            "module vpnctl.local/metricsserverbuild\n\ngo 1.24.0\n\n"
            f"require sigs.k8s.io/metrics-server {v}\n",
            {
                "tools.go": "//go:build tools\n\npackage tools\n\n"
                'import _ "sigs.k8s.io/metrics-server/cmd/metrics-server"\n'
            },
        )
        with self._tmpdir("metrics-server") as out:
            self._go_build(
                "metrics-server",
                v,
                src=src,
                ldflags=f"-s -w -X k8s.io/client-go/pkg/version.gitVersion={v}",
                output=str(out / "metrics-server"),
                packages=["sigs.k8s.io/metrics-server/cmd/metrics-server"],
            )
            self._install({"metrics-server": out / "metrics-server"}, v)

    def _build_konnectivity(self) -> None:
        # `go install` refuses it (its go.mod replaces ./konnectivity-client), so the
        # wrapper requires both modules at the same tag; go.sum and the checksum database
        # verify what the proxy serves, as for every other build here.
        v = KONNECTIVITY_VERSION
        repo = "sigs.k8s.io/apiserver-network-proxy"
        src = self._wrapper_module(
            f"konnectivity-{v}",
            "module vpnctl.local/konnectivitybuild\n\ngo 1.24.0\n\n"
            f"require (\n\t{repo} {v}\n\t{repo}/konnectivity-client {v}\n)\n",
            {
                "tools.go": "//go:build tools\n\npackage tools\n\nimport (\n"
                f'\t_ "{repo}/cmd/agent"\n\t_ "{repo}/cmd/server"\n)\n'
            },
        )
        with self._tmpdir("konnectivity") as out:
            self._go_build(
                "konnectivity",
                v,
                src=src,
                ldflags="-s -w",
                output=f"{out}/",
                packages=[f"{repo}/cmd/server", f"{repo}/cmd/agent"],
                what="go build cmd/server cmd/agent",
            )
            self._install(
                {"konnectivity-server": out / "server", "konnectivity-agent": out / "agent"}, v
            )

    def _cached_crds(self) -> Path | None:
        path = self.entry("capi-crds", CLUSTER_API_VERSION)
        return path if path.is_dir() else None

    def _generate_capi_crds(self, controller_gen: Path) -> Path:
        v = CLUSTER_API_VERSION
        imports = "".join(f'\t_ "{p}"\n' for p in CAPI_PACKAGES)
        src = self._wrapper_module(
            f"cluster-api-{v}",
            f"module vpnctl.local/capicrds\n\ngo 1.22.0\n\nrequire sigs.k8s.io/cluster-api {v}\n",
            {"tools.go": f"//go:build tools\n\npackage tools\n\nimport (\n{imports})\n"},
        )
        log = self.cache / "logs" / f"capi-crds-{v}.log"
        # go/packages (inside controller-gen) needs the modules and go.sum filled in.
        self._run(
            f"cluster-api {v}: go mod download",
            [self._go(), "list", "-tags", "tools", "-deps", "./..."],
            cwd=src,
            log=log,
        )
        with self._tmpdir("capi-crds") as out:
            self._run(
                f"cluster-api {v}: controller-gen crd",
                [
                    str(controller_gen),
                    "crd:crdVersions=v1",
                    *(f"paths={p}" for p in CAPI_PACKAGES),
                    f"output:crd:artifacts:config={out}",
                ],
                cwd=src,
                log=log,
            )
            if not any(out.glob("cluster.x-k8s.io_*.yaml")):
                raise BuildError(f"controller-gen wrote no cluster.x-k8s.io CRDs; see {log}")
            final = self.entry("capi-crds", v)
            staging = Path(tempfile.mkdtemp(prefix=".tmp-capi-crds-", dir=self.cache))
            staging.chmod(0o755)
            for manifest in sorted(out.glob("*.yaml")):
                shutil.move(str(manifest), staging / manifest.name)
            if final.exists():
                shutil.rmtree(staging)
            else:
                os.rename(staging, final)
            return final


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vpnctl.testenv.build",
        description="Build (or find) the pinned Kubernetes binaries and print their paths.",
    )
    parser.add_argument("--with-kubelet", action="store_true", help="also build the kubelet")
    parser.add_argument(
        "--with-nodes",
        action="store_true",
        help="also build what real tenant nodes run: kubelet, kube-proxy, kube-scheduler, "
        "metrics-server",
    )
    parser.add_argument(
        "--with-konnectivity",
        action="store_true",
        help=f"also build the Konnectivity server and agent ({KONNECTIVITY_VERSION})",
    )
    parser.add_argument("--json", action="store_true", help="print the paths as JSON")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        binaries = ensure_binaries(
            with_kubelet=args.with_kubelet,
            with_nodes=args.with_nodes,
            with_konnectivity=args.with_konnectivity,
        )
    except BuildError as exc:
        print(f"k8s-bins: FAILED: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(binaries.as_dict(), indent=2))
    else:
        for name, path in binaries.as_dict().items():
            print(f"{name:24} {path or '-'}")
    _stderr_progress(f"done in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
