"""The scanner finds a key however it leaks, and stays quiet on text without one."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import certs
from tests.support.secrets_scan import scan

KEY = certs.new_private_key()
TC = certs.new_tls_crypt_v2_server_key()


def forms(text: str) -> set[tuple[str, str]]:
    return {(f.secret, f.form) for f in scan({"log": text}, {"key": KEY, "token": "tok-123"})}


def test_each_form_of_a_leak_is_found() -> None:
    assert ("key", "value") in forms(f"event=x key={KEY.decode()}")
    assert ("key", "base64") in forms(f"data: {base64.b64encode(KEY).decode()}")
    body_line = KEY.decode().splitlines()[1]
    assert forms(f"error='... {body_line} ...'") == {("key", "pem line")}
    assert forms("Authorization: Bearer tok-123") == {("token", "value")}
    # Markers catch key material nobody listed.
    other = certs.new_private_key().decode()
    assert ("marker", "PRIVATE KEY-----") in forms(other)
    assert ("marker", "-----BEGIN OpenVPN tls-crypt-v2") in forms(TC.decode())


def test_clean_text_has_no_findings() -> None:
    clean = (
        "event=tenant_kubeconfig_invalid tenant=t/a error='users[0].user.exec runs a command; "
        "put the credentials in client-certificate-data and client-key-data, or token' "
        f"at={datetime.now(UTC).isoformat()}"
    )
    assert forms(clean) == set()


def test_findings_say_where() -> None:
    [finding] = scan({"events[3]": "xx tok-123"}, {"token": "tok-123"})
    assert str(finding) == "token (value) in events[3] at offset 3"


def test_a_line_of_a_tls_crypt_v2_key_is_found() -> None:
    line = TC.decode().splitlines()[2]
    assert {(f.secret, f.form) for f in scan({"log": f"x {line} y"}, {"tc": TC})} == {
        ("tc", "pem line")
    }


def test_a_certificate_is_public_even_when_its_key_is_secret() -> None:
    ca = certs.new_ca(common_name="ca", now=datetime.now(UTC), lifetime=timedelta(days=1))
    assert scan({"log": ca.cert_pem.decode()}, {"CA key": ca.key_pem}) == []
    assert scan({"log": ca.key_pem.decode()}, {"CA key": ca.key_pem}) != []
