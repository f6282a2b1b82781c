"""Fixtures for the tests of ``vpnctl.kube`` against the session's service cluster.

Import the ones a test module uses (``from .kubefix import kube``); they build on
``service_cluster`` and ``namespace`` from conftest.py.
"""

from __future__ import annotations

import asyncio
import builtins
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from vpnctl.kube import Kube, KubeObject, Resource, WatchEvent, connect
from vpnctl.testenv import ServiceCluster

# A throw-away CRD with a status subresource: tests of the generic mechanism shouldn't
# depend on the schema of our real CRDs while those evolve.
GADGET = Resource("kubetest.vpnctl.io", "v1", "gadgets", True, "Gadget")

_GADGET_CRD = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gadgets.kubetest.vpnctl.io
spec:
  group: kubetest.vpnctl.io
  scope: Namespaced
  names: {plural: gadgets, singular: gadget, kind: Gadget}
  versions:
    - name: v1
      served: true
      storage: true
      subresources: {status: {}}
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties:
                size: {type: integer, minimum: 1}
                colour: {type: string}
                tags: {type: array, items: {type: string}}
            status:
              type: object
              properties:
                observedGeneration: {type: integer}
                phase: {type: string}
"""


@pytest_asyncio.fixture(loop_scope="session")
async def kube(service_cluster: ServiceCluster) -> AsyncIterator[Kube]:
    """A Kube for the service cluster's admin, closed after the test."""
    async with await connect(kubeconfig=str(service_cluster.kubeconfig_path)) as client:
        yield client


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def gadget_crd(
    service_cluster: ServiceCluster, tmp_path_factory: pytest.TempPathFactory
) -> Resource:
    """The Gadget CRD, installed once per session and Established."""
    path: Path = tmp_path_factory.mktemp("crd") / "gadgets.yaml"
    await asyncio.to_thread(path.write_text, _GADGET_CRD)
    await service_cluster.apply_crds([path])
    return GADGET


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


class PassThroughSource:
    """A ``WatchSource`` around the real Kube for tests that stage what a watcher meets:
    lists and watches go to the apiserver as asked, but before each watch
    ``before_watch`` may change objects and pick the resourceVersion to watch from, and
    after each event ``after_event`` may hold the stream. A 410 Gone that arrives in a
    stream (an ERROR event) sets ``saw_410``."""

    def __init__(self, client: Kube) -> None:
        self.kube = client
        self.saw_410 = False

    async def before_watch(self, res: Resource, resource_version: str) -> str:
        return resource_version

    async def after_event(self, res: Resource) -> None:
        return None

    # Options the Watcher passes (selectors, page size, transform, timeout) go through
    # untouched: this source neither reads nor changes them.
    async def list(
        self, res: Resource, namespace: str | None = None, **options: Any
    ) -> tuple[builtins.list[KubeObject], str]:
        return await self.kube.list(res, namespace, **options)

    async def watch(
        self, res: Resource, namespace: str | None = None, *, resource_version: str, **options: Any
    ) -> AsyncGenerator[WatchEvent, None]:
        resource_version = await self.before_watch(res, resource_version)
        async for event in self.kube.watch(
            res, namespace, resource_version=resource_version, **options
        ):
            if event["type"] == "ERROR" and event["object"].get("code") == 410:
                self.saw_410 = True
            yield event
            await self.after_event(res)
