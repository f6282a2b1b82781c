"""Fixtures for the tests of ``vpnctl.kube`` against the session's service cluster.

Import the ones a test module uses (``from .kubefix import kube``); they build on
``service_cluster`` and ``namespace`` from conftest.py.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from vpnctl.kube import Kube, Resource, connect
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
