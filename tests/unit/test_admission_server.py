"""The tenant's admission webhook: its decision, and the program itself served over real
TLS on loopback, run as the ConfigMap ships it (``python3 -I``: the standard library only)."""

from __future__ import annotations

import datetime
import http.client
import json
import re
import ssl
import subprocess
import sys
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from certs import new_ca, new_server_cert
from tests.support.logfmt import parse_record
from vpnctl.lab.realnode.admission_server import DENY_LABEL, admission_response
from vpnctl.lab.realnode.workloads import admission_server_source


def _review(labels: dict[str, str] | None, *, op: str = "CREATE") -> dict[str, Any]:
    obj = {"metadata": {"name": "cm", "labels": labels}} if labels is not None else None
    request: dict[str, Any] = {"uid": "u-1", "operation": op, "object": obj}
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def test_admission_allows_unlabelled_and_echoes_the_uid() -> None:
    answer = admission_response(_review({"app": "x"}))
    assert answer == {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": "u-1", "allowed": True},
    }
    assert admission_response(_review({DENY_LABEL: "false"}))["response"]["allowed"] is True
    assert admission_response(_review(None, op="CONNECT"))["response"]["allowed"] is True


def test_admission_denies_the_deny_label_with_a_message() -> None:
    response = admission_response(_review({DENY_LABEL: "true"}))["response"]
    assert response["allowed"] is False
    assert response["status"]["code"] == 403
    assert "'cm'" in response["status"]["message"]
    assert f"{DENY_LABEL}=true" in response["status"]["message"]


def test_admission_denies_deleting_a_labelled_object_from_old_object() -> None:
    review = _review(None, op="DELETE")
    review["request"]["oldObject"] = {"metadata": {"name": "old", "labels": {DENY_LABEL: "true"}}}
    assert admission_response(review)["response"]["allowed"] is False


@pytest.mark.parametrize(
    "body",
    [[], {"kind": "Pod"}, {"kind": "AdmissionReview"}, {"kind": "AdmissionReview", "request": {}}],
)
def test_malformed_reviews_are_rejected(body: object) -> None:
    with pytest.raises(ValueError, match=r"AdmissionReview|request\.uid"):
        admission_response(body)


NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, ssl.SSLContext]]:
    """The shipped program on 127.0.0.1 with a certificate for it; yields (port, client ctx)."""
    tmp = tmp_path_factory.mktemp("webhook")
    ca = new_ca(common_name="webhook-ca", now=NOW, lifetime=datetime.timedelta(days=3650))
    leaf = new_server_cert(
        ca,
        common_name="webhook-node-1.lab.svc",
        now=NOW,
        lifetime=datetime.timedelta(days=3650),
        ip_addresses=[IPv4Address("127.0.0.1")],
    )
    (tmp / "tls.crt").write_bytes(leaf.cert_pem)
    (tmp / "tls.key").write_bytes(leaf.key_pem)
    script = tmp / "admission_server.py"
    script.write_text(admission_server_source())
    proc = subprocess.Popen(
        [sys.executable, "-I", str(script), "--host=127.0.0.1", "--port=0",
         f"--cert={tmp / 'tls.crt'}", f"--key={tmp / 'tls.key'}"],
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()  # blocks until it listens or fails
        found = re.search(r"event=webhook_listening address=127\.0\.0\.1:(\d+)", first)
        assert found, first
        record = parse_record(first.rstrip("\n"))  # the format of vpnctl's own binaries
        assert (record["level"], record["logger"]) == ("info", "admission_server")
        assert datetime.datetime.fromisoformat(record["ts"]).utcoffset() == datetime.timedelta(0)
        context = ssl.create_default_context(cadata=ca.cert_pem.decode())
        yield int(found.group(1)), context
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert proc.returncode == 0  # SIGTERM is a clean stop


def _post(server: tuple[int, ssl.SSLContext], path: str, body: bytes) -> tuple[int, bytes]:
    port, context = server
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_served_over_tls_admits_and_denies(server: tuple[int, ssl.SSLContext]) -> None:
    status, body = _post(server, "/validate", json.dumps(_review({"app": "x"})).encode())
    assert status == 200
    assert json.loads(body)["response"] == {"uid": "u-1", "allowed": True}
    status, body = _post(server, "/validate", json.dumps(_review({DENY_LABEL: "true"})).encode())
    assert status == 200
    answer: dict[str, Any] = json.loads(body)
    assert answer["kind"] == "AdmissionReview"
    assert answer["response"]["allowed"] is False
    assert answer["response"]["status"]["code"] == 403


def test_served_keeps_the_connection_and_rejects_garbage(
    server: tuple[int, ssl.SSLContext],
) -> None:
    port, context = server
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        conn.request("GET", "/healthz")
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, b"ok\n")
        conn.request("POST", "/validate", body=b"{not json")  # same connection
        resp = conn.getresponse()
        assert resp.status == 400
        assert b"bad AdmissionReview" in resp.read()
        conn.request("POST", "/elsewhere", body=b"{}")
        resp = conn.getresponse()
        assert resp.status == 404
        resp.read()
    finally:
        conn.close()


def test_the_shipped_program_is_this_module() -> None:
    here = Path(__file__).resolve().parents[2] / "vpnctl/lab/realnode/admission_server.py"
    assert admission_server_source() == here.read_text()
