import argparse
from typing import Any

import pytest

from vpnctl.lab.probe import ProbeResult, check_lines
from vpnctl.lab.standins import DENY_LABEL, admission_response, log_line, parse_listen


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


def test_log_lines_are_deterministic_and_checkable() -> None:
    assert log_line("node-1", "web-0", 42) == "node-1 web-0 line 00000042"
    body = "".join(log_line("n", "p", k) + "\n" for k in range(5, 9)).encode()
    assert check_lines(body, 4) is None
    assert check_lines(body, 5) == "lines: got 4 want 5"
    gap = b"n p line 00000001\nn p line 00000003\n"
    assert check_lines(gap, 2) == "lines: line 1 is number 3 after 1"
    assert check_lines(b"garbage\n", 1) == "lines: line 0 has no number"


def test_listen_address_parsing() -> None:
    assert parse_listen("198.19.0.11:10250") == ("198.19.0.11", 10250)
    for bad in ("198.19.0.11", ":80", "h:0", "h:99999", "h:x"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_listen(bad)


def test_probe_result_round_trips_the_probe_json() -> None:
    text = '{"ok": false, "latency_ms": null, "error": "timeout", "bytes": 0}'
    assert ProbeResult.from_json(text) == ProbeResult(ok=False, error="timeout")
    ok = ProbeResult.from_json('{"ok": true, "latency_ms": 1.5, "error": null, "bytes": 2}')
    assert ok == ProbeResult(ok=True, latency_ms=1.5, bytes=2)
