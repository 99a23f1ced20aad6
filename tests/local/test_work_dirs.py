"""Local mode's work directory after a SIGKILL, and how a child that died is reported.

A SIGKILL of ``lightmesh local`` left ``/tmp/lightmesh-local-XXXX`` behind for good. Each work
directory now records its owner (PID, start time, boot, PID namespace) and the next local mesh
removes the ones whose owner is gone — never one of a running process, one it cannot judge, one of
another user, or a symbolic link.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from lightmesh.local import harness
from lightmesh.local.harness import LocalMesh, LocalModeError, remove_stale_work_dirs

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def work_dir(base: Path, name: str, owner: dict | str | None) -> Path:
    path = base / f"lightmesh-local-{name}"
    (path / "logs").mkdir(parents=True)
    (path / "logs" / "proxy.log").write_text("a log\n")
    if owner is not None:
        (path / "owner.json").write_text(owner if isinstance(owner, str) else json.dumps(owner))
    return path


@pytest.fixture
def ended_process() -> dict:
    """The identity a process had, recorded while it ran; it has exited since."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        identity = harness._process_identity(child.pid)
    finally:
        child.kill()
        child.wait()
    assert identity is not None and identity["pid"] == child.pid
    return identity


def test_a_directory_whose_owner_is_gone_is_removed_the_others_kept(tmp_path, ended_process):
    me = harness._process_identity()
    gone = work_dir(tmp_path, "gone", ended_process)
    reused = work_dir(tmp_path, "reused", {**me, "start_time": me["start_time"] - 1})  # same PID, another process
    live = work_dir(tmp_path, "live", me)
    unknown = work_dir(tmp_path, "old-version", None)  # no record: cannot tell
    garbled = work_dir(tmp_path, "garbled", "{not json")
    other_boot = work_dir(tmp_path, "other-boot", {**ended_process, "boot_id": "another boot"})
    other_namespace = work_dir(tmp_path, "other-ns", {**ended_process, "pid_namespace": "pid:[1]"})
    unrelated = tmp_path / "lightmesh-other"
    unrelated.mkdir()
    (tmp_path / "lightmesh-local-file").write_text("a file, not a directory")

    assert sorted(remove_stale_work_dirs(tmp_path)) == sorted([gone, reused])
    assert not gone.exists() and not reused.exists()
    for kept in (live, unknown, garbled, other_boot, other_namespace, unrelated, tmp_path / "lightmesh-local-file"):
        assert kept.exists(), kept


def test_a_link_is_not_followed(tmp_path, ended_process):
    target = work_dir(tmp_path / "elsewhere", "target", ended_process)
    (tmp_path / "lightmesh-local-link").symlink_to(target)
    assert remove_stale_work_dirs(tmp_path) == []
    assert (target / "logs" / "proxy.log").is_file()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory to another user")
def test_another_users_directory_is_kept(tmp_path, ended_process):
    theirs = work_dir(tmp_path, "theirs", ended_process)
    os.chown(theirs, 65534, 65534)
    assert remove_stale_work_dirs(tmp_path) == []
    assert theirs.exists()


def test_a_new_local_mesh_records_itself_and_clears_what_a_killed_one_left(tmp_path, monkeypatch, ended_process):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    left = work_dir(tmp_path, "killed", ended_process)
    mesh = LocalMesh(tmp_path / "manifests")
    assert not left.exists()
    assert mesh.work_dir.parent == tmp_path and mesh.work_dir.name.startswith("lightmesh-local-")
    assert json.loads((mesh.work_dir / "owner.json").read_text()) == harness._process_identity()
    assert remove_stale_work_dirs(tmp_path) == []  # its owner (this process) runs
    given = LocalMesh(tmp_path / "manifests", work_dir=tmp_path / "given")  # a work_dir given: left alone
    assert not (given.work_dir / "owner.json").exists() and mesh.work_dir.exists()
    # a killed run's directory given as work_dir (to look at it): its record goes, so no sweep takes it
    reused = work_dir(tmp_path, "killed-again", ended_process)
    LocalMesh(tmp_path / "manifests", work_dir=reused)
    assert not (reused / "owner.json").exists()
    LocalMesh(tmp_path / "manifests")
    assert reused.exists()


def test_nothing_is_judged_through_another_pid_namespaces_proc(tmp_path, monkeypatch, ended_process):
    # In a sandbox that kept the host's /proc, our PID numbers another process there (or none): a
    # running owner was taken for gone and its directory removed.
    gone = work_dir(tmp_path, "gone", ended_process)
    real_readlink = os.readlink
    monkeypatch.setattr(os, "readlink", lambda p, *a, **k: "1" if str(p) == "/proc/self" else real_readlink(p, *a, **k))
    assert harness._process_identity() is None
    assert remove_stale_work_dirs(tmp_path) == [] and gone.exists()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    mesh = LocalMesh(tmp_path / "manifests")
    assert gone.exists() and not (mesh.work_dir / "owner.json").exists()  # no record it could be judged by


@pytest.mark.parametrize("code, says", [
    ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "the controller was killed by signal SIGKILL: "),
    ("import sys; sys.exit(3)", "the controller exited with code 3: "),
])
def test_a_child_killed_by_a_signal_is_reported_by_the_signals_name(tmp_path, code, says):
    mesh = LocalMesh(tmp_path, work_dir=tmp_path / "work")
    mesh.log_dir.mkdir(parents=True)
    (mesh.log_dir / "controller.log").write_text("2024-01-01 00:00:00 INFO lightmesh.controller: serving\n")
    mesh.controller = subprocess.Popen([sys.executable, "-c", code])
    mesh.controller.wait()
    with pytest.raises(LocalModeError) as failure:
        mesh.check_alive()
    assert str(failure.value) == says + "2024-01-01 00:00:00 INFO lightmesh.controller: serving"


def test_an_unknown_signal_number_is_still_said():
    assert harness._how_it_ended(-signal.SIGTERM) == "was killed by signal SIGTERM"
    assert harness._how_it_ended(-200) == "was killed by signal 200"
