"""What the roles share: material checks, readiness conditions, files, the task group, the CLI."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import certs
from agent.event_log import EventLog, kv
from agent.files import ContentWatch, FileWatch, atomic_write
from agent.roles.material import MaterialError, MaterialPaths, check_material
from agent.roles.readiness import Conditions
from agent.roles.task_frame import run_group

NOW = datetime(2026, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def _material(tmp_path: Path, *, usage: str = "client") -> MaterialPaths:
    ca = certs.new_ca(common_name="tenant-a", now=NOW, lifetime=DAY)
    if usage == "client":
        leaf = certs.new_client_cert(ca, common_name="node-1", now=NOW, lifetime=DAY)
    else:
        leaf = certs.new_server_cert(ca, common_name="server", now=NOW, lifetime=DAY)
    server_key = certs.new_tls_crypt_v2_server_key()
    tc = server_key if usage == "server" else certs.new_tls_crypt_v2_client_key(server_key, now=NOW)
    paths = MaterialPaths(
        ca=str(tmp_path / "ca.pem"), cert=str(tmp_path / "c.pem"), key=str(tmp_path / "c.key"),
        tls_crypt_v2=str(tmp_path / "tc.key"), usage=usage,  # type: ignore[arg-type]
    )  # fmt: skip
    Path(paths.ca).write_bytes(ca.cert_pem)
    Path(paths.cert).write_bytes(leaf.cert_pem)
    Path(paths.key).write_bytes(leaf.key_pem)
    Path(paths.tls_crypt_v2).write_bytes(tc)
    return paths


@pytest.mark.parametrize("usage", ["client", "server"])
def test_valid_material_passes(tmp_path: Path, usage: str) -> None:
    info = check_material(_material(tmp_path, usage=usage), now=NOW)
    assert info.common_name == ("node-1" if usage == "client" else "server")


def test_corrupt_certificate_names_the_file(tmp_path: Path) -> None:
    paths = _material(tmp_path)
    Path(paths.cert).write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(MaterialError, match=rf"^certificate {paths.cert}: "):
        check_material(paths, now=NOW)


def test_key_of_another_certificate_names_both_files(tmp_path: Path) -> None:
    paths = _material(tmp_path)
    Path(paths.key).write_bytes(certs.new_private_key())
    with pytest.raises(MaterialError) as info:
        check_material(paths, now=NOW)
    assert str(info.value).startswith(f"private key {paths.key} / certificate {paths.cert}: ")
    assert "does not match" in str(info.value)


def test_missing_file_expired_cert_and_wrong_tls_crypt_key(tmp_path: Path) -> None:
    paths = _material(tmp_path)
    with pytest.raises(MaterialError, match="expired"):
        check_material(paths, now=NOW + 2 * DAY)
    Path(paths.tls_crypt_v2).write_bytes(certs.new_tls_crypt_v2_server_key())
    with pytest.raises(MaterialError, match="install the client's tls-crypt-v2 key"):
        check_material(paths, now=NOW)
    os.unlink(paths.ca)
    with pytest.raises(MaterialError, match=rf"CA certificate {paths.ca} does not exist"):
        check_material(paths, now=NOW)


def test_server_certificate_refused_as_client(tmp_path: Path) -> None:
    server = _material(tmp_path, usage="server")
    paths = MaterialPaths(ca=server.ca, cert=server.cert, key=server.key,
                          tls_crypt_v2=server.tls_crypt_v2, usage="client")  # fmt: skip
    with pytest.raises(MaterialError, match="without extended key usage clientAuth"):
        check_material(paths, now=NOW)


def test_conditions_report_each_failing_reason() -> None:
    c = Conditions()
    c.declare("tunnel", "not yet")
    c.declare("probe", None)
    # Compared as tuples: a bare ``assert not c.ready`` would narrow the property for mypy
    # and make the check after ``c.ok`` look unreachable.
    assert (c.ready, c.failing()) == (False, {"tunnel": "not yet"})
    c.ok("tunnel")
    assert (c.ready, c.failing()) == (True, {})
    with pytest.raises(KeyError):
        c.set("typo", "x")


def test_file_watch_sees_rewrites_and_renames(tmp_path: Path) -> None:
    path = tmp_path / "f"
    watch = FileWatch([str(path)])
    assert watch.changed()  # first look
    assert not watch.changed()
    atomic_write(str(path), b"one")
    assert watch.changed()
    assert not watch.changed()
    atomic_write(str(path), b"two")  # same size, new inode
    assert watch.changed()


def _project(volume: Path, files: dict[str, bytes], version: int) -> None:
    """Write FILES as the kubelet's atomic writer does a projected volume: a new
    timestamped folder, `..data` swapped to it, each name a symlink through `..data`."""
    folder = volume / f"..v{version}"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
        if not (volume / name).is_symlink():
            (volume / name).symlink_to(Path("..data") / name)
    (volume / "..data_tmp").symlink_to(folder.name)
    os.replace(volume / "..data_tmp", volume / "..data")


def test_content_watch_ignores_a_projected_volume_rewritten_with_the_same_bytes(
    tmp_path: Path,
) -> None:
    """The kubelet rewrites a whole projected volume when one source changes (the
    ConfigMap): the Secret's files get new inodes with the same bytes. Only a real
    change of the watched files may count (else openvpn restarts, dropping clients)."""
    files = {"tls.crt": b"cert", "desired.json": b"{}"}
    _project(tmp_path, files, 1)
    cert = [str(tmp_path / "tls.crt")]
    by_stat, by_content = FileWatch(cert), ContentWatch(cert)
    assert by_stat.changed()
    assert by_content.changed()
    _project(tmp_path, {**files, "desired.json": b'{"clients": []}'}, 2)
    assert by_stat.changed()  # a new inode: what restarted openvpn before
    assert not by_content.changed()
    _project(tmp_path, {**files, "tls.crt": b"renewed"}, 3)
    assert by_content.changed()
    assert not by_content.changed()


def test_atomic_write_sets_mode_and_mtime(tmp_path: Path) -> None:
    path = tmp_path / "crl.pem"
    atomic_write(str(path), b"data", mode=0o640, mtime=1_000_000.0)
    st = path.stat()
    assert (st.st_mode & 0o777, st.st_mtime, path.read_bytes()) == (0o640, 1_000_000.0, b"data")
    assert [p.name for p in tmp_path.iterdir()] == ["crl.pem"]


def test_kv_quotes_what_needs_it() -> None:
    assert kv(event="x", n=3, text="two words", empty="", skip=None) == (
        'event=x n=3 text="two words" empty=""'
    )


async def test_a_dying_task_is_logged_and_escalates(caplog: pytest.LogCaptureFixture) -> None:
    events = EventLog(logger=logging.getLogger("test.roles"), role="node")
    stop = asyncio.Event()

    async def dies() -> None:
        raise RuntimeError("boom")

    async def forever() -> None:
        await asyncio.Event().wait()

    with caplog.at_level(logging.ERROR), pytest.raises(ExceptionGroup) as info:
        await run_group({"bad": dies, "good": forever}, stop=stop, events=events)
    assert info.group_contains(RuntimeError, match="boom")
    assert 'event=task_died role=node task=bad error="RuntimeError: boom"' in caplog.text


async def test_stop_ends_the_group_gracefully() -> None:
    events = EventLog(logger=logging.getLogger("test.roles"), role="node")
    stop = asyncio.Event()
    cancelled = []

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    asyncio.get_running_loop().call_later(0.05, stop.set)
    await run_group({"a": forever}, stop=stop, events=events)
    assert cancelled == [True]


def test_cli_refuses_a_bad_config_with_exit_2(tmp_path: Path) -> None:
    cfg = tmp_path / "node.json"
    cfg.write_text(json.dumps({"state_dir": "relative", "probe": {"target": "x"}}))
    proc = subprocess.run([sys.executable, "-m", "agent", "node", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert proc.returncode == 2
    assert f"{cfg}: " in proc.stderr
    assert "state_dir: 'relative' must be an absolute path" in proc.stderr
    assert "openvpn: is required" in proc.stderr
