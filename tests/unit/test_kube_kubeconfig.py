"""Kubeconfigs that can't be used say what is wrong, where, and never quote key data.

The happy path (a real apiserver reached through a kubeconfig from a Secret) is in
tests/kube/test_kube_client.py; these need no server: every one fails before a request.
"""

from __future__ import annotations

import base64
import datetime as dt
import tempfile
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support import kubeconfigs
from tests.support.secrets_scan import scan
from vpnctl.kube import Kube, KubeconfigError, connect, kubeconfig_text_from_secret

SECRET_KEY_DATA = base64.b64encode(b"-----BEGIN EC PRIVATE KEY-----\nsecret\n").decode()
# Shaped like a certificate (so parsing passes), but TLS can't load it.
NOT_A_CERT = base64.b64encode(
    b"-----BEGIN CERTIFICATE-----\nbm90\n-----END CERTIFICATE-----\n"
).decode()


def kubeconfig(
    *,
    server: str = "https://198.18.0.1:6443",
    context: str = "t",
    cluster: str = "c",
    user: str = "u",
    ca: str | None = None,
    key: str | None = SECRET_KEY_DATA,
) -> str:
    cluster_lines = f"    server: {server}\n"
    if ca is not None:
        cluster_lines += f"    certificate-authority-data: {ca}\n"
    user_lines = f"    client-certificate-data: {NOT_A_CERT}\n"
    if key is not None:
        user_lines += f"    client-key-data: {key}\n"
    return (
        "apiVersion: v1\nkind: Config\n"
        f"current-context: {context}\n"
        f"clusters:\n- name: c\n  cluster:\n{cluster_lines}"
        f"users:\n- name: u\n  user:\n{user_lines}"
        f"contexts:\n- name: t\n  context: {{cluster: {cluster}, user: {user}}}\n"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("clusters: [unclosed", r"secret t/k-kubeconfig: document is not valid YAML"),
        ("just a string", r"document is not a kubeconfig \(expected a mapping .* got str\)"),
        ("", r"not a kubeconfig .* got nothing"),
        (
            kubeconfig(context="missing"),
            r"current-context names context 'missing', which is not in contexts \(have: 't'\)",
        ),
        (
            kubeconfig(cluster="elsewhere"),
            r"contexts\[0\]\.context\.cluster names cluster 'elsewhere', which is not in",
        ),
        (
            kubeconfig(user="nobody"),
            r"contexts\[0\]\.context\.user names user 'nobody', which is not in users",
        ),
        (
            kubeconfig(server="198.18.0.1:6443"),
            r"clusters\[0\]\.cluster\.server must be an https:// URL",
        ),
        (
            kubeconfig(ca='"%%%not base64%%%"'),
            r"clusters\[0\]\.cluster\.certificate-authority-data is not valid base64",
        ),
        (
            kubeconfig(key=f'"#{SECRET_KEY_DATA}"'),
            r"users\[0\]\.user\.client-key-data is not valid base64",
        ),
        # PyYAML would quote the bad scalar (the key) in its message; we say where only.
        (kubeconfig(key="!!" + SECRET_KEY_DATA), r"not valid YAML \(line 12, column 22\)"),
        (
            "apiVersion: v1\nclusters: {c: 1}\ncontexts: []\nusers: []\n",
            r"clusters must be a list",
        ),
        (
            "apiVersion: v1\nclusters: []\ncontexts: []\nusers: []\n",
            r"current-context is missing and the file has 0 contexts",
        ),
    ],
)
async def test_malformed_kubeconfig_text_is_explained(text: str, message: str) -> None:
    with pytest.raises(KubeconfigError, match=message) as err:
        await Kube.from_kubeconfig_text(text, name="secret t/k-kubeconfig")
    assert str(err.value).startswith("secret t/k-kubeconfig: ")
    assert SECRET_KEY_DATA not in str(err.value)
    assert "secret\n" not in str(err.value)


async def test_certificates_that_do_not_load_are_a_kubeconfig_error() -> None:
    text = kubeconfig(ca=NOT_A_CERT)
    with pytest.raises(KubeconfigError, match="CA certificate or the client certificate/key"):
        await Kube.from_kubeconfig_text(text, name="tenant")


async def test_missing_kubeconfig_file(tmp_path: Path) -> None:
    with pytest.raises(KubeconfigError, match=r"kubeconfig .*/nope: can't read it"):
        await connect(kubeconfig=str(tmp_path / "nope"))


