"""The Watcher against a real kube-apiserver: events, a real 410 and relist, liveness."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import random
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from tests.support.polling import aeventually
from vpnctl.kube import (
    CONFIG_MAP,
    Kube,
    KubeObject,
    Resource,
    SystemClock,
    Watcher,
    WatchMetrics,
    WatchSource,
)

from .kubefix import PassThroughSource, gadget_crd, kube  # noqa: F401

pytestmark = pytest.mark.kube


class Events:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

    def __call__(self, event_type: str, obj: KubeObject) -> None:
        self.queue.put_nowait((event_type, obj["metadata"]["name"]))

    async def next(self, timeout: float = 10.0) -> tuple[str, str]:
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def expect(self, *wanted: tuple[str, str], timeout: float = 10.0) -> None:
        got = [await self.next(timeout) for _ in wanted]
        assert sorted(got) == sorted(wanted)


def _cm(name: str, namespace: str, value: str = "1") -> KubeObject:
    # Labelled: the watchers select them, and not kube-root-ca.crt, which the
    # controller-manager puts into every namespace.
    return {
        "metadata": {"name": name, "namespace": namespace, "labels": {"kubetest": "yes"}},
        "data": {"v": value},
    }


def _restarts(registry: CollectorRegistry, reason: str) -> float:
    value = registry.get_sample_value(
        "vpnctl_watch_restarts_total", {"resource": "configmaps", "reason": reason}
    )
    return value or 0.0


@contextlib.asynccontextmanager
async def watching(
    source: WatchSource,
    res: Resource,
    namespace: str,
    events: Events,
    *,
    timeout_seconds: int,
    registry: CollectorRegistry | None = None,
    label_selector: str | None = None,
) -> AsyncIterator[Watcher]:
    """A Watcher of RES in NAMESPACE (events to EVENTS), running and synced."""
    watcher = Watcher(
        source,
        res,
        namespace,
        on_event=events,
        clock=SystemClock(),
        metrics=WatchMetrics(registry or CollectorRegistry()),
        rng=random.Random(1),
        label_selector=label_selector,
        timeout_seconds=timeout_seconds,
    )
    task = asyncio.create_task(watcher.run())
    try:
        await asyncio.wait_for(watcher.synced.wait(), 10)
        yield watcher
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_watch_sees_added_modified_deleted(kube: Kube, namespace: str) -> None:  # noqa: F811
    await kube.create(CONFIG_MAP, _cm("before", namespace))
    events = Events()
    registry = CollectorRegistry()
    async with watching(
        kube,
        CONFIG_MAP,
        namespace,
        events,
        registry=registry,
        label_selector="kubetest",
        timeout_seconds=2,  # the server ends the stream every 2 s: we must resume
    ) as watcher:
        await events.expect(("ADDED", "before"))
        await kube.create(CONFIG_MAP, _cm("c1", namespace))
        await events.expect(("ADDED", "c1"))
        await kube.patch_merge(CONFIG_MAP, "c1", {"data": {"v": "2"}}, namespace=namespace)
        await events.expect(("MODIFIED", "c1"))
        stored = watcher.store.get("c1", namespace)
        assert stored is not None
        assert stored["data"] == {"v": "2"}

        # timeout_seconds ends the stream on the server's side; the watcher starts again.
        await aeventually(
            lambda: _restarts(registry, "closed") >= 1,
            what="a server-side end of stream",
            timeout=10,
        )
        await kube.delete(CONFIG_MAP, "c1", namespace)
        await events.expect(("DELETED", "c1"))
        assert watcher.store.get("c1", namespace) is None
        assert [o["metadata"]["name"] for o in watcher.store.list(namespace)] == ["before"]
        assert events.queue.empty()
        assert _restarts(registry, "gone") == 0


class GapThenTooOld(PassThroughSource):
    """The real Kube, except: before the first watch, objects change (the "gap" a watcher
    misses while disconnected), and that watch asks for resourceVersion "1". For a CRD
    installed after the apiserver started, the watch cache begins at the CRD's creation,
    so the real apiserver answers "1" with 410 Gone (an ERROR event). (For built-in kinds
    on a fresh cluster it would replay its whole history instead: etcd hasn't compacted
    yet.)"""

    def __init__(self, client: Kube, res: Resource, namespace: str) -> None:
        super().__init__(client)
        self.res = res
        self.namespace = namespace
        self.watched_from: builtins.list[str] = []

    async def before_watch(self, res: Resource, resource_version: str) -> str:
        if not self.watched_from:
            await self.kube.delete(self.res, "vanishes", self.namespace)
            await self.kube.apply(self.res, _gadget("appears", self.namespace))
            await self.kube.apply(self.res, _gadget("changes", self.namespace, size=2))
            resource_version = "1"
        self.watched_from.append(resource_version)
        return resource_version


def _gadget(name: str, namespace: str, size: int = 1) -> KubeObject:
    return {"metadata": {"name": name, "namespace": namespace}, "spec": {"size": size}}


async def test_410_from_a_real_apiserver_relists_with_a_synthetic_deleted(
    kube: Kube,  # noqa: F811
    gadget_crd: Resource,  # noqa: F811
    namespace: str,
) -> None:
    for name in ("stays", "vanishes", "changes"):
        await kube.apply(gadget_crd, _gadget(name, namespace))
    events = Events()
    registry = CollectorRegistry()
    source = GapThenTooOld(kube, gadget_crd, namespace)
    async with watching(
        source, gadget_crd, namespace, events, registry=registry, timeout_seconds=30
    ) as watcher:
        await events.expect(("ADDED", "stays"), ("ADDED", "vanishes"), ("ADDED", "changes"))
        await events.expect(("DELETED", "vanishes"), ("MODIFIED", "changes"), ("ADDED", "appears"))
        assert source.saw_410
        assert (
            registry.get_sample_value(
                "vpnctl_watch_restarts_total",
                {"resource": "gadgets.kubetest.vpnctl.io", "reason": "gone"},
            )
            == 1
        )
        assert sorted(o["metadata"]["name"] for o in watcher.store.list()) == [
            "appears",
            "changes",
            "stays",
        ]
        # The watch after the relist started from the fresh list's version, and works.
        await kube.apply(gadget_crd, _gadget("later", namespace))
        await events.expect(("ADDED", "later"))
        assert source.watched_from[0] == "1"
        assert int(source.watched_from[1]) > 1
        assert events.queue.empty()


async def test_a_quiet_watch_turns_unhealthy_and_recovers(kube: Kube, namespace: str) -> None:  # noqa: F811
    events = Events()
    async with watching(
        kube, CONFIG_MAP, namespace, events, label_selector="kubetest", timeout_seconds=60
    ) as watcher:
        assert watcher.healthy(max_silence=1.0)
        await aeventually(
            lambda: not watcher.healthy(max_silence=1.0),
            what="the watch unhealthy after 1 s of silence",
            timeout=5,
        )
        await kube.create(CONFIG_MAP, _cm("ping", namespace))
        await events.expect(("ADDED", "ping"))
        assert watcher.healthy(max_silence=1.0)


async def test_kube_watch_takes_a_field_selector_and_events_over_128_kib(
    kube: Kube,  # noqa: F811
    namespace: str,
) -> None:
    """The apiserver filters by field: only ``wanted`` reaches us, ``other`` never does,
    though both change the same way; an event of about 600 KiB is read whole."""
    _, version = await kube.list(CONFIG_MAP, namespace)
    stream = kube.watch(
        CONFIG_MAP,
        namespace,
        resource_version=version,
        timeout_seconds=30,
        field_selector="metadata.name=wanted",
    )
    seen: builtins.list[tuple[str, str, int]] = []

    async def read() -> None:
        async with contextlib.aclosing(stream):
            async for event in stream:
                obj = event["object"]
                size = len((obj.get("data") or {}).get("big", ""))
                seen.append((event["type"], obj["metadata"]["name"], size))
                if event["type"] == "DELETED":
                    return

    reader = asyncio.create_task(read())
    big = "x" * (600 * 1024)
    await kube.create(CONFIG_MAP, {"metadata": {"name": "other", "namespace": namespace}})
    await kube.create(CONFIG_MAP, {"metadata": {"name": "wanted", "namespace": namespace}})
    await kube.patch_merge(CONFIG_MAP, "other", {"data": {"big": big}}, namespace=namespace)
    await kube.patch_merge(CONFIG_MAP, "wanted", {"data": {"big": big}}, namespace=namespace)
    await kube.delete(CONFIG_MAP, "wanted", namespace)
    await asyncio.wait_for(reader, 20)
    assert seen == [
        ("ADDED", "wanted", 0),
        ("MODIFIED", "wanted", len(big)),
        ("DELETED", "wanted", len(big)),
    ]
