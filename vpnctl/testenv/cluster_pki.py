"""The PKI of one test cluster: just enough for client-certificate authentication.

This is test-environment PKI, not the product's (that lives in ``certs``): one CA that
signs the apiserver's serving certificate, the client certificates of the admin and
of the controller-manager, and that kube-controller-manager also uses to sign
approved CertificateSigningRequests. Keys are ECDSA P-256 because they are generated
in milliseconds; every Kubernetes component accepts them.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs import key_usage

_VALIDITY = datetime.timedelta(days=30)
_SKEW = datetime.timedelta(minutes=5)


@dataclass(frozen=True, kw_only=True)
class CertFiles:
    cert: Path
    key: Path


@dataclass(frozen=True, kw_only=True)
class ClusterPKI:
    """Paths of the PEM files written by ``write_cluster_pki``."""

    dir: Path
    ca: CertFiles
    apiserver: CertFiles
    admin: CertFiles
    controller_manager: CertFiles
    # The apiserver's client certificate towards kubelets (logs, exec, port-forward).
    apiserver_kubelet_client: CertFiles
    scheduler: CertFiles
    sa_key: Path
    sa_pub: Path

    @property
    def ca_pem(self) -> bytes:
        return self.ca.cert.read_bytes()

    @classmethod
    def load(cls, directory: Path) -> ClusterPKI:
        """The PKI ``write_cluster_pki`` wrote into ``directory`` (another process's)."""

        def pair(stem: str) -> CertFiles:
            return CertFiles(cert=directory / f"{stem}.crt", key=directory / f"{stem}.key")

        return cls(
            dir=directory,
            ca=pair("ca"),
            apiserver=pair("apiserver"),
            admin=pair("admin"),
            controller_manager=pair("controller-manager"),
            apiserver_kubelet_client=pair("apiserver-kubelet-client"),
            scheduler=pair("scheduler"),
            sa_key=directory / "sa.key",
            sa_pub=directory / "sa.pub",
        )


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str, organizations: Iterable[str] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    path.write_bytes(data)
    if private:
        path.chmod(0o600)


def _write_pair(
    directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> CertFiles:
    """``<stem>.crt`` and ``<stem>.key`` (mode 0600) in ``directory``."""
    out = CertFiles(cert=directory / f"{stem}.crt", key=directory / f"{stem}.key")
    _write(out.cert, cert.public_bytes(serialization.Encoding.PEM))
    _write(out.key, _key_pem(key), private=True)
    return out


def _issue(
    *,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    usages: Sequence[x509.ObjectIdentifier],
    sans: Sequence[x509.GeneralName] = (),
    now: datetime.datetime,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _SKEW)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _self_signed_ca(
    name: x509.Name, key: ec.EllipticCurvePrivateKey, now: datetime.datetime
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _SKEW)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(key_usage(digital_signature=True, signs_certificates=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )


def write_cluster_pki(
    directory: Path,
    *,
    cluster_name: str,
    apiserver_ips: Sequence[str],
    apiserver_dns: Sequence[str] = (),
    now: datetime.datetime | None = None,
) -> ClusterPKI:
    """Generate the cluster's CA, certificates and service-account key into ``directory``.

    ``apiserver_ips`` are the serving certificate's IP SANs: the listen address, the
    first address of the service CIDR, and any address clients dial.
    """
    now = now or datetime.datetime.now(datetime.UTC)
    directory.mkdir(parents=True, exist_ok=True)

    ca_key = _key()
    ca_cert = _self_signed_ca(_name(f"{cluster_name}-ca"), ca_key, now)

    def client(stem: str, common_name: str, organizations: Sequence[str] = ()) -> CertFiles:
        key = _key()
        cert = _issue(
            ca_cert=ca_cert,
            ca_key=ca_key,
            subject=_name(common_name, organizations),
            key=key,
            usages=[ExtendedKeyUsageOID.CLIENT_AUTH],
            now=now,
        )
        return _write_pair(directory, stem, cert, key)

    dns = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        *apiserver_dns,
    ]
    ips = dict.fromkeys(["127.0.0.1", *apiserver_ips])  # ordered, deduplicated
    serving_key = _key()
    serving = _issue(
        ca_cert=ca_cert,
        ca_key=ca_key,
        subject=_name("kube-apiserver"),
        key=serving_key,
        usages=[ExtendedKeyUsageOID.SERVER_AUTH],
        sans=[
            *(x509.DNSName(d) for d in dict.fromkeys(dns)),
            *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips),
        ],
        now=now,
    )

    sa_key = _key()
    sa_key_path = directory / "sa.key"
    sa_pub_path = directory / "sa.pub"
    _write(sa_key_path, _key_pem(sa_key), private=True)
    _write(
        sa_pub_path,
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )

    return ClusterPKI(
        dir=directory,
        ca=_write_pair(directory, "ca", ca_cert, ca_key),
        apiserver=_write_pair(directory, "apiserver", serving, serving_key),
        admin=client("admin", "vpnctl-testenv-admin", ["system:masters"]),
        controller_manager=client("controller-manager", "system:kube-controller-manager"),
        apiserver_kubelet_client=client(
            "apiserver-kubelet-client", "kube-apiserver-kubelet-client", ["system:masters"]
        ),
        scheduler=client("scheduler", "system:kube-scheduler"),
        sa_key=sa_key_path,
        sa_pub=sa_pub_path,
    )


@dataclass(frozen=True, kw_only=True)
class FrontProxyPKI:
    """The aggregation layer's own trust: a front-proxy CA, separate from the cluster CA
    (as kubeadm keeps it), and the client certificate the apiserver presents to an
    aggregated API server, which trusts its ``X-Remote-*`` headers only from a
    certificate of that CA with an allowed name."""

    ca: CertFiles
    client: CertFiles
    client_name: str


FRONT_PROXY_CLIENT = "front-proxy-client"


def write_front_proxy_pki(
    directory: Path, *, cluster_name: str, now: datetime.datetime | None = None
) -> FrontProxyPKI:
    """``front-proxy-ca.{crt,key}`` and ``front-proxy-client.{crt,key}`` in ``directory``."""
    now = now or datetime.datetime.now(datetime.UTC)
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca_cert = _self_signed_ca(_name(f"{cluster_name}-front-proxy-ca"), ca_key, now)
    key = _key()
    cert = _issue(
        ca_cert=ca_cert,
        ca_key=ca_key,
        subject=_name(FRONT_PROXY_CLIENT),
        key=key,
        usages=[ExtendedKeyUsageOID.CLIENT_AUTH],
        now=now,
    )
    return FrontProxyPKI(
        ca=_write_pair(directory, "front-proxy-ca", ca_cert, ca_key),
        client=_write_pair(directory, "front-proxy-client", cert, key),
        client_name=FRONT_PROXY_CLIENT,
    )


def issue_from_ca(
    pki: ClusterPKI,
    stem: str,
    *,
    common_name: str,
    organizations: Sequence[str] = (),
    server: bool = False,
    ips: Sequence[str] = (),
    dns: Sequence[str] = (),
    directory: Path | None = None,
    now: datetime.datetime | None = None,
) -> CertFiles:
    """One more certificate signed by the cluster's CA, as kubeadm issues a node's:
    a client certificate (``system:node:<name>`` in ``system:nodes``, ``system:kube-proxy``)
    or, with ``server``, a serving certificate for ``ips`` and ``dns`` (a kubelet's :10250).
    Written as ``<stem>.crt``/``<stem>.key`` into ``directory`` (the PKI's by default)."""
    now = now or datetime.datetime.now(datetime.UTC)
    ca_key = serialization.load_pem_private_key(pki.ca.key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca_cert = x509.load_pem_x509_certificate(pki.ca.cert.read_bytes())
    key = _key()
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    cert = _issue(
        ca_cert=ca_cert,
        ca_key=ca_key,
        subject=_name(common_name, organizations),
        key=key,
        usages=[ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH],
        sans=sans,
        now=now,
    )
    folder = directory or pki.dir
    folder.mkdir(parents=True, exist_ok=True)
    return _write_pair(folder, stem, cert, key)


def write_kubeconfig(
    path: Path,
    *,
    server: str,
    ca: Path,
    client: CertFiles,
    cluster_name: str,
    user: str = "admin",
) -> Path:
    """A kubeconfig that references the PEM files (not embedded), with one context."""
    import yaml

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": cluster_name,
                "cluster": {"server": server, "certificate-authority": str(ca)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate": str(client.cert),
                    "client-key": str(client.key),
                },
            }
        ],
        "contexts": [{"name": cluster_name, "context": {"cluster": cluster_name, "user": user}}],
        "current-context": cluster_name,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path