async def test_kubeconfig_file_with_a_bad_context(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text(kubeconfig())
    with pytest.raises(KubeconfigError, match=rf"kubeconfig {path}: context 'other' not found"):
        await connect(kubeconfig=str(path), context="other")


async def test_in_cluster_outside_a_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    with pytest.raises(KubeconfigError, match=r"in-cluster service account: .*run inside a pod"):
        await connect(in_cluster=True)


def test_kubeconfig_from_secret() -> None:
    text = kubeconfig()
    secret = {
        "metadata": {"name": "t1-kubeconfig", "namespace": "tenant-1"},
        "data": {"value": base64.b64encode(text.encode()).decode()},
    }
    assert kubeconfig_text_from_secret(secret) == text
    with pytest.raises(KubeconfigError, match=r"Secret tenant-1/t1-kubeconfig has no key 'value'"):
        kubeconfig_text_from_secret({**secret, "data": {}})
    with pytest.raises(KubeconfigError, match="key 'value' is not base64-encoded UTF-8 text"):
        kubeconfig_text_from_secret({**secret, "data": {"value": "//79"}})


def _pki() -> tuple[bytes, bytes, bytes]:
    """A self-signed CA, and a client certificate and key signed by it (PEM)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    client_key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)

    def cert(subject: str, key: ec.EllipticCurvePrivateKey, ca: bool) -> bytes:
        built = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ca")]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        return built.public_bytes(serialization.Encoding.PEM)

    key_pem = client_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert("ca", ca_key, True), cert("admin", client_key, False), key_pem


async def test_inline_key_data_leaves_no_file_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca, cert, key = _pki()
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    text = (
        "apiVersion: v1\nkind: Config\ncurrent-context: t\n"
        "clusters:\n- name: c\n  cluster:\n    server: https://198.18.0.1:6443\n"
        f"    certificate-authority-data: {b64(ca)}\n"
        f"users:\n- name: u\n  user:\n    client-certificate-data: {b64(cert)}\n"
        f"    client-key-data: {b64(key)}\n"
        "contexts:\n- name: t\n  context: {cluster: c, user: u}\n"
    )
    async with await Kube.from_kubeconfig_text(text, name="tenant") as kube:
        assert kube.server == "https://198.18.0.1:6443"
        assert list(scratch.iterdir()) == []  # the key was on disk only while TLS loaded it


async def test_relative_paths_in_a_kubeconfig_file_start_at_its_folder(tmp_path: Path) -> None:
    ca, cert, key = _pki()
    folder = tmp_path / "kube"
    (folder / "pki").mkdir(parents=True)
    (folder / "pki" / "ca.crt").write_bytes(ca)
    (folder / "pki" / "admin.crt").write_bytes(cert)
    (folder / "pki" / "admin.key").write_bytes(key)
    (folder / "config").write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: t\n"
        "clusters:\n- name: c\n  cluster:\n    server: https://198.18.0.1:6443\n"
        "    certificate-authority: pki/ca.crt\n"
        "users:\n- name: u\n  user:\n    client-certificate: pki/admin.crt\n"
        "    client-key: pki/admin.key\n"
        "contexts:\n- name: t\n  context: {cluster: c, user: u}\n"
    )
    async with await connect(kubeconfig=str(folder / "config")) as kube:
        assert kube.server == "https://198.18.0.1:6443"
    (folder / "pki" / "admin.key").unlink()
    with pytest.raises(KubeconfigError, match=r"kubeconfig .*/config: can't be used"):
        await connect(kubeconfig=str(folder / "config"))


# --- a tenant's kubeconfig is data, never instructions --------------------------------------


@pytest.fixture(scope="module")
def material() -> kubeconfigs.Material:
    return kubeconfigs.material()


@pytest.mark.parametrize(
    ("edit", "field"),
    [(e, f) for _, e, f in kubeconfigs.REFUSED],
    ids=[i for i, _, _ in kubeconfigs.REFUSED],
)
async def test_refused_forms_never_make_a_client(
    material: kubeconfigs.Material, edit: kubeconfigs.Edit, field: str
) -> None:
    text = kubeconfigs.dump(kubeconfigs.refused(material, edit))
    with pytest.raises(KubeconfigError) as err:
        await Kube.from_kubeconfig_text(text, name="Secret t/k-kubeconfig")
    assert str(err.value).startswith(f"Secret t/k-kubeconfig: {field} ")
    secrets: dict[str, str | bytes] = {"key": material.client.key_pem, "token": kubeconfigs.TOKEN}
    assert scan({"message": str(err.value)}, secrets) == []


async def test_exec_command_never_runs(material: kubeconfigs.Material, tmp_path: Path) -> None:
    marker = tmp_path / "exec-ran"
    doc = kubeconfigs.valid(material)
    doc["users"][0]["user"]["exec"] = kubeconfigs.exec_user(str(marker))
    with pytest.raises(KubeconfigError, match=r"users\[0\]\.user\.exec runs a command"):
        await Kube.from_kubeconfig_text(kubeconfigs.dump(doc), name="tenant")
    assert not marker.exists(), "the kubeconfig's exec command ran"


async def test_token_file_is_never_read(material: kubeconfigs.Material, tmp_path: Path) -> None:
    """A loader would read the file (say, the controller's own service account token)
    and send it to the server the tenant chose."""
    token_file = tmp_path / "token"
    token_file.write_text("the-controllers-own-token")
    doc = kubeconfigs.valid(material)
    doc["users"][0]["user"] = {"tokenFile": str(token_file)}
    with pytest.raises(KubeconfigError, match=r"users\[0\]\.user\.tokenFile reads a file"):
        await Kube.from_kubeconfig_text(kubeconfigs.dump(doc), name="tenant")


async def test_token_and_inline_certificates_make_a_client(
    material: kubeconfigs.Material, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    doc = kubeconfigs.valid(material)
    doc["users"][0]["user"]["token"] = kubeconfigs.TOKEN
    async with await Kube.from_kubeconfig_text(kubeconfigs.dump(doc), name="tenant") as kube:
        assert kube.server == "https://198.18.0.2:6443"
    assert list(scratch.iterdir()) == []  # CA, certificate and key were on disk only briefly
