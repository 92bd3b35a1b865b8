"""MRC writing: atomic (an interrupted write leaves neither a partial file nor a temporary), voxel size set,
nothing replaced without force."""

import mrcfile
import numpy as np
import pytest

from napari_semiamort.data.atomic import atomic_path
from napari_semiamort.data.mrc import Stack, read_map, write_mrc


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "map.mrc"
    write_mrc(path, np.ones((8, 8, 8), np.float32), 2.0)
    before = path.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"half a map")
            raise KeyboardInterrupt  # Ctrl-C in the middle of an export
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.mrc"]


def test_an_interrupted_first_write_leaves_no_file_under_the_final_name(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "new.mrc") as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_write_mrc_sets_voxel_size_zero_origin_float32_and_refuses_to_overwrite_without_force(tmp_path):
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(16, 16, 16))
    write_mrc(tmp_path / "m.mrc", vol, 3.25, force=False)
    with mrcfile.open(tmp_path / "m.mrc") as m:
        assert m.data.dtype == np.float32 and float(m.voxel_size.x) == pytest.approx(3.25)
        assert tuple(m.header.origin.tolist()) == (0.0, 0.0, 0.0) and int(m.header.ispg) == 1
    data, voxel = read_map(tmp_path / "m.mrc")
    np.testing.assert_allclose(data, vol.astype(np.float32))
    with pytest.raises(FileExistsError, match="m.mrc: exists; pass --force"):
        write_mrc(tmp_path / "m.mrc", vol, 3.25, force=False)


def test_a_stack_written_as_mrcs_reads_back_as_a_stack(tmp_path):
    write_mrc(tmp_path / "s.mrcs", np.zeros((5, 12, 12), np.float32), 1.5)
    s = Stack(tmp_path / "s.mrcs")
    assert len(s) == 5 and s.box == 12 and not s.truncated and s.header_pixel_size == pytest.approx(1.5)
