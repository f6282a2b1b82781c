"""The Watcher against a scripted fake of its own ``WatchSource`` interface.

The real-apiserver test (tests/kube/test_kube_watch.py) proves the wiring; these pin down
each path through the loop: relist on 410 (in the stream or as an HTTP error), synthetic
events for the gap, reconnect from the last version, backoff, liveness.
"""

from __future__ import annotations

import asyncio
import builtins
import random
from collections.abc import AsyncGenerator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tests.support.polling import aeventually
from vpnctl.kube import (
    SECRET,
    Forbidden,
    Gone,
    KubeObject,
    ManualClock,
    Resource,
    TooManyRequests,
    TransportError,
    Watcher,
    WatchEvent,
    WatchMetrics,
)

HANG = "hang"  # a stream that stays open and quiet
LIVE = "live"  # a stream that yields what the test puts in FakeSource.live


def obj(name: str, rv: str, namespace: str = "t", **data: str) -> KubeObject:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "resourceVersion": rv},
        "data": data,
    }


def ev(kind: str, o: KubeObject) -> WatchEvent:
    return {"type": kind, "object": o}


def bookmark(rv: str) -> WatchEvent:
    return {"type": "BOOKMARK", "object": {"kind": "Secret", "metadata": {"resourceVersion": rv}}}


