"""No repr or str of an object that holds key material shows it (issue 9, item 9).

Each object is built with real key material (ECDSA keys, a tls-crypt-v2 server and
client key, a kubeconfig with an inline key and a token), and its repr and str are
scanned for the keys, their base64, every line of their PEM body and the markers of key
material (tests/support/secrets_scan.py). A log line or an exception message that
formats such an object shows what these show.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio

import certs
from tests.support import kubeconfigs
from tests.support.secrets_scan import scan
from vpnctl.controller.interfaces import TenantRef
from vpnctl.controller.tenant_pki import TenantPKI
from vpnctl.controller.tenant_state import TenantState
from vpnctl.kube import Kube
from vpnctl.reconcile.kubeconfig import parse_kubeconfig
from vpnctl.reconcile.secrets import (
    check_leaf_secret,
    parse_kubeconfig_secret,
    read_ca_secret,
    read_tls_crypt_server_key,
)

NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def material() -> dict[str, Any]:
    ca = certs.new_ca(common_name="t-vpn-ca", now=NOW, lifetime=timedelta(days=30))
    server = certs.new_server_cert(ca, common_name="t-vpn-server", now=NOW,
                                   lifetime=timedelta(days=30))  # fmt: skip
    client = certs.new_client_cert(ca, common_name="vpnctl-apiserver", now=NOW,
                                   lifetime=timedelta(days=30))  # fmt: skip
    tc_server = certs.new_tls_crypt_v2_server_key()
    tc_client = certs.new_tls_crypt_v2_client_key(tc_server, now=NOW)
    admin = kubeconfigs.material(NOW)
    doc = kubeconfigs.valid(admin)
    doc["users"][0]["user"]["token"] = kubeconfigs.TOKEN
    return {
        "ca": ca,
        "server": server,
        "client": client,
        "tc_server": tc_server,
        "tc_client": tc_client,
        "admin": admin,
        "kubeconfig": kubeconfigs.dump(doc),
    }


def secrets_of(m: dict[str, Any]) -> dict[str, str | bytes]:
    return {
        "CA key": m["ca"].key_pem,
        "server key": m["server"].key_pem,
        "apiserver client key": m["client"].key_pem,
        "tls-crypt-v2 server key": m["tc_server"],
        "tls-crypt-v2 client key": m["tc_client"],
        "tenant admin key": m["admin"].client.key_pem,
        "tenant token": kubeconfigs.TOKEN,
        "kubeconfig": m["kubeconfig"],
    }


def assert_clean(obj: object, m: dict[str, Any]) -> None:
    findings = scan({"repr": repr(obj), "str": str(obj)}, secrets_of(m))
    assert findings == [], "\n".join(map(str, findings))


def secret(**data: bytes) -> dict[str, Any]:
    return {
        "metadata": {"name": "t-kubeconfig", "namespace": "t"},
        "data": {k.replace("_", "."): base64.b64encode(v).decode() for k, v in data.items()},
    }


def test_issued_certificates(material: dict[str, Any]) -> None:
    for issued in (material["ca"], material["server"], material["client"]):
        assert_clean(issued, material)
        assert_clean([issued], material)  # inside a container, as a log line would show it


def test_tenant_pki(material: dict[str, Any]) -> None:
    keys = TenantPKI(
        ca=material["ca"],
        tls_crypt_server_key=material["tc_server"],
        apiserver_serial="1a",
        not_after={"ca": NOW},
        renew_at=NOW,
    )
    assert_clean(keys, material)


def test_pki_secrets_read_back(material: dict[str, Any]) -> None:
    ca = read_ca_secret(secret(tls_crt=material["ca"].cert_pem, tls_key=material["ca"].key_pem),
                        now=NOW)  # fmt: skip
    assert ca is not None
    assert_clean(ca, material)
    leaf = check_leaf_secret(
        secret(tls_crt=material["server"].cert_pem, tls_key=material["server"].key_pem),
        ca_pem=material["ca"].cert_pem,
        now=NOW,
        usage="server",
        renew_fraction=2 / 3,
    )
    assert leaf.issued is not None
    assert_clean(leaf, material)
    corrupt = material["tc_server"].replace(b"-----END", b"garbage\n-----END")
    with pytest.raises(Exception) as err:  # noqa: PT011 - what matters is the message
        read_tls_crypt_server_key(
            {"metadata": {"name": "t-tc", "namespace": "t"},
             "data": {"tls-crypt-v2-server.key": base64.b64encode(corrupt).decode()}},
            now=NOW,
        )  # fmt: skip
    assert_clean(err.value, material)


def test_tenant_kubeconfig(material: dict[str, Any]) -> None:
    parsed = parse_kubeconfig(material["kubeconfig"])
    assert parsed.client_key_pem == material["admin"].client.key_pem  # it does hold them
    assert parsed.token == kubeconfigs.TOKEN
    assert_clean(parsed, material)
    from_secret = parse_kubeconfig_secret(
        {"metadata": {"name": "t-kubeconfig", "namespace": "t"},
         "data": {"value": base64.b64encode(material["kubeconfig"].encode()).decode()}},
        namespace="t", cluster_name="t",
    )  # fmt: skip
    assert_clean(from_secret, material)


@pytest_asyncio.fixture
async def tenant_kube(material: dict[str, Any]) -> AsyncIterator[Kube]:
    async with await Kube.from_kubeconfig_text(material["kubeconfig"], name="t") as kube:
        yield kube


async def test_tenant_side_state(material: dict[str, Any], tenant_kube: Kube) -> None:
    """The tenant side keeps the kubeconfig text to notice when the Secret changes."""
    state = TenantState(
        ref=TenantRef(namespace="t", cluster="t"),
        kubeconfig_text=material["kubeconfig"],
        kube=tenant_kube,
        ca=material["ca"],
    )
    assert_clean(state, material)
    assert_clean(tenant_kube, material)
