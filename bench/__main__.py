"""`python -m bench` (`make bench`): every benchmark we have, in one run, into
bench/results.json.

1. The controller scale benchmark on its own service cluster: builds (or finds) the pinned
   Kubernetes binaries, starts a service cluster with the CAPI and vpnctl CRDs in a
   temporary folder, runs bench.scale (table also in bench/results-controller.txt).
   First, so that the process's peak RSS is the controller's.
2. The data-path benchmark (bench.dataplane): direct, vpnctl, gardener_style and
   kubermatic_style side by side in one underlay.

Then it writes bench/results.json (bench.results: every key of issue 14's shape; what is
not measured yet is null with a `missing` note) and prints the tables. Options:
--tenants N --machines M --workers W, --seconds S (iperf3 and 50-client load),
--skip-controller, --skip-dataplane.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
from pathlib import Path

from bench import dataplane, results
from bench.scale import ScaleResult, record, run_controller_scale
from vpnctl.kube import NAMESPACE, connect
from vpnctl.testenv import ServiceCluster, ensure_binaries

REPO = Path(__file__).resolve().parents[1]
# Every tenant has a ClusterIP Service for its server: the test clusters' default /24
# ran out at ~250 tenants ("failed to allocate a serviceIP: range is full").
SERVICE_CIDR = "198.19.240.0/20"


async def controller_scale(args: argparse.Namespace) -> ScaleResult:
    binaries = ensure_binaries()
    crds = [REPO / "charts/vpnctl/files/crds"]
    with tempfile.TemporaryDirectory(prefix="vpnctl-bench-") as tmp:
        print("starting a service cluster...", flush=True)
        async with ServiceCluster.start(
            Path(tmp), binaries, crds=crds, service_cidr=SERVICE_CIDR
        ) as cluster:
            kube = await connect(kubeconfig=str(cluster.kubeconfig_path))
            try:
                await kube.create(NAMESPACE, {"metadata": {"name": "bench"}})
                print(
                    f"creating {args.tenants} tenants x {args.machines} Machines, "
                    "waiting until every Tunnel is Ready...",
                    flush=True,
                )
                result = await run_controller_scale(
                    kube=kube,
                    namespace="bench",
                    tenants=args.tenants,
                    machines=args.machines,
                    workers=args.workers,
                    progress=True,
                    timeout=max(600.0, args.tenants * 2.0),
                )
            finally:
                await kube.close()
    print()
    print(result.table(), end="")
    record(result, source="python -m bench")
    return result


def controller_section(r: ScaleResult) -> dict[str, object]:
    return {
        "tenants": r.tenants,
        "machines_per_tenant": r.machines_per_tenant,
        "tenants_per_s": r.tenants / r.ready_seconds,
        "ready_s": r.ready_seconds,
        "rss_mib": r.peak_rss_mib,
        "writes": r.writes,
        "load_average": list(r.load),
        "missing": "idle resync (seconds, writes) not measured by the benchmark yet",
    }


async def main(args: argparse.Namespace) -> int:
    controller = None if args.skip_controller else controller_section(await controller_scale(args))
    latency = l3 = None
    notes = {path: style.note for path, style in dataplane.STYLES.items()}
    if not args.skip_dataplane:
        print("data path: direct, vpnctl, gardener_style, kubermatic_style...", flush=True)
        w = dataplane.Workload(duration=args.seconds, iperf_seconds=args.seconds)
        latency, l3 = dataplane.summarize(await dataplane.run_paths(w))
        print(dataplane.table(latency, l3))
    doc = results.results_doc(
        date=results.now(), machine=results.machine(), versions=results.versions(),
        latency=latency, l3=l3, controller=controller, notes=notes,
    )  # fmt: skip
    results.write(doc)
    print(f"wrote {results.RESULTS_JSON}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--machines", type=int, default=3)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--skip-controller", action="store_true")
    parser.add_argument("--skip-dataplane", action="store_true")
    parser.add_argument("--log-level", default="WARNING")
    parsed = parser.parse_args()
    logging.basicConfig(level=parsed.log_level.upper(), stream=sys.stderr)
    sys.exit(asyncio.run(main(parsed)))
