"""What a real node imports: the images ``ensure_node_images`` makes (metrics-server's
included, keyed by the binary's content) plus extras, every one in ``NodeImages.all``;
and the aggregation layer's front-proxy certificates."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vpnctl.lab.realnode.node_images import NodeImage, ensure_node_images
from vpnctl.testenv.cluster_pki import write_front_proxy_pki

needs_tools = pytest.mark.skipif(
    shutil.which("gcc") is None or not Path("/bin/busybox").exists(),
    reason="needs gcc and busybox-static (scripts/install-node-tools.sh)",
)


@needs_tools
def test_metrics_server_image_is_keyed_by_content_and_imported_with_the_rest(
    tmp_path: Path,
) -> None:
    binary = tmp_path / "metrics-server"
    binary.write_bytes(b"\x7fELF not really, but bytes to pack")
    cache = tmp_path / "cache"
    images = ensure_node_images(cache, metrics_server=binary)
    assert images.metrics_server is not None
    again = ensure_node_images(cache, metrics_server=binary)
    assert again.metrics_server == images.metrics_server
    binary.write_bytes(b"another build")
    changed = ensure_node_images(cache, metrics_server=binary)
    assert changed.metrics_server is not None
    assert changed.metrics_server.ref != images.metrics_server.ref

    # what build-image.py prunes (vpnctl-<key>.oci.tar in the cache) never holds ours
    assert not list(cache.glob("vpnctl-*.oci.tar"))
    with tarfile.open(images.metrics_server.archive) as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
    (manifest,) = index["manifests"]
    assert manifest["annotations"]["io.containerd.image.name"] == images.metrics_server.ref

    extra = NodeImage(ref="localhost/vpnctl:k", archive=tmp_path / "vpnctl-k.oci.tar")
    assert images.with_extra(extra).all == (
        images.pause,
        images.busybox,
        images.metrics_server,
        extra,
    )
    assert ensure_node_images(cache).all == (images.pause, images.busybox)


def test_front_proxy_client_is_a_client_of_its_own_ca(tmp_path: Path) -> None:
    fp = write_front_proxy_pki(tmp_path, cluster_name="tenant")
    ca = x509.load_pem_x509_certificate(fp.ca.cert.read_bytes())
    client = x509.load_pem_x509_certificate(fp.client.cert.read_bytes())
    client.verify_directly_issued_by(ca)
    cn = client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == fp.client_name == "front-proxy-client"
    usages = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert fp.client.key.stat().st_mode & 0o777 == 0o600
