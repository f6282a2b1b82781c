"""sidecar_apply_body: only our fields, and nothing to write when the attachment is current."""

from __future__ import annotations

from vpnctl.reconcile.service_objects import (
    APISERVER_CONTAINER,
)
from vpnctl.reconcile.sidecar_objects import (
    SIDECAR_HASH_ANNOTATION,
    SidecarAttachment,
    sidecar_apply_body,
)

ATTACHMENT = SidecarAttachment(
    container={"name": APISERVER_CONTAINER, "image": "vpnctl:test"},
    volumes=({"name": "vpnctl-apiserver", "emptyDir": {}},),
    config_hash="abc123",
)


def _deployment(*, hash_: str | None, with_sidecar: bool) -> dict[str, object]:
    containers = [{"name": "kube-apiserver", "image": "k"}]
    if with_sidecar:
        containers.append({"name": APISERVER_CONTAINER, "image": "vpnctl:old"})
    annotations = {SIDECAR_HASH_ANNOTATION: hash_} if hash_ else {}
    return {
        "metadata": {"name": "kas", "namespace": "t1"},
        "spec": {"template": {"metadata": {"annotations": annotations},
                              "spec": {"containers": containers}}},
    }  # fmt: skip


def test_body_holds_only_our_container_volumes_and_hash() -> None:
    body = sidecar_apply_body(_deployment(hash_=None, with_sidecar=False), attachment=ATTACHMENT)
    assert body is not None
    assert body["metadata"] == {"name": "kas", "namespace": "t1"}
    template = body["spec"]["template"]
    assert template["spec"]["containers"] == [ATTACHMENT.container]
    assert template["spec"]["volumes"] == list(ATTACHMENT.volumes)
    assert template["metadata"]["annotations"] == {SIDECAR_HASH_ANNOTATION: "abc123"}
    assert "selector" not in body["spec"]


def test_nothing_to_write_when_current_and_rewrite_when_stale_or_removed() -> None:
    current = _deployment(hash_="abc123", with_sidecar=True)
    assert sidecar_apply_body(current, attachment=ATTACHMENT) is None
    stale = _deployment(hash_="old", with_sidecar=True)
    assert sidecar_apply_body(stale, attachment=ATTACHMENT) is not None
    removed = _deployment(hash_="abc123", with_sidecar=False)
    assert sidecar_apply_body(removed, attachment=ATTACHMENT) is not None
