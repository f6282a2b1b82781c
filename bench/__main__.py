"""`python -m bench`: the controller scale benchmark on its own service cluster.

Builds (or finds) the pinned Kubernetes binaries, starts a service cluster with the CAPI
and vpnctl CRDs in a temporary folder, runs bench.scale, prints the table and writes it
to bench/results-controller.txt. Options: --tenants N --machines M --workers W.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
from pathlib import Path

from bench.scale import record, run_controller_scale
from vpnctl.kube import NAMESPACE, connect
from vpnctl.testenv import ServiceCluster, ensure_binaries

REPO = Path(__file__).resolve().parents[1]


async def main(args: argparse.Namespace) -> int:
    binaries = ensure_binaries()
    crds = [REPO / "charts/vpnctl/files/crds"]
    with tempfile.TemporaryDirectory(prefix="vpnctl-bench-") as tmp:
        print("starting a service cluster...", flush=True)
        async with ServiceCluster.start(Path(tmp), binaries, crds=crds) as cluster:
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
                )
            finally:
                await kube.close()
    print()
    print(result.table(), end="")
    record(result, source="python -m bench")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--machines", type=int, default=3)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--log-level", default="WARNING")
    parsed = parser.parse_args()
    logging.basicConfig(level=parsed.log_level.upper(), stream=sys.stderr)
    sys.exit(asyncio.run(main(parsed)))
