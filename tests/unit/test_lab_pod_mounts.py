from __future__ import annotations

from pathlib import Path

import pytest

from vpnctl.lab.pod_mounts import ensure_mount_points, host_path, pod_argv


def test_pod_argv_binds_then_execs_the_agent_in_a_private_mount_namespace() -> None:
    argv = pod_argv({"/etc/vpnctl": Path("/tmp/a b/etc")}, ["python", "-m", "agent", "node"])
    assert argv[:6] == ["unshare", "--mount", "--propagation", "private", "--", "sh"]
    script = argv[7]
    assert script == "set -e; mount --bind '/tmp/a b/etc' /etc/vpnctl; exec \"$@\""
    assert argv[8:] == ["sh", "python", "-m", "agent", "node"]


def test_pod_argv_refuses_relative_paths() -> None:
    with pytest.raises(ValueError, match="absolute"):
        pod_argv({"etc/vpnctl": Path("/tmp/x")}, ["true"])


def test_host_path_maps_a_pod_path_through_its_mount() -> None:
    binds = {"/etc/vpnctl": Path("/srv/etc"), "/run/vpnctl": Path("/srv/run")}
    assert host_path(binds, "/etc/vpnctl/pki/tls.key") == Path("/srv/etc/pki/tls.key")
    assert host_path(binds, "/run/vpnctl") == Path("/srv/run")
    with pytest.raises(ValueError, match="none of the mounts"):
        host_path(binds, "/etc/vpnctl-apiserver/x")


def test_mount_points_are_made_when_missing_and_left_alone_otherwise(tmp_path: Path) -> None:
    source_dir, source_file = tmp_path / "d", tmp_path / "hosts"
    source_dir.mkdir()
    source_file.write_text("x")
    existing = tmp_path / "existing"
    existing.write_text("keep")
    ensure_mount_points({str(tmp_path / "p" / "dir"): source_dir,
                         str(tmp_path / "p" / "file"): source_file,
                         str(existing): source_file})  # fmt: skip
    assert (tmp_path / "p" / "dir").is_dir()
    assert (tmp_path / "p" / "file").is_file()
    assert existing.read_text() == "keep"
