"""Atomic writes: flushed to the disk before the rename, the folder after; the umask read, not changed."""

import os
import stat

from napari_semiamort.data import atomic
from napari_semiamort.data.atomic import atomic_path


def test_a_write_is_flushed_then_renamed_then_its_folder_flushed(tmp_path, monkeypatch):
    flushed, real = [], os.fsync

    def fsync(fd):
        flushed.append(os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else fd)
        return real(fd)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    with atomic_path(tmp_path / "map.mrc") as tmp:
        tmp.write_bytes(b"map")
    assert (tmp_path / "map.mrc").read_bytes() == b"map" and list(tmp_path.iterdir()) == [tmp_path / "map.mrc"]
    if os.path.exists("/proc/self/fd"):
        assert len(flushed) == 2 and flushed[0].endswith(".tmp") and flushed[1] == str(tmp_path)


def test_the_umask_is_read_without_being_changed(tmp_path, monkeypatch):
    before = os.umask(0o027)
    try:
        calls = []
        monkeypatch.setattr(atomic.os, "umask", lambda m: calls.append(m) or 0o027)
        assert atomic._umask() == 0o027 and (calls == [] or not os.path.exists("/proc/self/status"))
        monkeypatch.undo()
        with atomic_path(tmp_path / "poses.star") as tmp:
            tmp.write_text("data_\n")
        assert stat.S_IMODE((tmp_path / "poses.star").stat().st_mode) == 0o640
    finally:
        os.umask(before)
