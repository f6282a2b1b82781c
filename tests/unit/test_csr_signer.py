"""The CSR signer acts on exactly the object it decided (issue 9, item 5), and records a
certificate before handing it out (item 4): vpnctl.controller.csr_signer against fakes of
its own two Protocols that change the world at the worst moment."""

from __future__ import annotations

import base64
import copy
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import certs
from certs.key_delivery import KEY_ANNOTATION
from tests.support import capi
from vpnctl.controller.csr_signer import deliver_key, handle_csr, has_key
from vpnctl.controller.interfaces import TenantRef
from vpnctl.kube import Conflict, KubeObject, NotFound
from vpnctl.reconcile.csr import NODE_SIGNER
from vpnctl.reconcile.revocation_book import IssuedCert

NOW = datetime(2030, 1, 1, tzinfo=UTC)
TENANT = TenantRef("ns", "tenant-a")
CA = certs.new_ca(
    common_name="tenant-a-vpn-ca", now=NOW - timedelta(days=1), lifetime=timedelta(days=365)
)
MACHINES = [capi.machine(name="m-1", node="node-1", internal_ip="198.19.0.11")]
NAME = "node-csr"
SERVER_KEY = certs.new_tls_crypt_v2_server_key()
NODE_KEY = certs.new_private_key()


def node_csr(uid: str = "uid-1", version: str = "1", key: bytes | None = None) -> KubeObject:
    pem = certs.new_csr(key or certs.new_private_key(), common_name="node-1")
    return {
        "metadata": {"name": NAME, "uid": uid, "resourceVersion": version},
        "spec": {
            "signerName": NODE_SIGNER,
            "request": base64.b64encode(pem).decode(),
            "usages": ["digital signature", "client auth"],
            "username": "system:node:node-1",
            "groups": ["system:nodes", "system:authenticated"],
        },
    }


def masters_csr() -> KubeObject:
    """What an attacker re-creates under the same name: a client certificate for
    system:masters from the apiserver's own signer."""
    pem = certs.new_csr(certs.new_private_key(), common_name="evil", organization="system:masters")
    return {
        "metadata": {"name": NAME, "uid": "uid-evil", "resourceVersion": "9"},
        "spec": {
            "signerName": "kubernetes.io/kube-apiserver-client",
            "request": base64.b64encode(pem).decode(),
            "usages": ["client auth"],
            "username": "system:node:node-1",
            "groups": ["system:nodes", "system:authenticated"],
        },
    }


def conditions(obj: Mapping[str, Any]) -> list[str]:
    return [c["type"] for c in (obj.get("status") or {}).get("conditions") or []]


class FakeApiServer:
    """``CSRApi`` over one in-memory CSR store with the apiserver's rules for updates:
    a write carrying another uid or resourceVersion than the stored object's is a
    Conflict. ``before`` runs at the start of a call (the moment to swap the object)."""

    def __init__(self, *objects: KubeObject) -> None:
        self.objects = {o["metadata"]["name"]: copy.deepcopy(o) for o in objects}
        self.before: dict[str, Callable[[], None]] = {}
        self.calls: list[str] = []
        self._version = 100

    def _write(self, call: str, decided: Mapping[str, Any], signer: str) -> KubeObject:
        self.calls.append(call)
        if call in self.before:
            self.before.pop(call)()
        if (decided.get("spec") or {}).get("signerName") != signer:
            raise ValueError("not our signer")  # as Kube does, before any request
        name = decided["metadata"]["name"]
        live = self.objects.get(name)
        if live is None:
            raise NotFound(f"{name} not found", status=404, reason="NotFound")
        for key in ("uid", "resourceVersion"):
            if live["metadata"][key] != decided["metadata"][key]:
                raise Conflict(f"{name}: {key} changed", status=409, reason="Conflict")
        self._version += 1
        live["metadata"]["resourceVersion"] = str(self._version)
        return live

    async def approve_csr(
        self, decided: Mapping[str, Any], *, signer: str, reason: str, message: str
    ) -> KubeObject:
        live = self._write("approve", decided, signer)
        live.setdefault("status", {}).setdefault("conditions", []).append(
            {"type": "Approved", "status": "True", "reason": reason}
        )
        return copy.deepcopy(live)

    async def deny_csr(
        self, decided: Mapping[str, Any], *, signer: str, reason: str, message: str
    ) -> KubeObject:
        live = self._write("deny", decided, signer)
        live.setdefault("status", {}).setdefault("conditions", []).append(
            {"type": "Denied", "status": "True", "reason": reason}
        )
        return copy.deepcopy(live)

    async def sign_csr(
        self, approved: Mapping[str, Any], *, signer: str, certificate_pem: bytes
    ) -> KubeObject:
        live = self._write("sign", approved, signer)
        live.setdefault("status", {})["certificate"] = base64.b64encode(certificate_pem).decode()
        return copy.deepcopy(live)

    async def annotate_csr(
        self, decided: Mapping[str, Any], *, signer: str, annotations: Mapping[str, str]
    ) -> KubeObject:
        live = self._write("annotate", decided, signer)
        live["metadata"].setdefault("annotations", {}).update(annotations)
        return copy.deepcopy(live)


