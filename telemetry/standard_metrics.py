"""The metrics every vpnctl binary exports besides its own: process, platform and GC
collectors, and ``vpnctl_build_info``.

prometheus_client registers these on its global ``REGISTRY`` only; our binaries use a
private registry (no module-level singletons), so without this they would be missing and
``process_resident_memory_bytes`` — what every platform dashboard looks for — would not
exist. Both binaries call ``register_standard`` on the registry they serve.
"""

from __future__ import annotations

from importlib import metadata

from prometheus_client import (
    CollectorRegistry,
    Gauge,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)

DISTRIBUTION = "vpnctl"


def build_version() -> str:
    """The installed distribution's version (the wheel's, or the editable checkout's)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        # Run from a source tree that was never installed; say so rather than guess.
        return "unknown"


def register_standard(registry: CollectorRegistry, *, component: str) -> None:
    """Register the process, platform and GC collectors and ``vpnctl_build_info``.

    ``component`` is ``controller`` or ``agent``: one Prometheus job may scrape both
    kinds of pod, and the version of each is then told apart.
    """
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    Gauge(
        "vpnctl_build_info",
        "Always 1; the labels say which build of which vpnctl binary runs.",
        ["component", "version"],
        registry=registry,
    ).labels(component, build_version()).set(1)
