"""A hostile tenant's tools, against a real tenant apiserver: a mutating admission webhook
(served by aiohttp in the test process, on loopback, with a self-signed certificate) that
rewrites the agent DaemonSet on every write, and node CSRs by the thousand.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import ipaddress
import json
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from vpnctl.kube import CERTIFICATE_SIGNING_REQUEST, Kube, KubeObject
from vpnctl.reconcile.names import MANAGED_BY, MANAGED_BY_LABEL

REWRITTEN_IMAGE = "tenant.example/rewritten"  # :<number of the call>
WEBHOOKS = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"


def self_signed(directory: Path) -> tuple[Path, Path, bytes]:
    """(cert file, key file, cert PEM) for 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hostile-webhook")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_path, key_path = directory / "webhook.crt", directory / "webhook.key"
    cert_path.write_bytes(pem)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path, pem


@dataclass
class Webhook:
    url: str
    ca_pem: bytes
    delay: float
    calls: list[str] = field(default_factory=list)  # operation of each admission review


@contextlib.asynccontextmanager
async def rewriting_webhook(directory: Path, *, delay: float) -> AsyncIterator[Webhook]:
    """Serve a mutating webhook that answers each review after ``delay`` seconds (a slow
    webhook) with a patch setting the first container's image to ``REWRITTEN_IMAGE:<n>``,
    n counting the calls: every write changes the object, even one that would otherwise
    change nothing, so each repair is seen as a new drift."""
    cert_path, key_path, pem = self_signed(directory)
    hook = Webhook(url="", ca_pem=pem, delay=delay)

    async def mutate(request: web.Request) -> web.Response:
        review = await request.json()
        req = review["request"]
        hook.calls.append(str(req.get("operation")))
        await asyncio.sleep(hook.delay)
        patch = [
            {"op": "replace", "path": "/spec/template/spec/containers/0/image",
             "value": f"{REWRITTEN_IMAGE}:{len(hook.calls)}"},
        ]  # fmt: skip
        return web.json_response(
            {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "response": {
                    "uid": req["uid"],
                    "allowed": True,
                    "patchType": "JSONPatch",
                    "patch": base64.b64encode(json.dumps(patch).encode()).decode(),
                },
            }
        )

    app = web.Application()
    app.router.add_post("/mutate", mutate)
    runner = web.AppRunner(app)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    try:
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        hook.url = f"https://127.0.0.1:{port}/mutate"
        yield hook
    finally:
        await runner.cleanup()


async def install_webhook(admin: Kube, hook: Webhook, *, name: str = "rewrite-agent") -> None:
    """Register ``hook`` for CREATE and UPDATE of DaemonSets labelled as ours."""
    await admin.request(
        "POST",
        WEBHOOKS,
        body={
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [
                {
                    "name": "rewrite.tenant.example",
                    "admissionReviewVersions": ["v1"],
                    "sideEffects": "None",
                    "failurePolicy": "Fail",
                    "timeoutSeconds": 10,
                    "clientConfig": {
                        "url": hook.url,
                        "caBundle": base64.b64encode(hook.ca_pem).decode(),
                    },
                    "rules": [
                        {
                            "apiGroups": ["apps"],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE", "UPDATE"],
                            "resources": ["daemonsets"],
                        }
                    ],
                    "objectSelector": {"matchLabels": {MANAGED_BY_LABEL: MANAGED_BY}},
                }
            ],
        },
    )


def csr_pem(*, padding: int = 0) -> bytes:
    """A valid PEM CSR for a node; ``padding`` bytes of an unknown extension make it big."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flood-node")])
    )
    if padding:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(
                x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\0" * padding
            ),
            critical=False,
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def node_csr(
    name: str,
    pem: bytes,
    *,
    signer: str = "vpnctl.io/node",
    usages: Sequence[str] = ("digital signature", "client auth"),
) -> KubeObject:
    """A CertificateSigningRequest NAME asking for PEM, as a node asks ours (or, with
    SIGNER and USAGES, as someone asks another signer)."""
    return {
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": {
            "signerName": signer,
            "request": base64.b64encode(pem).decode(),
            "usages": list(usages),
        },
    }


async def create_csrs(
    admin: Kube, prefix: str, count: int, pem: bytes, *, parallel: int = 16
) -> None:
    """``count`` pending CSRs named ``<prefix>-<i>``, all with the request ``pem``."""
    semaphore = asyncio.Semaphore(parallel)

    async def one(i: int) -> Any:
        async with semaphore:
            return await admin.create(CERTIFICATE_SIGNING_REQUEST, node_csr(f"{prefix}-{i}", pem))

    await asyncio.gather(*(one(i) for i in range(count)))


async def _flood(kubeconfig: str, prefix: str, count: int, padding: int, parallel: int) -> None:
    from vpnctl.kube import connect

    async with await connect(kubeconfig=kubeconfig) as admin:
        await create_csrs(admin, prefix, count, csr_pem(padding=padding), parallel=parallel)


async def flood_in_subprocess(
    kubeconfig: Path, prefix: str, count: int, *, padding: int = 0, parallel: int = 16
) -> None:
    """``create_csrs`` in another process, so that the test process (where the controller
    runs, and whose RSS a test measures) never holds the requests itself."""
    import sys

    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.kube.webhookfix",
        str(kubeconfig),
        prefix,
        str(count),
        str(padding),
        str(parallel),
        cwd=str(Path(__file__).resolve().parents[2]),
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    if process.returncode != 0:
        raise AssertionError(f"creating {count} CSRs failed: {stderr.decode()[-2000:]}")


if __name__ == "__main__":
    import sys

    kubeconfig, prefix, count, padding, parallel = sys.argv[1:6]
    asyncio.run(_flood(kubeconfig, prefix, int(count), int(padding), int(parallel)))
