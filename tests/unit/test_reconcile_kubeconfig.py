"""The tenant kubeconfig parser (vpnctl.reconcile.kubeconfig): what is accepted, and that
every refusal names its field and never quotes a value.

The same refused forms go through the Secret reader (test_reconcile_secrets.py) and the
client (test_kube_kubeconfig.py); here are the parser's own details.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.support import kubeconfigs
from tests.support.kubeconfigs import REFUSED, TOKEN, Edit, Material
from tests.support.secrets_scan import scan
from vpnctl.reconcile.kubeconfig import (
    MAX_KUBECONFIG_BYTES,
    KubeconfigRejected,
    parse_kubeconfig,
)


@pytest.fixture(scope="module")
def m() -> Material:
    return kubeconfigs.material()


def secrets_of(m: Material) -> dict[str, str | bytes]:
    return {"client key": m.client.key_pem, "token": TOKEN}


def test_capi_kubeconfig_is_parsed(m: Material) -> None:
    got = parse_kubeconfig(kubeconfigs.dump(kubeconfigs.valid(m)))
    assert got.context == "admin@c"
    assert got.server == "https://198.18.0.2:6443"
    assert got.ca_pem == m.ca.cert_pem
    assert got.client_cert_pem == m.client.cert_pem
    assert got.client_key_pem == m.client.key_pem
    assert got.token is None


def test_token_only_without_ca_and_inert_keys_are_accepted(m: Material) -> None:
    doc = kubeconfigs.valid(m)
    doc["users"][0]["user"] = {"token": TOKEN, "extensions": []}
    del doc["clusters"][0]["cluster"]["certificate-authority-data"]
    doc["clusters"][0]["cluster"]["insecure-skip-tls-verify"] = False
    doc["clusters"][0]["cluster"]["server"] = "https://api.tenant.example:6443/prefix/"
    doc["contexts"][0]["context"]["namespace"] = "default"
    doc["preferences"] = {}
    got = parse_kubeconfig(kubeconfigs.dump(doc))
    assert got.token == TOKEN
    assert got.ca_pem is None
    assert got.client_key_pem is None
    assert got.server == "https://api.tenant.example:6443/prefix"


def test_the_only_context_is_used_without_current_context(m: Material) -> None:
    doc = kubeconfigs.valid(m)
    del doc["current-context"]
    assert parse_kubeconfig(kubeconfigs.dump(doc)).context == "admin@c"


@pytest.mark.parametrize(
    ("edit", "field"), [(e, f) for _, e, f in REFUSED], ids=[i for i, _, _ in REFUSED]
)
def test_refused_forms_name_the_field(m: Material, edit: Edit, field: str) -> None:
    with pytest.raises(KubeconfigRejected) as err:
        parse_kubeconfig(kubeconfigs.dump(kubeconfigs.refused(m, edit)))
    assert err.value.field == field
    assert str(err.value).startswith(field + " ")
    assert scan({"message": str(err.value)}, secrets_of(m)) == []


@pytest.mark.parametrize(
    ("text", "field", "needle"),
    [
        ("- a list", "document", "not a kubeconfig"),
        ("", "document", "got nothing"),
        ("clusters: [unclosed", "document", "not valid YAML"),
        ("a: 2024-02-30", "document", "not a YAML kubeconfig (ValueError)"),
        ("[" * 100_000, "document", "RecursionError"),
        ("x" * (MAX_KUBECONFIG_BYTES + 1), "document", "too large"),
        ("apiVersion: v2\n", "apiVersion", "must be 'v1'"),
        ("clusters: {c: 1}\n", "clusters", "must be a list"),
        (
            "users: [{name: u, user: {token: t}}, {name: u, user: {token: t}}]",
            "users[1].name",
            "repeats the name 'u'",
        ),
        ("contexts: [{name: a, context: {}}]", "contexts[0].context.cluster", "is missing"),
        ("{1: 2}", "<int key>", "not a key vpnctl knows"),
    ],
)
def test_malformed_documents(text: str, field: str, needle: str) -> None:
    with pytest.raises(KubeconfigRejected) as err:
        parse_kubeconfig(text)
    assert err.value.field == field
    assert needle in str(err.value)


def test_several_contexts_need_a_current_context(m: Material) -> None:
    doc = kubeconfigs.valid(m)
    doc["contexts"].append({"name": "two", "context": {"cluster": "c", "user": "admin"}})
    del doc["current-context"]
    with pytest.raises(KubeconfigRejected, match="has 2 contexts; set it") as err:
        parse_kubeconfig(kubeconfigs.dump(doc))
    assert err.value.field == "current-context"
    assert parse_kubeconfig(kubeconfigs.dump(doc), context="two").context == "two"


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("client-key-data", "%%% not base64", "is not valid base64"),
        ("client-key-data", kubeconfigs.b64(b"just bytes"), "does not hold a PEM PRIVATE KEY"),
        ("client-certificate-data", 7, "must be base64 text"),
    ],
)
def test_bad_inline_data_is_named_not_quoted(
    m: Material, field: str, value: Any, needle: str
) -> None:
    doc = copy.deepcopy(kubeconfigs.valid(m))
    doc["users"][0]["user"][field] = value
    with pytest.raises(KubeconfigRejected, match=needle) as err:
        parse_kubeconfig(kubeconfigs.dump(doc))
    assert err.value.field == f"users[0].user.{field}"
    assert str(value) not in str(err.value)


def test_yaml_errors_do_not_quote_the_document(m: Material) -> None:
    text = kubeconfigs.dump(kubeconfigs.valid(m)) + f"  broken: !!binary {TOKEN}@@\n: ["
    with pytest.raises(KubeconfigRejected) as err:
        parse_kubeconfig(text)
    assert TOKEN not in str(err.value)


def test_repr_and_str_hold_no_credentials(m: Material) -> None:
    doc = kubeconfigs.valid(m)
    doc["users"][0]["user"]["token"] = TOKEN
    got = parse_kubeconfig(kubeconfigs.dump(doc))
    for text in (repr(got), str(got)):
        assert scan({"repr": text}, secrets_of(m)) == []
        assert "client certificate and token" in text
