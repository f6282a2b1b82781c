"""Reading back Secrets: CAPI's kubeconfig and our PKI (vpnctl.reconcile.secrets).

Uses the real `certs` library: issuing an ECDSA certificate takes milliseconds.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

import certs
from tests.support import capi, kubeconfigs
from tests.support.secrets_scan import scan
from vpnctl.reconcile.errors import PermanentError, TemporaryError
from vpnctl.reconcile.secrets import (
    check_leaf_secret,
    kubeconfig_secret_name,
    parse_kubeconfig_secret,
    read_ca_secret,
    read_tls_crypt_server_key,
)
from vpnctl.reconcile.service_objects import (
    apiserver_client_secret,
    ca_secret,
    server_secret,
    tls_crypt_secret,
)
from vpnctl.reconcile.tenant_spec import TenantSpec, parse_tenant

NOW = datetime(2024, 5, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def tenant() -> TenantSpec:
    t = capi.lab_tenant()
    return parse_tenant(tunnel=t.tunnel, cluster=t.cluster, machines=t.machines)


@pytest.fixture(scope="module")
def ca() -> certs.Issued:
    return certs.new_ca(common_name="tenant-a-ca", now=NOW, lifetime=timedelta(days=3650))


@pytest.fixture(scope="module")
def material() -> kubeconfigs.Material:
    return kubeconfigs.material()


def kubeconfig(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://198.18.0.2:6443"}}],
        "users": [{"name": "u", "user": {"token": kubeconfigs.TOKEN}}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "ctx",
    }
    doc.update(changes)
    return doc


def kubeconfig_secret(value: bytes | None) -> dict[str, Any]:
    data = {} if value is None else {"value": base64.b64encode(value).decode()}
    return {
        "metadata": {"name": "tenant-a-kubeconfig", "namespace": "tenant-a"},
        "data": data,
    }


def parse(secret: dict[str, Any] | None) -> Any:
    return parse_kubeconfig_secret(secret, namespace="tenant-a", cluster_name="tenant-a")


# --- kubeconfig ---------------------------------------------------------------------------------


def test_good_kubeconfig(material: kubeconfigs.Material) -> None:
    got = parse(kubeconfig_secret(kubeconfigs.dump(kubeconfigs.valid(material)).encode()))
    assert got.server == "https://198.18.0.2:6443"
    assert got.context == "admin@c"
    assert got.credentials.client_key_pem == material.client.key_pem
    assert "client-key-data" in got.text
    assert "client-key-data" not in repr(got)
    assert scan({"repr": repr(got)}, {"key": material.client.key_pem}) == []
    assert kubeconfig_secret_name("tenant-a") == "tenant-a-kubeconfig"


@pytest.mark.parametrize(
    ("edit", "field"),
    [(e, f) for _, e, f in kubeconfigs.REFUSED],
    ids=[i for i, _, _ in kubeconfigs.REFUSED],
)
def test_refused_kubeconfig_forms_are_permanent_and_name_the_field(
    material: kubeconfigs.Material, edit: kubeconfigs.Edit, field: str
) -> None:
    """Each form a kubeconfig loader would act on (run a command, read a file of the
    controller's, skip TLS checks, use a proxy), added to valid credentials."""
    text = kubeconfigs.dump(kubeconfigs.refused(material, edit))
    with pytest.raises(PermanentError) as info:
        parse(kubeconfig_secret(text.encode()))
    assert info.value.reason == "InvalidKubeconfig"
    where = "Secret tenant-a/tenant-a-kubeconfig"
    assert info.value.message.startswith(f"{where} is refused: {field} ")
    secrets: dict[str, str | bytes] = {"key": material.client.key_pem, "token": kubeconfigs.TOKEN}
    assert scan({"message": info.value.message, "repr": repr(info.value)}, secrets) == []


def test_missing_kubeconfig_secret_is_temporary() -> None:
    with pytest.raises(TemporaryError) as info:
        parse(None)
    assert info.value.reason == "WaitingForKubeconfig"
    assert "Secret tenant-a/tenant-a-kubeconfig does not exist yet" in info.value.message


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        (None, "has no key 'value'"),
        (b"\xff\xfe", "document is not UTF-8 text"),
        (b"{unclosed", "document is not valid YAML"),
        (b"- a list", "document is not a kubeconfig"),
        (
            yaml.safe_dump(kubeconfig(contexts=[])).encode(),
            "current-context names context 'ctx', which is not in contexts",
        ),
        (
            yaml.safe_dump(kubeconfig(clusters=[])).encode(),
            "contexts[0].context.cluster names cluster 'c', which is not in clusters",
        ),
        (
            yaml.safe_dump(
                kubeconfig(clusters=[{"name": "c", "cluster": {"server": "http://x"}}])
            ).encode(),
            "clusters[0].cluster.server must be an https:// URL",
        ),
        (
            yaml.safe_dump(kubeconfig(users=[{"name": "u", "user": {}}])).encode(),
            "users[0].user has no credentials",
        ),
    ],
)
def test_malformed_kubeconfig_is_permanent(value: bytes | None, needle: str) -> None:
    with pytest.raises(PermanentError) as info:
        parse(kubeconfig_secret(value))
    assert info.value.reason == "InvalidKubeconfig"
    assert needle in info.value.message
    assert info.value.message.startswith("Secret tenant-a/tenant-a-kubeconfig ")


def test_kubeconfig_with_bad_base64_is_permanent() -> None:
    secret = kubeconfig_secret(None)
    secret["data"]["value"] = "!!!not base64"
    with pytest.raises(PermanentError, match="not valid base64"):
        parse(secret)


