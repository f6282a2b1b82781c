"""List-then-watch that never goes silently stale, with a cache the reconcilers read.

kubernetes_asyncio's watch gives up (or loops) on 410 Gone and says nothing when a
connection dies quietly; kopf's worst failures come from exactly that. So here:

- a watch starts from the list's resourceVersion, with bookmarks, and resumes from the
  last version seen when the server ends the stream;
- 410 Gone, whether an HTTP error or an ERROR event in the stream, means relist: the
  fresh list is compared with the ``Store`` and the differences are emitted as
  synthetic events, including a DELETED for every object that vanished during the gap;
- other failures reconnect with jittered backoff, forever (a missing CRD or RBAC rule
  must not crash the controller: it shows in ``/healthz`` and the logs instead);
- ``last_activity`` moves on every sign of life (list, event, bookmark, a stream the
  server ended on time), and ``healthy(max_silence)`` is what ``/healthz`` asks;
- every restart is counted in ``vpnctl_watch_restarts_total{resource,reason}``.

The watcher keeps the ``Store`` up to date *before* calling ``on_event``, so a handler
(which should only enqueue a key) and the reconciler after it see the same world.

Watches of objects a hostile party writes (a tenant's CSRs) need two more things: a
``field_selector`` so the apiserver sends only what we asked for, and a ``transform``
applied to every object *before* it is stored (and, through ``list``, page by page), so
the cache can drop a huge field instead of holding it; it must be idempotent. ``Store``
counts the bytes it holds with the ``sizer`` given, for per-tenant budgets.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import inspect
import logging
import random
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter

from telemetry.logs import pairs
from vpnctl.kube.clock import Clock
from vpnctl.kube.errors import ApiError, Gone, TooManyRequests, error_from_status_object
from vpnctl.kube.resources import KubeObject, Resource, WatchEvent, object_key
from vpnctl.kube.retry import backoff

_log = logging.getLogger(__name__)

EventHandler = Callable[[str, KubeObject], Awaitable[None] | None]
Transform = Callable[[KubeObject], KubeObject]
Sizer = Callable[[KubeObject], int]
Key = tuple[str, str]  # (namespace or "", name)


class WatchSource(Protocol):
    """What a Watcher needs of a connection; ``Kube`` is one, tests bring a fake.

    The Watcher passes ``field_selector``, ``page_size`` and ``transform`` only when it
    was given them, so a fake for a plain watch needs just ``label_selector``.
    """

    async def list(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        page_size: int = 500,
        transform: Transform | None = None,
    ) -> tuple[builtins.list[KubeObject], str]: ...

    def watch(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        resource_version: str,
        timeout_seconds: int,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> AsyncGenerator[WatchEvent, None]: ...


class WatchMetrics:
    """The watch counters, registered once per registry and shared by all watchers."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.restarts = Counter(
            "vpnctl_watch_restarts",
            "Watch streams restarted, by resource and reason "
            "(closed: ended by the server; gone: 410, relisted; error: failed, backed off).",
            ["resource", "reason"],
            registry=registry,
        )


class Store:
    """The last known state of each watched object, keyed by (namespace, name).

    Only its Watcher writes to it. Readers get the objects as the apiserver sent them
    (after the Watcher's ``transform``): treat them as read-only. ``bytes`` is the sum of
    ``sizer`` over the objects held (0 without a sizer).
    """

    def __init__(self, sizer: Sizer | None = None) -> None:
        self._objects: dict[Key, KubeObject] = {}
        self._sizer = sizer
        self._sizes: dict[Key, int] = {}
        self.bytes = 0

    def get(self, name: str, namespace: str | None = None) -> KubeObject | None:
        return self._objects.get((namespace or "", name))

    def list(self, namespace: str | None = None) -> builtins.list[KubeObject]:
        if namespace is None:
            return builtins.list(self._objects.values())
        return [obj for (ns, _), obj in self._objects.items() if ns == namespace]

    def keys(self) -> builtins.list[Key]:
        return builtins.list(self._objects)

    def __len__(self) -> int:
        return len(self._objects)

    def __contains__(self, key: object) -> bool:
        return key in self._objects

    def __iter__(self) -> Iterator[KubeObject]:
        return iter(builtins.list(self._objects.values()))

    # --- for the watcher ------------------------------------------------------------------

    def upsert(self, obj: KubeObject) -> None:
        key = object_key(obj)
        self._objects[key] = obj
        if self._sizer is not None:
            size = self._sizer(obj)
            self.bytes += size - self._sizes.get(key, 0)
            self._sizes[key] = size

    def discard(self, obj: KubeObject) -> None:
        key = object_key(obj)
        self._objects.pop(key, None)
        self.bytes -= self._sizes.pop(key, 0)

    def replace_all(self, objects: dict[Key, KubeObject]) -> dict[Key, KubeObject]:
        """Swap in a fresh listing; returns what was there before."""
        old, self._objects = self._objects, dict(objects)
        if self._sizer is not None:
            sizer = self._sizer
            self._sizes = {key: sizer(obj) for key, obj in self._objects.items()}
            self.bytes = sum(self._sizes.values())
        return old

    def clear(self) -> None:
        self.replace_all({})


def _resource_version(obj: KubeObject) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