class Book:
    """``IssuedRecorder``: what was recorded, and what the API looked like then."""

    def __init__(self, api: FakeApiServer, *, fail: bool = False) -> None:
        self.api = api
        self.fail = fail
        self.recorded: list[tuple[IssuedCert, list[str]]] = []

    async def record_issued(self, tenant: TenantRef, cert: IssuedCert) -> None:
        if self.fail:
            raise RuntimeError("the revocation book is unreachable")
        self.recorded.append((cert, list(self.api.calls)))


async def once(fn: Callable[[], Awaitable[KubeObject]]) -> KubeObject:
    return await fn()


async def handle(api: FakeApiServer, csr: KubeObject, book: Book | None = None) -> Any:
    return await handle_csr(
        api,
        csr,
        tenant=TENANT,
        ca=CA,
        machines=MACHINES,
        now=NOW,
        lifetime=timedelta(days=30),
        recorder=book,
        retrying=once,
        tls_crypt_server_key=SERVER_KEY,
    )


async def test_a_csr_recreated_between_decision_and_approval_is_not_approved() -> None:
    decided = node_csr()
    api = FakeApiServer(decided)

    def swap() -> None:  # deleted and re-created under the same name
        api.objects[NAME] = masters_csr()

    api.before["approve"] = swap
    with pytest.raises(Conflict):
        await handle(api, decided)
    assert conditions(api.objects[NAME]) == []
    assert "certificate" not in (api.objects[NAME].get("status") or {})
    # The next pass decides again from what is there now: not ours, never touched.
    result = await handle(api, copy.deepcopy(api.objects[NAME]))
    assert result.outcome == "skipped"
    assert api.calls == ["approve"]
    assert conditions(api.objects[NAME]) == []


async def test_a_csr_replaced_between_approval_and_signing_is_not_signed() -> None:
    decided = node_csr()
    api = FakeApiServer(decided)

    def swap() -> None:
        evil = node_csr(uid="uid-2", version="50")
        evil["status"] = {"conditions": [{"type": "Approved", "status": "True"}]}
        api.objects[NAME] = evil

    api.before["sign"] = swap
    with pytest.raises(Conflict):
        await handle(api, decided)
    assert "certificate" not in (api.objects[NAME].get("status") or {})


async def test_an_unchanged_csr_is_approved_and_signed_after_being_recorded() -> None:
    api = FakeApiServer(node_csr())
    book = Book(api)
    result = await handle(api, node_csr(), book)
    assert result.outcome == "signed"
    assert api.calls == ["approve", "annotate", "sign"]
    [(cert, calls_then)] = book.recorded
    assert calls_then == []  # recorded before anything was approved or handed out
    assert (cert.node, cert.machine) == ("node-1", "m-1")
    assert cert.serial == result.cert.serial
    issued = base64.b64decode(api.objects[NAME]["status"]["certificate"])
    info = certs.cert_info(issued)
    assert (info.serial, info.not_after) == (cert.serial, cert.not_after)