def error_410() -> WatchEvent:
    return {
        "type": "ERROR",
        "object": {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"},
    }


Stream = builtins.list[WatchEvent | Exception] | str | Exception


class FakeSource:
    """Scripted lists and watch streams. It serves plain watches: the Watcher passes
    ``field_selector``, ``page_size`` and ``transform`` only when it was given them
    (see ``WatchSource``), so beyond ``label_selector`` no option may arrive here."""

    def __init__(self) -> None:
        self.lists: builtins.list[tuple[builtins.list[KubeObject], str] | Exception] = []
        self.streams: builtins.list[Stream] = []
        self.watched_from: builtins.list[str] = []
        self.list_calls = 0
        self.live: asyncio.Queue[WatchEvent] = asyncio.Queue()

    async def list(
        self, res: Resource, namespace: str | None = None, **options: Any
    ) -> tuple[builtins.list[KubeObject], str]:
        assert set(options) <= {"label_selector"}, f"this fake serves plain lists: {options}"
        self.list_calls += 1
        step = self.lists.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    async def watch(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        resource_version: str,
        timeout_seconds: int,
        **options: Any,
    ) -> AsyncGenerator[WatchEvent, None]:
        assert set(options) <= {"label_selector"}, f"this fake serves plain watches: {options}"
        self.watched_from.append(resource_version)
        script = self.streams.pop(0) if self.streams else HANG
        if isinstance(script, Exception):
            raise script
        if script == HANG:
            await asyncio.Event().wait()
        if script == LIVE:
            while True:
                yield await self.live.get()
        assert not isinstance(script, str)
        for item in script:
            if isinstance(item, Exception):
                raise item
            yield item


class Recorder:
    def __init__(self) -> None:
        self.events: builtins.list[tuple[str, str, str]] = []

    def __call__(self, event_type: str, o: KubeObject) -> None:
        self.events.append((event_type, o["metadata"]["name"], o["metadata"]["resourceVersion"]))


class Harness:
    def __init__(self) -> None:
        self.source = FakeSource()
        self.clock = ManualClock()
        self.registry = CollectorRegistry()
        self.recorder = Recorder()
        self.watcher = Watcher(
            self.source,
            SECRET,
            "t",
            on_event=self.recorder,
            clock=self.clock,
            metrics=WatchMetrics(self.registry),
            rng=random.Random(1),
            timeout_seconds=60,
        )
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.ensure_future(self.watcher.run())

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task

    def restarts(self, reason: str) -> float:
        value = self.registry.get_sample_value(
            "vpnctl_watch_restarts_total", {"resource": "secrets", "reason": reason}
        )
        return value or 0.0

    def names(self) -> builtins.list[str]:
        return sorted(o["metadata"]["name"] for o in self.watcher.store.list())


@pytest.fixture
async def h() -> Any:
    harness = Harness()
    yield harness
    if harness.task is not None and not harness.task.done():
        await harness.stop()


async def test_list_then_watch_keeps_store_and_emits_events(h: Harness) -> None:
    h.source.lists = [([obj("a", "10"), obj("b", "11")], "12")]
    h.source.streams = [
        [
            ev("ADDED", obj("c", "13")),
            ev("MODIFIED", obj("a", "14", k="v")),
            bookmark("15"),
            ev("DELETED", obj("b", "16")),
        ],
        HANG,
    ]
    h.start()
    await aeventually(lambda: len(h.source.watched_from) == 2, what="the second watch", interval=0)
    assert h.recorder.events == [
        ("ADDED", "a", "10"),
        ("ADDED", "b", "11"),
        ("ADDED", "c", "13"),
        ("MODIFIED", "a", "14"),
        ("DELETED", "b", "16"),
    ]
    assert h.names() == ["a", "c"]
    assert h.watcher.store.get("a", "t") == obj("a", "14", k="v")
    assert h.watcher.synced.is_set()
    # Watched from the list's version, resumed from the last one seen (the bookmark's
    # was passed by the DELETED after it), with no relist for a stream that just ended.
    assert h.source.watched_from == ["12", "16"]
    assert h.source.list_calls == 1
    assert h.restarts("closed") == 1


async def test_a_bookmark_moves_the_resume_point(h: Harness) -> None:
    h.source.lists = [([], "5")]
    h.source.streams = [[bookmark("90")], HANG]
    h.start()
    await aeventually(lambda: len(h.source.watched_from) == 2, what="the second watch", interval=0)
    assert h.source.watched_from == ["5", "90"]
    assert h.recorder.events == []


@pytest.mark.parametrize("how", ["error event", "http error"])
async def test_410_relists_and_emits_what_changed_in_the_gap(h: Harness, how: str) -> None:
    h.source.lists = [
        ([obj("keep", "1"), obj("change", "2"), obj("vanish", "3")], "4"),
        ([obj("keep", "1"), obj("change", "7"), obj("new", "8")], "9"),
    ]
    gone: Stream = [error_410()] if how == "error event" else Gone("too old", status=410)
    h.source.streams = [gone, HANG]
    h.start()
    await aeventually(
        lambda: len(h.source.watched_from) == 2, what="the watch after the relist", interval=0
    )
    assert h.recorder.events[3:] == [
        ("DELETED", "vanish", "3"),
        ("MODIFIED", "change", "7"),
        ("ADDED", "new", "8"),
    ]
    assert h.names() == ["change", "keep", "new"]
    assert h.source.watched_from == ["4", "9"]
    assert h.restarts("gone") == 1
    assert h.clock.sleeps == []  # the first 410 relists at once


async def test_410_again_right_after_a_relist_backs_off(h: Harness) -> None:
    h.source.lists = [([], "1"), ([], "2"), ([], "3")]
    h.source.streams = [[error_410()], [error_410()], HANG]
    h.start()
    await aeventually(lambda: len(h.clock.sleeps) == 1, what="a backoff", interval=0)
    assert h.source.list_calls == 2
    h.clock.advance(60)
    await aeventually(lambda: len(h.source.watched_from) == 3, what="the third watch", interval=0)
    assert h.source.list_calls == 3
    assert h.restarts("gone") == 2


async def test_a_broken_stream_reconnects_from_the_last_version_after_backoff(
    h: Harness,
) -> None:
    reset = TransportError("ClientPayloadError: connection reset", method="GET", path="/x")
    h.source.lists = [([obj("a", "1")], "2")]
    h.source.streams = [[ev("MODIFIED", obj("a", "3")), reset], HANG]
    h.start()
    await aeventually(lambda: len(h.clock.sleeps) == 1, what="a backoff", interval=0)
    assert 0.25 <= h.clock.sleeps[0] <= 0.5
    assert len(h.source.watched_from) == 1
    h.clock.advance(h.clock.sleeps[0])
    await aeventually(lambda: len(h.source.watched_from) == 2, what="the reconnect", interval=0)
    assert h.source.watched_from == ["2", "3"]
    assert h.source.list_calls == 1  # no relist needed
    assert h.restarts("error") == 1


async def test_a_failing_list_is_retried_with_growing_backoff(h: Harness) -> None:
    denied = Forbidden("secrets is forbidden", status=403, method="GET", path="/x")
    h.source.lists = [denied, denied, ([obj("a", "1")], "2")]
    h.start()
    await aeventually(lambda: len(h.clock.sleeps) == 1, what="first backoff", interval=0)
    h.clock.advance(10)
    await aeventually(lambda: len(h.clock.sleeps) == 2, what="second backoff", interval=0)
    assert h.clock.sleeps[1] > h.clock.sleeps[0] / 2
    assert not h.watcher.synced.is_set()
    h.clock.advance(10)
    await aeventually(h.watcher.synced.is_set, what="the list", interval=0)
    assert h.restarts("error") == 2
    assert h.recorder.events == [("ADDED", "a", "1")]


async def test_a_throttled_watch_waits_what_retry_after_says(h: Harness) -> None:
    throttled = TooManyRequests("cache not ready", status=429, retry_after=7.0)
    h.source.lists = [([], "1")]
    h.source.streams = [throttled, HANG]
    h.start()
    await aeventually(lambda: len(h.clock.sleeps) == 1, what="a backoff", interval=0)
    assert h.clock.sleeps == [7.0]
    h.clock.advance(7)
    await aeventually(lambda: len(h.source.watched_from) == 2, what="the reconnect", interval=0)


async def test_healthy_turns_false_after_silence_and_back_on_activity(h: Harness) -> None:
    h.source.lists = [([], "1")]
    h.source.streams = [HANG]
    h.start()
    await aeventually(lambda: len(h.source.watched_from) == 1, what="the watch", interval=0)
    assert h.watcher.healthy(max_silence=120)
    h.clock.advance(119)
    assert h.watcher.healthy(max_silence=120)
    h.clock.advance(2)
    assert not h.watcher.healthy(max_silence=120)


async def test_activity_brings_health_back(h: Harness) -> None:
    h.source.lists = [([], "1")]
    h.source.streams = [LIVE]
    h.start()
    await aeventually(lambda: len(h.source.watched_from) == 1, what="the watch", interval=0)
    h.clock.advance(100)
    assert not h.watcher.healthy(max_silence=60)
    h.source.live.put_nowait(bookmark("2"))
    await aeventually(lambda: h.watcher.healthy(max_silence=60), what="health", interval=0)
    assert h.watcher.resource_version == "2"


async def test_an_async_handler_is_awaited_and_a_failing_one_stops_the_watcher() -> None:
    source = FakeSource()
    source.lists = [([obj("a", "1")], "2")]
    seen: builtins.list[str] = []

    async def handler(event_type: str, o: KubeObject) -> None:
        await asyncio.sleep(0)
        seen.append(o["metadata"]["name"])
        raise RuntimeError("handler bug")

    watcher = Watcher(
        source,
        SECRET,
        on_event=handler,
        clock=ManualClock(),
        metrics=WatchMetrics(CollectorRegistry()),
        rng=random.Random(1),
    )
    with pytest.raises(RuntimeError, match="handler bug"):
        await watcher.run()
    assert seen == ["a"]


class SelectingSource(FakeSource):
    """A FakeSource that records the optional arguments the Watcher passes."""

    def __init__(self) -> None:
        super().__init__()
        self.list_options: builtins.list[dict[str, Any]] = []
        self.watch_options: builtins.list[dict[str, Any]] = []

    async def list(
        self, res: Resource, namespace: str | None = None, **options: Any
    ) -> tuple[builtins.list[KubeObject], str]:
        self.list_options.append(options)
        return await super().list(res, namespace)

    def watch(
        self, res: Resource, namespace: str | None = None, **options: Any
    ) -> AsyncGenerator[WatchEvent, None]:
        self.watch_options.append(options)
        return super().watch(
            res,
            namespace,
            resource_version=options["resource_version"],
            timeout_seconds=options["timeout_seconds"],
        )


async def test_field_selector_page_size_and_transform_reach_the_source_and_the_store() -> None:
    source = SelectingSource()
    source.lists = [([obj("a", "1", big="x" * 50)], "2")]
    source.streams = [[ev("ADDED", obj("b", "3", big="y" * 50))]]

    def slim(o: KubeObject) -> KubeObject:
        return {**o, "data": {}}

    recorder = Recorder()
    watcher = Watcher(
        source,
        SECRET,
        on_event=recorder,
        clock=ManualClock(),
        metrics=WatchMetrics(CollectorRegistry()),
        rng=random.Random(1),
        field_selector="type=Opaque",
        page_size=25,
        transform=slim,
        sizer=len,
    )
    task = asyncio.ensure_future(watcher.run())
    try:
        await aeventually(
            lambda: len(recorder.events) == 2, what="the listed and the watched object", interval=0
        )
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert source.list_options[0]["field_selector"] == "type=Opaque"
    assert source.list_options[0]["page_size"] == 25
    assert source.list_options[0]["transform"] is slim
    assert source.watch_options[0]["field_selector"] == "type=Opaque"
    # Stored after the transform, whether listed (a source may not apply it) or watched.
    assert [o["data"] for o in watcher.store.list()] == [{}, {}]
    assert watcher.store.bytes == 2 * len(slim(obj("a", "1")))


async def test_without_the_options_the_watcher_passes_none_of_them() -> None:
    # Sources that predate field selectors (tests' fakes) keep working.
    h = Harness()
    h.source.lists = [([obj("a", "1")], "2")]
    h.start()
    try:
        await aeventually(lambda: h.names() == ["a"], what="listed", interval=0)
    finally:
        await h.stop()