class Watcher:
    """Keeps ``store`` equal to the apiserver's view of one resource (in one namespace,
    or all) and calls ``on_event(type, obj)`` for every change. Run it as a task:
    ``run()`` returns only by cancellation, or by an exception from ``on_event``."""

    def __init__(
        self,
        source: WatchSource,
        res: Resource,
        namespace: str | None = None,
        *,
        on_event: EventHandler,
        clock: Clock,
        metrics: WatchMetrics,
        rng: random.Random,
        label_selector: str | None = None,
        field_selector: str | None = None,
        page_size: int | None = None,
        transform: Transform | None = None,
        sizer: Sizer | None = None,
        timeout_seconds: int = 120,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
    ) -> None:
        self.res = res
        self.namespace = namespace
        self.store = Store(sizer)
        self.synced = asyncio.Event()  # set once the first list is in the store
        self.last_activity = clock.monotonic()
        self.resource_version = ""
        self._source = source
        self._on_event = on_event
        self._clock = clock
        self._metrics = metrics
        self._rng = rng
        self._label_selector = label_selector
        self._field_selector = field_selector
        self._page_size = page_size
        self._transform = transform
        self._timeout_seconds = timeout_seconds
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._where = pairs(
            resource=res.label, namespace=namespace or "*", field_selector=field_selector or None
        )

    def healthy(self, max_silence: float) -> bool:
        """True if the watch showed a sign of life within ``max_silence`` seconds.

        A quiet resource still shows one at least every ``timeout_seconds`` (the server
        ends the stream, we reconnect) and with every bookmark, so ``max_silence`` should
        be comfortably above ``timeout_seconds`` (e.g. twice it).
        """
        return self._clock.monotonic() - self.last_activity <= max_silence

    async def run(self) -> None:
        need_list = True
        failures = 0
        gone_in_a_row = 0
        while True:
            delay = 0.0
            try:
                if need_list:
                    await self._relist()
                    need_list = False
                events = await self._watch_once()
                reason = "closed"
                failures = 0
                gone_in_a_row = 0  # the server accepted our version: no 410 loop
                _log.debug("event=watch_closed %s events=%d", self._where, events)
            except Gone as exc:
                reason = "gone"
                need_list = True
                gone_in_a_row += 1
                if gone_in_a_row > 1:
                    # A server that keeps saying 410 right after a relist: don't spin.
                    delay = self._backoff(gone_in_a_row - 1)
                _log.info(
                    "event=watch_gone %s resource_version=%s relist=true detail=%r",
                    self._where,
                    self.resource_version,
                    exc.message,
                )
            except ApiError as exc:
                reason = "error"
                failures += 1
                delay = self._backoff(failures)
                if isinstance(exc, TooManyRequests) and exc.retry_after is not None:
                    # e.g. a restarted apiserver whose watch cache isn't ready yet
                    delay = max(delay, min(exc.retry_after, self._backoff_cap))
                _log.warning(
                    "event=watch_failed %s failures=%d retry_in=%.1fs error=%r",
                    self._where,
                    failures,
                    delay,
                    str(exc),
                )
            self._metrics.restarts.labels(resource=self.res.label, reason=reason).inc()
            if not self.resource_version:
                need_list = True
            if delay:
                await self._clock.sleep(delay)

    # --- internals --------------------------------------------------------------------------

    def _touch(self) -> None:
        self.last_activity = self._clock.monotonic()

    def _backoff(self, attempt: int) -> float:
        return backoff(
            attempt=attempt, base=self._backoff_base, cap=self._backoff_cap, rng=self._rng
        )

    async def _emit(self, event_type: str, obj: KubeObject) -> None:
        result = self._on_event(event_type, obj)
        if inspect.isawaitable(result):
            await result

    def _optional(self, **options: Any) -> dict[str, Any]:
        """The optional arguments that were given (see ``WatchSource``)."""
        return {k: v for k, v in options.items() if v is not None}

    async def _relist(self) -> None:
        items, resource_version = await self._source.list(
            self.res,
            self.namespace,
            label_selector=self._label_selector,
            **self._optional(
                field_selector=self._field_selector,
                page_size=self._page_size,
                transform=self._transform,
            ),
        )
        self._touch()
        if self._transform is not None:  # idempotent: a source may not have applied it
            items = [self._transform(obj) for obj in items]
        fresh = {object_key(obj): obj for obj in items}
        old = self.store.replace_all(fresh)
        self.resource_version = resource_version
        first = not self.synced.is_set()
        self.synced.set()
        _log.info(
            "event=watch_listed %s objects=%d resource_version=%s first=%s",
            self._where,
            len(fresh),
            resource_version,
            first,
        )
        for key, obj in old.items():
            if key not in fresh:
                await self._emit("DELETED", obj)
        for key, obj in fresh.items():
            before = old.get(key)
            if before is None:
                await self._emit("ADDED", obj)
            elif _resource_version(before) != _resource_version(obj):
                await self._emit("MODIFIED", obj)

    async def _watch_once(self) -> int:
        """One watch stream, to its end. Returns how many object events it carried."""
        count = 0
        stream = self._source.watch(
            self.res,
            self.namespace,
            resource_version=self.resource_version,
            timeout_seconds=self._timeout_seconds,
            label_selector=self._label_selector,
            **self._optional(field_selector=self._field_selector),
        )
        async with contextlib.aclosing(stream):
            async for event in stream:
                self._touch()
                event_type, obj = event["type"], event["object"]
                if event_type == "ERROR":
                    raise error_from_status_object(
                        obj, method="WATCH", path=self.res.path(namespace=self.namespace)
                    )
                version = _resource_version(obj)
                if event_type == "BOOKMARK":
                    self.resource_version = version or self.resource_version
                    continue
                if event_type not in ("ADDED", "MODIFIED", "DELETED"):
                    _log.warning("event=watch_unknown_type %s type=%r", self._where, event_type)
                    continue
                if self._transform is not None:
                    obj = self._transform(obj)
                if event_type == "DELETED":
                    self.store.discard(obj)
                else:
                    self.store.upsert(obj)
                self.resource_version = version or self.resource_version
                count += 1
                await self._emit(event_type, obj)
        # The server ended the stream on time: that, too, says it is alive.
        self._touch()
        return count