async def test_no_certificate_when_it_cannot_be_recorded() -> None:
    api = FakeApiServer(node_csr())
    with pytest.raises(RuntimeError):
        await handle(api, node_csr(), Book(api, fail=True))
    assert api.calls == []
    assert conditions(api.objects[NAME]) == []


async def test_a_denial_is_bound_to_the_decided_object_too() -> None:
    decided = node_csr()
    decided["spec"]["username"] = "system:node:node-9"  # no Machine: denied
    api = FakeApiServer(decided)
    api.before["deny"] = lambda: api.objects.__setitem__(NAME, node_csr(uid="uid-3", version="7"))
    with pytest.raises(Conflict):
        await handle(api, decided)
    assert conditions(api.objects[NAME]) == []


async def test_the_sealed_key_goes_on_the_csr_before_the_certificate() -> None:
    api = FakeApiServer(node_csr(key=NODE_KEY))
    seen: list[bool] = []
    api.before["sign"] = lambda: seen.append(
        KEY_ANNOTATION in api.objects[NAME]["metadata"].get("annotations", {})
    )
    result = await handle(api, node_csr(key=NODE_KEY))
    assert result.outcome == "signed"
    assert api.calls == ["approve", "annotate", "sign"]
    assert seen == [True]  # the key was there when the certificate was set
    live = api.objects[NAME]
    delivered = certs.unseal_node_key(
        live["metadata"]["annotations"][KEY_ANNOTATION], NODE_KEY, node="node-1", now=NOW
    )
    assert delivered.not_after == result.cert.not_after  # expires with the certificate
    metadata = certs.tls_crypt_v2_client_metadata(SERVER_KEY, delivered.client_key)
    assert certs.parse_node_key_metadata(metadata) == ("node-1", result.cert.not_after)
    with pytest.raises(certs.KeyMismatch):
        certs.unseal_node_key(
            live["metadata"]["annotations"][KEY_ANNOTATION],
            certs.new_private_key(),
            node="node-1",
            now=NOW,
        )


async def test_a_csr_replaced_between_approval_and_annotation_gets_no_key() -> None:
    decided = node_csr(key=NODE_KEY)
    api = FakeApiServer(decided)

    def swap() -> None:
        evil = node_csr(uid="uid-2", version="50")
        evil["status"] = {"conditions": [{"type": "Approved", "status": "True"}]}
        api.objects[NAME] = evil

    api.before["annotate"] = swap
    with pytest.raises(Conflict):
        await handle(api, decided)
    assert api.calls == ["approve", "annotate"]
    assert "annotations" not in api.objects[NAME]["metadata"]
    assert "certificate" not in (api.objects[NAME].get("status") or {})


async def test_an_issued_csr_without_a_key_gets_one() -> None:
    api = FakeApiServer(node_csr(key=NODE_KEY))
    await handle(api, node_csr(key=NODE_KEY))
    issued = copy.deepcopy(api.objects[NAME])
    del issued["metadata"]["annotations"]
    api.objects[NAME] = copy.deepcopy(issued)
    assert not has_key(issued)
    annotated = await deliver_key(
        api,
        issued,
        server_key=SERVER_KEY,
        node="node-1",
        not_after=NOW + timedelta(days=1),
        now=NOW,
        retrying=once,
    )
    assert annotated is not None
    assert has_key(annotated)
    delivered = certs.unseal_node_key(
        annotated["metadata"]["annotations"][KEY_ANNOTATION], NODE_KEY, node="node-1", now=NOW
    )
    assert certs.tls_crypt_v2_client_metadata(SERVER_KEY, delivered.client_key)