def test_single_context_is_used_without_current_context() -> None:
    doc = kubeconfig()
    del doc["current-context"]
    assert parse(kubeconfig_secret(yaml.safe_dump(doc).encode())).context == "ctx"


# --- CA -----------------------------------------------------------------------------------------


def test_ca_round_trips_through_its_secret(tenant: TenantSpec, ca: certs.Issued) -> None:
    secret = ca_secret(tenant=tenant, cert_pem=ca.cert_pem, key_pem=ca.key_pem)
    assert read_ca_secret(secret, now=NOW) == ca
    assert read_ca_secret(None, now=NOW) is None


def test_corrupt_ca_secret_is_reported_never_replaced(tenant: TenantSpec, ca: certs.Issued) -> None:
    other = certs.new_ca(common_name="other", now=NOW, lifetime=timedelta(days=10))
    cases = {
        "missing key": {"tls.crt": ca.cert_pem},
        "key of another CA": {"tls.crt": ca.cert_pem, "tls.key": other.key_pem},
        "garbage cert": {"tls.crt": b"garbage", "tls.key": ca.key_pem},
    }
    for label, data in cases.items():
        secret = ca_secret(tenant=tenant, cert_pem=b"", key_pem=b"")
        secret["data"] = {k: base64.b64encode(v).decode() for k, v in data.items()}
        with pytest.raises(PermanentError) as info:
            read_ca_secret(secret, now=NOW)
        assert info.value.reason == "CorruptPKISecret", label
        message = info.value.message
        assert message.startswith("Secret tenant-a/tenant-a-vpn-ca "), label
        assert "never re-issued" in message
        assert "restore the Secret from a backup, or delete it" in message
        assert "PRIVATE KEY" not in message


def test_expired_ca_is_its_own_reason(tenant: TenantSpec) -> None:
    old = certs.new_ca(common_name="old", now=NOW - timedelta(days=30), lifetime=timedelta(days=1))
    secret = ca_secret(tenant=tenant, cert_pem=old.cert_pem, key_pem=old.key_pem)
    with pytest.raises(PermanentError) as info:
        read_ca_secret(secret, now=NOW)
    assert info.value.reason == "CAExpired"


def test_a_leaf_is_not_a_ca(tenant: TenantSpec, ca: certs.Issued) -> None:
    leaf = certs.new_client_cert(ca, common_name="x", now=NOW, lifetime=timedelta(days=1))
    secret = ca_secret(tenant=tenant, cert_pem=leaf.cert_pem, key_pem=leaf.key_pem)
    with pytest.raises(PermanentError, match="is not a usable CA"):
        read_ca_secret(secret, now=NOW)


# --- tls-crypt-v2 server key ------------------------------------------------------------


def test_tls_crypt_server_key(tenant: TenantSpec) -> None:
    key = certs.new_tls_crypt_v2_server_key()
    assert (
        read_tls_crypt_server_key(tls_crypt_secret(tenant=tenant, server_key=key), now=NOW) == key
    )
    assert read_tls_crypt_server_key(None, now=NOW) is None
    truncated = tls_crypt_secret(tenant=tenant, server_key=key[:60] + key[-40:])
    with pytest.raises(PermanentError) as info:
        read_tls_crypt_server_key(truncated, now=NOW)
    assert info.value.reason == "CorruptPKISecret"
    assert "tls-crypt-v2 server key is never re-issued" in info.value.message


# --- leaves ---------------------------------------------------------------------------------------


def test_leaf_states(tenant: TenantSpec, ca: certs.Issued) -> None:
    tc = certs.new_tls_crypt_v2_server_key()
    server = certs.new_server_cert(
        ca, common_name="vpnctl-server", now=NOW, lifetime=timedelta(days=30)
    )

    def check(secret: dict[str, Any] | None, when: datetime = NOW) -> str:
        return check_leaf_secret(
            secret, ca_pem=ca.cert_pem, now=when, usage="server", renew_fraction=0.66
        ).state

    good = server_secret(
        tenant=tenant,
        cert_pem=server.cert_pem,
        key_pem=server.key_pem,
        ca_pem=ca.cert_pem,
        tls_crypt_v2_key=tc,
    )
    result = check_leaf_secret(
        good, ca_pem=ca.cert_pem, now=NOW, usage="server", renew_fraction=0.66
    )
    assert (result.state, result.issued, result.needs_issue) == ("Valid", server, False)
    assert check(None) == "Missing"
    assert check(good, NOW + timedelta(days=25)) == "RenewalDue"
    assert check(good, NOW + timedelta(days=31)) == "Invalid"  # expired
    other_ca = certs.new_ca(common_name="other", now=NOW, lifetime=timedelta(days=10))
    assert (
        check_leaf_secret(
            good, ca_pem=other_ca.cert_pem, now=NOW, usage="server", renew_fraction=0.66
        ).state
        == "Invalid"
    )
    client = certs.new_client_cert(
        ca, common_name="vpnctl-apiserver", now=NOW, lifetime=timedelta(days=30)
    )
    wrong_usage = apiserver_client_secret(
        tenant=tenant,
        cert_pem=client.cert_pem,
        key_pem=client.key_pem,
        ca_pem=ca.cert_pem,
        tls_crypt_v2_client_key=b"x",
    )
    assert check(wrong_usage) == "Invalid"
    broken = dict(good, data={"tls.crt": "!!"})
    invalid = check_leaf_secret(
        broken, ca_pem=ca.cert_pem, now=NOW, usage="server", renew_fraction=0.66
    )
    assert invalid.state == "Invalid"
    assert "not valid base64" in invalid.message
