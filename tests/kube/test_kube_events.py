"""Events on a real apiserver: a repeat is counted on the same object, not piled up."""

from __future__ import annotations

import pytest

from vpnctl.kube import CONFIG_MAP, EVENT, NAMESPACE, Kube, KubeObject, ManualClock, record_event
from vpnctl.kube.events import EventType

from .kubefix import kube  # noqa: F401

pytestmark = pytest.mark.kube


async def test_identical_events_are_counted_on_one_object(kube: Kube, namespace: str) -> None:  # noqa: F811
    regarding = await kube.create(
        CONFIG_MAP, {"metadata": {"name": "subject", "namespace": namespace}}
    )
    clock = ManualClock()

    async def record(type_: EventType, reason: str, note: str) -> KubeObject:
        return await record_event(
            kube,
            regarding=regarding,
            type=type_,
            reason=reason,
            note=note,
            action="Reconcile",
            clock=clock,
            reporting_instance="vpnctl-0",
        )

    async def overlap() -> KubeObject:
        return await record(
            "Warning",
            "CIDROverlap",
            "tunnel CIDR 198.18.0.0/24 overlaps the pod CIDR; set spec.tunnelCIDR",
        )

    first = await overlap()
    clock.advance(30)
    second = await overlap()
    clock.advance(30)
    third = await overlap()
    assert first["metadata"]["name"] == second["metadata"]["name"] == third["metadata"]["name"]
    assert third["count"] == 3
    assert third["firstTimestamp"] == first["firstTimestamp"]
    assert third["lastTimestamp"] != first["lastTimestamp"]

    other = await record("Normal", "Ready", "tunnel is up")
    assert other["metadata"]["name"] != first["metadata"]["name"]

    events, _ = await kube.list(EVENT, namespace, field_selector="involvedObject.name=subject")
    by_reason = {e["reason"]: e for e in events}
    assert set(by_reason) == {"CIDROverlap", "Ready"}
    overlap_event = by_reason["CIDROverlap"]
    assert overlap_event["count"] == 3
    assert overlap_event["type"] == "Warning"
    assert overlap_event["involvedObject"]["kind"] == "ConfigMap"
    assert overlap_event["involvedObject"]["uid"] == regarding["metadata"]["uid"]
    assert overlap_event["reportingComponent"] == "vpnctl.io/controller"
    assert overlap_event["reportingInstance"] == "vpnctl-0"
    assert overlap_event["source"] == {"component": "vpnctl.io/controller"}


async def test_an_event_about_a_cluster_scoped_object_lands_in_default(
    kube: Kube,  # noqa: F811
    namespace: str,
) -> None:
    regarding = await kube.get(NAMESPACE, namespace)
    assert regarding is not None
    event = await record_event(
        kube,
        regarding=regarding,
        type="Normal",
        reason="Seen",
        note=f"namespace {namespace} " + "x" * 2000,  # clipped to the API's limit
        action="Observe",
        clock=ManualClock(),
        reporting_instance="vpnctl-1",
    )
    assert event["metadata"]["namespace"] == "default"
    assert len(event["message"]) == 1024
    assert event["message"].endswith("...")
    await kube.delete(EVENT, event["metadata"]["name"], "default")
